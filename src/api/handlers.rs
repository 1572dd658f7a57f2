//! The `/api/v1` handlers and the JSON shapes they speak.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, Problem};
use crate::config::InstrumentDef;
use crate::instrument::{Instrument, InstrumentError};
use crate::link::{LinkState, LinkStatus};
use crate::modbus::ops::{ModbusOp, ModbusReply};
use crate::modbus::value::Table;
use crate::reading::{Reading, Value};

/// Most quantities one read request may name (a read is one link transaction per block).
pub const MAX_READ_QUANTITIES: usize = 64;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// Liveness: the process runs and answers.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub config: String,
    pub store: bool,
    /// Link name -> state (`connected`, `reconnecting`, ...).
    pub links: BTreeMap<String, String>,
}

/// Readiness: config loaded, store open, every link connected.
#[utoipa::path(get, path = "/api/v1/ready", responses(
    (status = 200, body = Readiness, description = "ready"),
    (status = 503, body = Readiness, description = "not ready: a link is down or the store is closed")
))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let live = state.live();
    let links: BTreeMap<String, String> = live
        .gateway
        .links
        .iter()
        .map(|(n, l)| (n.clone(), l.status().state.to_string()))
        .collect();
    let store = state.store().is_some();
    let all_up = live
        .gateway
        .links
        .values()
        .all(|l| l.status().state == LinkState::Connected);
    let body = Readiness {
        ready: store && all_up,
        config: live.bench.source.display().to_string(),
        store,
        links,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstrumentSummary {
    pub id: String,
    pub driver: String,
    pub description: String,
    pub link: String,
    pub state: String,
}

/// All instruments of the bench.
#[utoipa::path(get, path = "/api/v1/instruments", responses((status = 200, body = Vec<InstrumentSummary>)))]
pub async fn list_instruments(State(state): State<AppState>) -> Json<Vec<InstrumentSummary>> {
    let live = state.live();
    let list = live
        .bench
        .instruments
        .values()
        .map(|d| InstrumentSummary {
            id: d.id.clone(),
            driver: d.driver.name().to_string(),
            description: d.config.description.clone(),
            link: d.config.link.clone(),
            state: link_state(&live.gateway, d),
        })
        .collect();
    Json(list)
}

fn link_state(gw: &crate::gateway::Gateway, d: &InstrumentDef) -> String {
    gw.links
        .get(&d.config.link)
        .map(|l| l.status().state.to_string())
        .unwrap_or_else(|| "closed".into())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkOut {
    pub name: String,
    pub state: String,
    pub endpoint: String,
    pub last_error: Option<String>,
    pub identity: Option<String>,
    pub connected_since: Option<String>,
    pub reconnects: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
}

impl LinkOut {
    fn new(name: &str, s: LinkStatus) -> LinkOut {
        LinkOut {
            name: name.to_string(),
            state: s.state.to_string(),
            endpoint: s.endpoint,
            last_error: s.last_error,
            identity: s.identity,
            connected_since: s.connected_since.map(rfc3339),
            reconnects: s.reconnects,
            requests_ok: s.requests_ok,
            requests_failed: s.requests_failed,
        }
    }
}

/// One reading. `value` is a number, boolean, string or list of numbers (null elements where
/// the instrument marked them invalid); it is null when the instrument sent its "no valid
/// reading" marker, and `invalid` then says which.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadingOut {
    pub quantity: String,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub unit: String,
    /// `no_data`, `overrange`, `range_changed`, `open_sensor` or `invalid`.
    pub invalid: Option<String>,
    /// RFC 3339 time of the reading.
    pub at: String,
}

impl From<&Reading> for ReadingOut {
    fn from(r: &Reading) -> ReadingOut {
        use serde_json::Value as J;
        let num = |v: f64| serde_json::Number::from_f64(v).map_or(J::Null, J::Number);
        let (value, invalid) = match &r.value {
            Value::Number(v) => (num(*v), None),
            Value::Invalid { kind, .. } => (
                J::Null,
                serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string)),
            ),
            Value::Bool(b) => (J::Bool(*b), None),
            Value::Text(t) => (J::String(t.clone()), None),
            Value::List(l) => (J::Array(l.iter().map(|v| num(*v)).collect()), None),
        };
        ReadingOut {
            quantity: r.quantity.clone(),
            value,
            unit: r.unit.clone(),
            invalid,
            at: rfc3339(r.at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PollError {
    pub at: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstrumentDetail {
    pub id: String,
    pub driver: String,
    pub manufacturer: String,
    pub model: String,
    pub description: String,
    /// Modbus unit id, on Modbus links.
    pub unit: Option<u8>,
    pub link: LinkOut,
    pub quantities: Vec<String>,
    pub measurements: Vec<String>,
    pub actions: Vec<String>,
    /// Latest polled readings.
    pub readings: Vec<ReadingOut>,
    /// The last poll failure, if the latest poll failed.
    pub poll_error: Option<PollError>,
}

fn unknown_instrument(state: &AppState, id: &str) -> Problem {
    let live = state.live();
    let known: Vec<&str> = live.bench.instruments.keys().map(|s| s.as_str()).collect();
    Problem::not_found(format!(
        "no instrument `{id}` (known: {})",
        known.join(", ")
    ))
}

/// One instrument: driver, link state, identity, last error, latest readings.
#[utoipa::path(get, path = "/api/v1/instruments/{id}",
    params(("id" = String, Path, description = "instrument id from the config")),
    responses((status = 200, body = InstrumentDetail), (status = 404, body = Problem)))]
pub async fn get_instrument(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InstrumentDetail>, Problem> {
    let live = state.live();
    let Some(def) = live.bench.instruments.get(&id) else {
        return Err(unknown_instrument(&state, &id));
    };
    let f = &def.driver.file;
    let status = live
        .gateway
        .links
        .get(&def.config.link)
        .map(|l| l.status())
        .unwrap_or_else(|| LinkStatus {
            state: LinkState::Closed,
            endpoint: String::new(),
            last_error: None,
            connected_since: None,
            reconnects: 0,
            attempt: 0,
            identity: None,
            requests_ok: 0,
            requests_failed: 0,
        });
    let modbus = def.config.unit.is_some();
    Ok(Json(InstrumentDetail {
        id: id.clone(),
        driver: def.driver.name().to_string(),
        manufacturer: f.driver.manufacturer.clone(),
        model: f.driver.model.clone(),
        description: def.config.description.clone(),
        unit: if modbus { def.config.unit } else { None },
        link: LinkOut::new(&def.config.link, status),
        quantities: f.quantities.keys().cloned().collect(),
        measurements: f.measurements.keys().cloned().collect(),
        actions: f.actions.keys().cloned().collect(),
        readings: live.latest.of(&id).values().map(ReadingOut::from).collect(),
        poll_error: live.latest.last_error(&id).map(|(at, message)| PollError {
            at: rfc3339(at),
            message,
        }),
    }))
}

fn instrument(state: &AppState, id: &str) -> Result<Instrument, Problem> {
    state
        .live()
        .gateway
        .instrument(id)
        .cloned()
        .ok_or_else(|| unknown_instrument(state, id))
}

/// Time an instrument request and count it by outcome.
async fn observed<T>(
    inst: &Instrument,
    fut: impl std::future::Future<Output = Result<T, InstrumentError>>,
) -> Result<T, Problem> {
    let started = Instant::now();
    let result = fut.await;
    let outcome = crate::metrics::outcome(&result.as_ref().map(|_| ()));
    crate::metrics::observe_request(inst.id(), outcome, started.elapsed());
    result.map_err(|e| Problem::from_instrument(&e))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// Quantity names of the instrument's driver.
    pub quantities: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadResponse {
    pub instrument: String,
    pub readings: Vec<ReadingOut>,
}

/// Read quantities from an instrument now (through its link queue, between polls).
#[utoipa::path(post, path = "/api/v1/instruments/{id}/read",
    params(("id" = String, Path, description = "instrument id")),
    request_body = ReadRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ReadResponse),
        (status = 400, body = Problem, description = "malformed JSON"),
        (status = 404, body = Problem, description = "unknown instrument"),
        (status = 413, body = Problem, description = "body too large"),
        (status = 422, body = Problem, description = "unknown quantity or bad body"),
        (status = 502, body = Problem), (status = 503, body = Problem), (status = 504, body = Problem)))]
pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReadResponse>, Problem> {
    let inst = instrument(&state, &id)?;
    let req: ReadRequest = Problem::parse_json(&body?)?;
    if req.quantities.is_empty() {
        return Err(Problem::unprocessable(
            "`quantities` must name at least one quantity",
        ));
    }
    if req.quantities.len() > MAX_READ_QUANTITIES {
        return Err(Problem::unprocessable(format!(
            "`quantities` names {} quantities; at most {MAX_READ_QUANTITIES} per request",
            req.quantities.len()
        )));
    }
    let names: Vec<&str> = req.quantities.iter().map(|s| s.as_str()).collect();
    let readings = observed(&inst, inst.read(&names)).await?;
    Ok(Json(ReadResponse {
        instrument: id,
        readings: readings.iter().map(ReadingOut::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Argument name -> value (number, boolean or string, as the driver declares).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResponse {
    pub instrument: String,
    pub action: String,
    pub status: &'static str,
}

/// JSON argument values as the typed values recipes also use.
fn to_toml(key: &str, v: &serde_json::Value) -> Result<toml::Value, Problem> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => {
            return Err(Problem::unprocessable(format!(
                "argument `{key}`: null is not a value"
            )));
        }
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            _ => {
                return Err(Problem::unprocessable(format!(
                    "argument `{key}`: {n} is out of range"
                )));
            }
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(
            a.iter()
                .map(|x| to_toml(key, x))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(o) => {
            let mut t = toml::map::Map::new();
            for (k, x) in o {
                t.insert(k.clone(), to_toml(&format!("{key}.{k}"), x)?);
            }
            toml::Value::Table(t)
        }
    })
}

/// Run a driver action with typed arguments. An empty body means no arguments.
#[utoipa::path(post, path = "/api/v1/instruments/{id}/actions/{action}",
    params(("id" = String, Path, description = "instrument id"),
           ("action" = String, Path, description = "action name of the driver")),
    request_body = ActionRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ActionResponse),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem, description = "unknown instrument or action"),
        (status = 409, body = Problem, description = "the instrument refused the command"),
        (status = 413, body = Problem), (status = 422, body = Problem, description = "bad arguments"),
        (status = 502, body = Problem), (status = 503, body = Problem), (status = 504, body = Problem)))]
pub async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResponse>, Problem> {
    let inst = instrument(&state, &id)?;
    let body = body?;
    let req: ActionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ActionRequest::default()
    } else {
        Problem::parse_json(&body)?
    };
    let mut args = BTreeMap::new();
    for (k, v) in &req.args {
        args.insert(k.clone(), to_toml(k, v)?);
    }
    observed(&inst, inst.act_typed(&action, &args)).await?;
    Ok(Json(ActionResponse {
        instrument: id,
        action,
        status: "done",
    }))
}

/// Run a triggered measurement (start, wait for completion, fetch) and return its readings.
/// Takes as long as the instrument needs, bounded by the driver's wait.
#[utoipa::path(post, path = "/api/v1/instruments/{id}/measurements/{name}",
    params(("id" = String, Path, description = "instrument id"),
           ("name" = String, Path, description = "measurement name of the driver")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ReadResponse),
        (status = 404, body = Problem, description = "unknown instrument or measurement"),
        (status = 502, body = Problem), (status = 503, body = Problem), (status = 504, body = Problem)))]
pub async fn measure(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<ReadResponse>, Problem> {
    let inst = instrument(&state, &id)?;
    if !inst.driver().file.measurements.contains_key(&name) {
        let known: Vec<&str> = inst
            .driver()
            .file
            .measurements
            .keys()
            .map(|s| s.as_str())
            .collect();
        return Err(Problem::not_found(format!(
            "instrument {id}: no measurement `{name}` (driver {} has: {})",
            inst.driver().name(),
            known.join(", ")
        )));
    }
    let readings = observed(&inst, inst.measure(&name)).await?;
    Ok(Json(ReadResponse {
        instrument: id,
        readings: readings.iter().map(ReadingOut::from).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScpiRequest {
    /// A command, or a query if it contains `?`.
    pub command: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScpiResponse {
    pub instrument: String,
    /// The reply to a query; null for a command.
    pub reply: Option<String>,
}

/// Raw SCPI passthrough; only when the config sets `api.allow_raw = true`.
#[utoipa::path(post, path = "/api/v1/instruments/{id}/scpi",
    params(("id" = String, Path, description = "instrument id")),
    request_body = ScpiRequest,
    security((), ("bearer" = [])),
    responses((status = 200, body = ScpiResponse), (status = 403, body = Problem, description = "raw access disabled"),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn scpi_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ScpiResponse>, Problem> {
    raw_allowed(&state)?;
    let inst = instrument(&state, &id)?;
    let req: ScpiRequest = Problem::parse_json(&body?)?;
    if req.command.trim().is_empty() || req.command.contains(['\n', '\r']) {
        return Err(Problem::unprocessable(
            "`command` must be one non-empty line",
        ));
    }
    let reply = observed(&inst, inst.scpi_raw(&req.command)).await?;
    Ok(Json(ScpiResponse {
        instrument: id,
        reply,
    }))
}

/// One raw Modbus transaction; addresses are 0-based protocol addresses.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModbusRequest {
    Read {
        /// `holding`, `input`, `coil` or `discrete_input`.
        #[schema(value_type = String)]
        table: Table,
        address: u16,
        count: u16,
    },
    WriteCoil {
        address: u16,
        value: bool,
    },
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteRegisters {
        address: u16,
        values: Vec<u16>,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModbusResponse {
    pub instrument: String,
    /// Registers read (holding, input).
    pub words: Option<Vec<u16>>,
    /// Bits read (coil, discrete input).
    pub bits: Option<Vec<bool>>,
}

/// The protocol's own per-request limits (Modbus application protocol V1.1b3, 6.1-6.12).
fn modbus_op(req: ModbusRequest) -> Result<ModbusOp, Problem> {
    let bits = |t: Table| matches!(t, Table::Coil | Table::DiscreteInput);
    Ok(match req {
        ModbusRequest::Read {
            table,
            address,
            count,
        } => {
            let max = if bits(table) { 2000 } else { 125 };
            if count == 0 || count > max {
                return Err(Problem::unprocessable(format!(
                    "`count` must be 1..={max} for table {table:?}"
                )));
            }
            ModbusOp::Read {
                table,
                address,
                count,
            }
        }
        ModbusRequest::WriteCoil { address, value } => ModbusOp::WriteCoil { address, value },
        ModbusRequest::WriteRegister { address, value } => {
            ModbusOp::WriteRegister { address, value }
        }
        ModbusRequest::WriteRegisters { address, values } => {
            if values.is_empty() || values.len() > 123 {
                return Err(Problem::unprocessable(
                    "`values` must hold 1..=123 registers",
                ));
            }
            ModbusOp::WriteRegisters { address, values }
        }
    })
}

/// Raw Modbus passthrough; only when the config sets `api.allow_raw = true`.
#[utoipa::path(post, path = "/api/v1/instruments/{id}/modbus",
    params(("id" = String, Path, description = "instrument id")),
    request_body = ModbusRequest,
    security((), ("bearer" = [])),
    responses((status = 200, body = ModbusResponse), (status = 403, body = Problem, description = "raw access disabled"),
        (status = 404, body = Problem), (status = 409, body = Problem, description = "modbus exception"),
        (status = 422, body = Problem)))]
pub async fn modbus_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ModbusResponse>, Problem> {
    raw_allowed(&state)?;
    let inst = instrument(&state, &id)?;
    let op = modbus_op(Problem::parse_json(&body?)?)?;
    let reply = observed(&inst, inst.modbus_raw(op)).await?;
    let (words, bits) = match reply {
        ModbusReply::Words(w) => (Some(w), None),
        ModbusReply::Bits(b) => (None, Some(b)),
        ModbusReply::Written => (None, None),
    };
    Ok(Json(ModbusResponse {
        instrument: id,
        words,
        bits,
    }))
}

fn raw_allowed(state: &AppState) -> Result<(), Problem> {
    if state.live().bench.api.allow_raw {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "raw-disabled",
        "raw passthrough is off; set api.allow_raw = true in the config to enable it",
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StationOut {
    pub id: String,
    pub description: String,
    /// Role -> instrument id.
    pub roles: BTreeMap<String, String>,
}

/// The bench's stations and the instruments their roles name.
#[utoipa::path(get, path = "/api/v1/stations", responses((status = 200, body = Vec<StationOut>)))]
pub async fn list_stations(State(state): State<AppState>) -> Json<Vec<StationOut>> {
    let live = state.live();
    Json(
        live.bench
            .stations
            .iter()
            .map(|(id, s)| StationOut {
                id: id.clone(),
                description: s.description.clone(),
                roles: s.roles.clone(),
            })
            .collect(),
    )
}
