//! `/api/v1/runs`: start, list, show, abort, confirm and export runs, and follow a run's events
//! as Server-Sent Events.
//!
//! The event stream reads the run's event log in the store (the engine appends every event with
//! a per-run sequence as it happens) and waits on the store's commit notices for more, so the
//! replay after `Last-Event-ID` and the live tail are one sequence: a reconnecting client misses
//! nothing and sees nothing twice. The SSE `id` is the sequence; the stream ends after the
//! `verdict` event.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, Problem};
use crate::runs::{ControlError, RunManager, StartError, StartRequest, Started};
use crate::store::{Event, RunDetail, RunFilter, RunId, RunState, RunVerdict, Store, event_kind};

/// Keep-alive comment interval on event streams (below common proxy idle timeouts).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How often a stream that saw no notice looks at the store anyway (a run filed by another
/// process sharing the store sends no notices to this one).
const RECHECK: Duration = Duration::from_secs(2);

fn store(state: &AppState) -> Result<&Store, Problem> {
    state.store().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-store",
            "no results store is open",
        )
    })
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The run, or a 404 naming it.
async fn existing(state: &AppState, id: i64) -> Result<RunDetail, Problem> {
    store(state)?
        .get_run(RunId(id))
        .await
        .map_err(internal)?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Recipe name (file stem in the recipes directory, see `GET /recipes`).
    pub recipe: String,
    pub station: String,
    /// Serial number of the device under test.
    pub dut: String,
    #[serde(default)]
    pub operator: String,
    /// Parameter overrides in the parameter's unit: numbers (or numeric strings).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// When an instrument is held by another run: wait in line (202) instead of 409.
    #[serde(default)]
    pub queue: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartedOut {
    pub id: i64,
    pub recipe: String,
    pub station: String,
    pub dut: String,
    pub state: &'static str,
    /// Where to follow the run live.
    pub events: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedOut {
    pub queued: bool,
    pub ticket: u64,
    pub waiting_for: String,
    pub holder: String,
}

fn start_problem(e: StartError) -> Problem {
    match &e {
        StartError::ShuttingDown => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            e.to_string(),
        ),
        StartError::NoStore => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "no-store", e.to_string())
        }
        StartError::BadName(_) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-name", e.to_string())
        }
        StartError::UnknownRecipe { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-recipe",
            e.to_string(),
        ),
        StartError::Station(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-station",
            e.to_string(),
        ),
        StartError::BadRequest(_) => Problem::unprocessable(e.to_string()),
        StartError::Invalid { diags, .. } => {
            Problem::with_diagnostics("invalid-recipe", e.to_string(), diags)
        }
        StartError::Busy(_) => Problem::new(StatusCode::CONFLICT, "instrument-busy", e.to_string()),
        StartError::Store(_) | StartError::Lost => internal(&e),
    }
}

fn param_value(name: &str, v: &serde_json::Value) -> Result<f64, Problem> {
    let x = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    x.filter(|x| x.is_finite()).ok_or_else(|| {
        Problem::unprocessable(format!(
            "parameter `{name}`: {v} is not a number (give it in the parameter's unit)"
        ))
    })
}

/// Start a run: validated whole first (recipe, station, parameters); 201 once it is filed.
#[utoipa::path(post, path = "/api/v1/runs",
    request_body = StartBody,
    security((), ("bearer" = [])),
    responses(
        (status = 201, body = StartedOut, description = "filed and running; Location names it"),
        (status = 202, body = QueuedOut, description = "queued behind the run holding an instrument"),
        (status = 400, body = Problem, description = "malformed JSON"),
        (status = 409, body = Problem, description = "an instrument is held by another run (named)"),
        (status = 413, body = Problem),
        (status = 422, body = Problem, description = "unknown recipe or station, bad parameters, recipe problems (listed)"),
        (status = 503, body = Problem, description = "shutting down")))]
pub async fn start_run(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let b: StartBody = Problem::parse_json(&body?)?;
    let mut params = BTreeMap::new();
    for (k, v) in &b.params {
        params.insert(k.clone(), param_value(k, v)?);
    }
    let req = StartRequest {
        recipe: b.recipe.clone(),
        station: b.station.clone(),
        dut: b.dut.clone(),
        operator: b.operator.clone(),
        params,
        queue: b.queue,
    };
    match state
        .runs()
        .start(state.live(), req)
        .await
        .map_err(start_problem)?
    {
        Started::Running { run } => {
            let location = format!("/api/v1/runs/{run}");
            let out = StartedOut {
                id: run.0,
                recipe: b.recipe,
                station: b.station,
                dut: b.dut,
                state: "running",
                events: format!("{location}/events"),
            };
            let mut resp = (StatusCode::CREATED, Json(out)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Started::Queued {
            ticket,
            instrument,
            holder,
        } => Ok((
            StatusCode::ACCEPTED,
            Json(QueuedOut {
                queued: true,
                ticket,
                waiting_for: instrument,
                holder,
            }),
        )
            .into_response()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub dut: Option<String>,
    /// `[recipe] name` as filed.
    pub recipe: Option<String>,
    pub station: Option<String>,
    /// pass, fail, error, aborted or interrupted.
    pub verdict: Option<String>,
    /// Runs started at or after this RFC 3339 time.
    pub from: Option<String>,
    /// Runs started before this RFC 3339 time.
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunsPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<crate::store::RunSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn time_param(what: &str, v: &Option<String>) -> Result<Option<std::time::SystemTime>, Problem> {
    v.as_deref()
        .map(|s| {
            humantime::parse_rfc3339_weak(s).map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-query",
                    format!("`{what}`: `{s}` is not an RFC 3339 time ({e})"),
                )
            })
        })
        .transpose()
}

/// Runs, newest first, filtered, one page at a time.
#[utoipa::path(get, path = "/api/v1/runs", params(ListQuery),
    responses((status = 200, body = RunsPage), (status = 400, body = Problem, description = "bad filter or cursor")))]
pub async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<RunsPage>, Problem> {
    let verdict = q
        .verdict
        .as_deref()
        .map(|v| {
            v.parse::<RunVerdict>().map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-query",
                    format!("`verdict`: {e}"),
                )
            })
        })
        .transpose()?;
    let filter = RunFilter {
        dut: q.dut,
        recipe: q.recipe,
        station: q.station,
        verdict,
        from: time_param("from", &q.from)?,
        to: time_param("to", &q.to)?,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(0),
    };
    let page = store(&state)?
        .list_runs(&filter)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::BadCursor { .. } => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-cursor", e.to_string())
            }
            e => internal(e),
        })?;
    Ok(Json(RunsPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetailOut {
    /// The run: recipe, DUT, station, operator, state, verdict, times.
    #[schema(value_type = Object)]
    pub run: crate::store::RunSummary,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    /// By index.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<crate::store::Step>,
    /// In the order taken.
    #[schema(value_type = Vec<Object>)]
    pub measurements: Vec<crate::store::Measurement>,
    /// Running in this daemon now (abort and confirm reach it).
    pub active: bool,
}

/// One run with all its steps and measurements.
#[utoipa::path(get, path = "/api/v1/runs/{id}",
    params(("id" = i64, Path, description = "run id")),
    responses((status = 200, body = RunDetailOut), (status = 404, body = Problem)))]
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<RunDetailOut>, Problem> {
    let d = existing(&state, id).await?;
    Ok(Json(RunDetailOut {
        active: state.runs().is_running(RunId(id)),
        run: d.run,
        parameters: d.parameters,
        steps: d.steps,
        measurements: d.measurements,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AbortOut {
    pub id: i64,
    /// `aborting`: the run stops at the next request boundary, then runs its cleanup.
    pub state: &'static str,
}

/// Why a run cannot be controlled: 404 if unknown, 409 if it is not running here.
async fn not_running(state: &AppState, id: i64, e: ControlError) -> Problem {
    match existing(state, id).await {
        Err(p) => p,
        Ok(d) => {
            let how = match (d.run.state, d.run.verdict) {
                (_, Some(v)) => format!("finished ({v})"),
                (RunState::Running, None) => "running in another process".to_string(),
                _ => "not running".to_string(),
            };
            let detail = match e {
                ControlError::NoPrompt(_) => e.to_string(),
                ControlError::NotRunning(_) => format!("run {id} is {how}"),
            };
            Problem::new(StatusCode::CONFLICT, "not-running", detail)
        }
    }
}

/// Abort a run; 202 at once, the verdict `aborted` follows after its cleanup.
#[utoipa::path(post, path = "/api/v1/runs/{id}/abort",
    params(("id" = i64, Path, description = "run id")),
    security((), ("bearer" = [])),
    responses((status = 202, body = AbortOut), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the run is not running")))]
pub async fn abort_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, Problem> {
    match state.runs().abort(RunId(id)) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(AbortOut {
                id,
                state: "aborting",
            }),
        )
            .into_response()),
        Err(e) => Err(not_running(&state, id, e).await),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptOut {
    pub id: i64,
    /// The run waits for the operator.
    pub pending: bool,
    pub step: Option<String>,
    pub prompt: Option<String>,
    /// RFC 3339 time the prompt was raised.
    pub since: Option<String>,
}

/// The operator prompt a run waits on, if any.
#[utoipa::path(get, path = "/api/v1/runs/{id}/prompt",
    params(("id" = i64, Path, description = "run id")),
    responses((status = 200, body = PromptOut), (status = 404, body = Problem)))]
pub async fn get_prompt(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<PromptOut>, Problem> {
    let p = match state.runs().prompt(RunId(id)) {
        Ok(p) => p,
        Err(_) => {
            existing(&state, id).await?;
            None
        }
    };
    Ok(Json(PromptOut {
        id,
        pending: p.is_some(),
        step: p.as_ref().map(|p| p.step.clone()),
        prompt: p.as_ref().map(|p| p.prompt.clone()),
        since: p.as_ref().map(|p| rfc3339(p.since)),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// true: go on; false: the confirm step fails.
    pub ok: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmOut {
    pub id: i64,
    pub step: String,
    pub prompt: String,
    pub ok: bool,
}

/// Answer the run's pending operator prompt.
#[utoipa::path(post, path = "/api/v1/runs/{id}/confirm",
    params(("id" = i64, Path, description = "run id")),
    request_body = ConfirmBody,
    security((), ("bearer" = [])),
    responses((status = 200, body = ConfirmOut), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "no prompt pending, or the run is not running"),
        (status = 422, body = Problem)))]
pub async fn confirm(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConfirmOut>, Problem> {
    let b: ConfirmBody = Problem::parse_json(&body?)?;
    match state.runs().confirm(RunId(id), b.ok) {
        Ok(p) => Ok(Json(ConfirmOut {
            id,
            step: p.step,
            prompt: p.prompt,
            ok: b.ok,
        })),
        Err(e) => Err(not_running(&state, id, e).await),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// A run as a JSON document or as CSV (one row per measurement, run columns repeated).
#[utoipa::path(get, path = "/api/v1/runs/{id}/export",
    params(("id" = i64, Path, description = "run id"), ExportQuery),
    responses((status = 200, description = "application/json or text/csv"),
        (status = 404, body = Problem), (status = 422, body = Problem, description = "unknown format")))]
pub async fn export_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Problem> {
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(Problem::unprocessable(format!(
            "format `{format}`: use json or csv"
        )));
    }
    let d = existing(&state, id).await?;
    let (ctype, body) = if format == "csv" {
        (
            "text/csv; charset=utf-8",
            crate::store::export_csv(std::slice::from_ref(&d)).map_err(internal)?,
        )
    } else {
        (
            "application/json",
            crate::store::export_json(&d).map_err(internal)?,
        )
    };
    let disposition = format!("attachment; filename=\"run-{id}.{format}\"");
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// The SSE event name of a stored event kind; see docs/api.md for the list.
pub fn sse_name(kind: &str) -> &str {
    match kind {
        "stabilize" => "stabilizing",
        "wait_until" => "waiting",
        "confirm" => "prompt",
        event_kind::RUN_FINISHED | event_kind::RUN_INTERRUPTED => "verdict",
        k => k,
    }
}

fn terminal(kind: &str) -> bool {
    kind == event_kind::RUN_FINISHED || kind == event_kind::RUN_INTERRUPTED
}

#[derive(Debug, Serialize)]
struct EventData<'a> {
    run: i64,
    seq: i64,
    at: String,
    /// The kind as stored (the SSE event name may be friendlier).
    kind: &'a str,
    payload: &'a serde_json::Value,
}

fn to_sse(e: &Event) -> SseEvent {
    let data = EventData {
        run: e.run_id.0,
        seq: e.seq,
        at: rfc3339(e.at),
        kind: &e.kind,
        payload: &e.payload,
    };
    SseEvent::default()
        .id(e.seq.to_string())
        .event(sse_name(&e.kind))
        .data(serde_json::to_string(&data).unwrap_or_default())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay events after this sequence (like the Last-Event-ID header, which wins).
    pub after: Option<i64>,
}

struct Follow {
    store: Store,
    runs: RunManager,
    run: RunId,
    last: i64,
    buf: VecDeque<Event>,
    notices: tokio::sync::broadcast::Receiver<RunId>,
    done: bool,
}

impl Follow {
    /// The next event, waiting for it if need be; `None` after the verdict.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.done {
                return None;
            }
            if let Some(e) = self.buf.pop_front() {
                self.last = e.seq;
                self.done = terminal(&e.kind);
                return Some(to_sse(&e));
            }
            // Whether it runs here is read before the log: a run that ends in between has its
            // verdict in the log by then.
            let here = self.runs.is_running(self.run);
            match self.store.events_since(self.run, self.last).await {
                Ok(v) if !v.is_empty() => {
                    self.buf.extend(v);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(message = "event stream ends on a store error", run = %self.run, error = %e);
                    return None;
                }
            }
            if !here {
                // Not ours: finished without a verdict event (cannot happen short of a damaged
                // store) ends the stream; a run of another process is polled.
                match self.store.get_run(self.run).await {
                    Ok(Some(d)) if d.run.state == RunState::Running => {}
                    _ => return None,
                }
            }
            let deadline = tokio::time::Instant::now() + RECHECK;
            loop {
                match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                    Ok(Ok(r)) if r != self.run => continue,
                    // Ours, lagged (re-read covers it), or the recheck is due.
                    Ok(Ok(_))
                    | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_)))
                    | Err(_) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                }
            }
        }
    }
}

/// The run's events as Server-Sent Events: stored ones after `Last-Event-ID` (or `?after=`),
/// then live ones; `id` is the event's sequence, the stream ends after `verdict`.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events",
    params(("id" = i64, Path, description = "run id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this sequence")),
    responses((status = 200, description = "text/event-stream: run_started, step_started, step_finished, measurement, stabilizing, waiting, prompt, retry, cleanup_started, verdict"),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-last-event-id",
                    "Last-Event-ID must be an event sequence number",
                )
            })?,
        None => q.after.unwrap_or(0),
    };
    let store = store(&state)?.clone();
    // Subscribed before the first read, so nothing committed after that read is missed.
    let notices = store.subscribe();
    existing(&state, id).await?;
    let follow = Follow {
        store,
        runs: state.runs().clone(),
        run: RunId(id),
        last: after.max(0),
        buf: VecDeque::new(),
        notices,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok::<_, Infallible>(e), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedRun {
    pub ticket: u64,
    pub recipe: String,
    pub station: String,
    pub waiting_for: Option<String>,
    pub holder: Option<String>,
}

/// Start requests waiting in line for an instrument.
#[utoipa::path(get, path = "/api/v1/queue", responses((status = 200, body = Vec<QueuedRun>)))]
pub async fn list_queue(State(state): State<AppState>) -> Json<Vec<QueuedRun>> {
    Json(
        state
            .runs()
            .list_active()
            .into_iter()
            .filter(|a| a.run.is_none())
            .map(|a| QueuedRun {
                ticket: a.ticket,
                recipe: a.recipe,
                station: a.station,
                waiting_for: a.waiting_for.as_ref().map(|w| w.0.clone()),
                holder: a.waiting_for.map(|w| w.1),
            })
            .collect(),
    )
}

/// Withdraw a queued start request.
#[utoipa::path(post, path = "/api/v1/queue/{ticket}/cancel",
    params(("ticket" = u64, Path, description = "ticket from a 202 of POST /runs")),
    security((), ("bearer" = [])),
    responses((status = 202, description = "withdrawn"), (status = 404, body = Problem)))]
pub async fn cancel_queued(
    State(state): State<AppState>,
    Path(ticket): Path<u64>,
) -> Result<StatusCode, Problem> {
    let queued = state
        .runs()
        .list_active()
        .iter()
        .any(|a| a.ticket == ticket && a.run.is_none());
    if queued && state.runs().cancel_ticket(ticket) {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(Problem::not_found(format!("no queued request {ticket}")))
    }
}
