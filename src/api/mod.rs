//! The HTTP API of `labgate serve` (axum), versioned under `/api/v1`, plus `/metrics`.
//!
//! Only this module knows axum and JSON: handlers convert domain types to the DTOs of
//! [`handlers`] at the edge. The router is built from an [`AppState`] and binds nothing, so tests
//! serve it on an ephemeral port. The OpenAPI document is generated from the handlers'
//! annotations ([`ApiDoc`]) so it cannot drift from the routes.
//!
//! Raw SCPI/Modbus passthrough answers 403 unless the config sets `api.allow_raw = true`.
//!
//! Auth: read-only endpoints are open. Mutating endpoints (POST) need `Authorization: Bearer
//! <api.token>` whenever a token is configured, and always when the daemon listens on a
//! non-loopback address (it refuses to start there without a token).

pub mod handlers;
pub mod problem;
pub mod recipes;
pub mod runs;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;

use crate::daemon::Live;
use crate::runs::RunManager;
use crate::store::Store;
pub use problem::Problem;

/// Largest request body accepted; the API's bodies are small JSON objects.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the handlers share. A reload swaps the [`Live`] whole; requests already running keep
/// the one they started with.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    live: RwLock<Arc<Live>>,
    store: Option<Store>,
    runs: RunManager,
    metrics: Option<PrometheusHandle>,
    /// The API listens on a loopback address only.
    loopback: bool,
}

impl AppState {
    pub fn new(
        live: Live,
        store: Option<Store>,
        metrics: Option<PrometheusHandle>,
        loopback: bool,
    ) -> AppState {
        AppState {
            shared: Arc::new(Shared {
                live: RwLock::new(Arc::new(live)),
                runs: RunManager::new(store.clone()),
                store,
                metrics,
                loopback,
            }),
        }
    }

    /// The running config version.
    pub fn live(&self) -> Arc<Live> {
        self.shared
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in a new config version; the old one stops when its last request finishes.
    pub fn replace(&self, live: Live) {
        let old = {
            let mut g = self.shared.live.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *g, Arc::new(live))
        };
        drop(old);
    }

    pub fn store(&self) -> Option<&Store> {
        self.shared.store.as_ref()
    }

    /// The runs of this daemon (started over the API).
    pub fn runs(&self) -> &RunManager {
        &self.shared.runs
    }

    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.shared.metrics.as_ref()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "labgate",
        description = "Instrument gateway for product-quality test benches"
    ),
    paths(
        handlers::health,
        handlers::ready,
        handlers::list_instruments,
        handlers::get_instrument,
        handlers::read,
        handlers::act,
        handlers::measure,
        handlers::scpi_raw,
        handlers::modbus_raw,
        handlers::list_stations,
        recipes::list_recipes,
        recipes::get_recipe,
        recipes::validate_recipe,
        runs::start_run,
        runs::list_runs,
        runs::get_run,
        runs::abort_run,
        runs::get_prompt,
        runs::confirm,
        runs::export_run,
        runs::run_events,
        runs::list_queue,
        runs::cancel_queued,
    ),
    components(schemas(Problem, problem::ProblemItem)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole application: `/api/v1/...` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let mutating = Router::new()
        .route("/instruments/{id}/read", post(handlers::read))
        .route("/instruments/{id}/actions/{action}", post(handlers::act))
        .route(
            "/instruments/{id}/measurements/{name}",
            post(handlers::measure),
        )
        .route("/instruments/{id}/scpi", post(handlers::scpi_raw))
        .route("/instruments/{id}/modbus", post(handlers::modbus_raw))
        .route("/recipes/validate", post(recipes::validate_recipe))
        .route("/runs", post(runs::start_run))
        .route("/runs/{id}/abort", post(runs::abort_run))
        .route("/runs/{id}/confirm", post(runs::confirm))
        .route("/queue/{ticket}/cancel", post(runs::cancel_queued))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let v1 = Router::new()
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/instruments", get(handlers::list_instruments))
        .route("/instruments/{id}", get(handlers::get_instrument))
        .route("/stations", get(handlers::list_stations))
        .route("/recipes", get(recipes::list_recipes))
        .route("/recipes/{name}", get(recipes::get_recipe))
        .route("/runs", get(runs::list_runs))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/prompt", get(runs::get_prompt))
        .route("/runs/{id}/export", get(runs::export_run))
        .route("/runs/{id}/events", get(runs::run_events))
        .route("/queue", get(runs::list_queue))
        .route("/openapi.json", get(openapi_json))
        .merge(mutating);
    Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(problem_everywhere))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// axum's own rejections (a path segment that is not valid UTF-8, ...) answer in plain text;
/// turn every error response that is not a problem yet into one, so clients parse one shape.
async fn problem_everywhere(resp: Response) -> Response {
    let status = resp.status();
    // Only plain-text or empty bodies: a JSON error body (a problem, /ready's 503) is ours.
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_string();
    let detail = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        detail
    };
    Problem::new(status, "bad-request", detail).into_response()
}

async fn not_found(req: Request) -> Problem {
    Problem::not_found(format!("no such endpoint: {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot render the openapi document: {e}"),
        )
        .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let live = state.live();
    let mut body = crate::metrics::render(state.metrics(), &live.gateway, &live.latest);
    let running = state.runs().running_count();
    let queued = state.runs().active_count().saturating_sub(running);
    crate::metrics::render_runs_active(&mut body, running, queued);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Compare without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let token = state.live().bench.api.token.clone();
    match token {
        None if state.shared.loopback => next.run(req).await,
        None => Problem::new(
            StatusCode::FORBIDDEN,
            "no-token-configured",
            "mutating requests are disabled: the api listens beyond loopback and no api.token is set",
        )
        .into_response(),
        Some(expected) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => {
                    next.run(req).await
                }
                Some(_) => Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "bad-token",
                    "the bearer token does not match api.token",
                )
                .into_response(),
                None => Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "token-required",
                    "this request needs `Authorization: Bearer <api.token>`",
                )
                .into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
    }
}
