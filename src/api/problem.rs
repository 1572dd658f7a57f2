//! Errors as RFC 9457 `application/problem+json`.
//!
//! Every error the API returns goes through [`Problem`], so a client parses one shape. Bad input
//! is always a 4xx with a message naming what was wrong; a 5xx means an instrument or the
//! daemon failed, never the request.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::instrument::InstrumentError;
use crate::link::LinkError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:labgate:problem:<kind>`; the kind is a stable machine-readable name.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every problem of an uploaded or referenced file, with line:col (422 of recipe checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<ProblemItem>>,
}

/// One problem in a file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemItem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted key path; empty for the file as a whole.
    pub key: String,
    pub message: String,
    /// `error` or `warning`.
    pub severity: &'static str,
}

impl ProblemItem {
    pub fn from_diag(d: &crate::diag::Diagnostic) -> ProblemItem {
        ProblemItem {
            file: d.file.display().to_string(),
            line: d.line,
            col: d.col,
            key: d.key.clone(),
            message: d.message.clone(),
            severity: if d.is_error() { "error" } else { "warning" },
        }
    }
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:labgate:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            problems: None,
        }
    }

    /// A 422 listing every problem of a file.
    pub fn with_diagnostics(
        kind: &str,
        detail: impl Into<String>,
        d: &crate::diag::Diagnostics,
    ) -> Problem {
        let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail);
        p.problems = Some(d.sorted().into_iter().map(ProblemItem::from_diag).collect());
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", detail)
    }

    /// Parse a JSON request body: bad syntax is 400, a well-formed body of the wrong shape 422.
    pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
        serde_json::from_slice(body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => Problem::unprocessable(format!("request body: {e}")),
                _ => Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-json",
                    format!("request body is not valid JSON: {e}"),
                ),
            }
        })
    }

    /// What an instrument failure means to an HTTP client.
    pub fn from_instrument(e: &InstrumentError) -> Problem {
        let (status, kind) = match e {
            InstrumentError::Unknown { what, .. } if *what == "action" => {
                (StatusCode::NOT_FOUND, "unknown-action")
            }
            InstrumentError::Unknown { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown-name"),
            InstrumentError::Args { .. } | InstrumentError::Invalid { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request")
            }
            InstrumentError::Refused { .. } => (StatusCode::CONFLICT, "instrument-refused"),
            InstrumentError::Parse { .. } => (StatusCode::BAD_GATEWAY, "instrument-bad-reply"),
            InstrumentError::MeasurementTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "instrument-timeout")
            }
            InstrumentError::Link { source, .. } => match source.as_ref() {
                LinkError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "instrument-timeout"),
                LinkError::Exception { .. } => (StatusCode::CONFLICT, "instrument-refused"),
                LinkError::WrongProtocol { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "wrong-protocol")
                }
                LinkError::Down { .. } | LinkError::Busy { .. } | LinkError::Closed { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "link-down")
                }
                _ => (StatusCode::BAD_GATEWAY, "link-error"),
            },
        };
        Problem::new(status, kind, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<axum::extract::rejection::BytesRejection> for Problem {
    fn from(r: axum::extract::rejection::BytesRejection) -> Problem {
        let status = r.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body-too-large"
        } else {
            "bad-body"
        };
        Problem::new(status, kind, r.body_text())
    }
}
