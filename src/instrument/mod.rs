//! An instrument: a driver file bound to a link (and a Modbus unit id).
//!
//! This is where driver declarations turn into link requests: which query or registers to read
//! for a quantity, how to parse the reply, how to render an action's commands, how to wait for a
//! triggered measurement. Nothing here touches a socket; the link does.

pub mod args;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::driver::Driver;
use crate::driver::schema::{
    Action, DriverFile, ModbusWrite, Parse, Protocol, Quantity, ScpiSettings, Wait,
};
use crate::link::{LinkError, LinkHandle, ScpiSetup, ScpiStep};
use crate::modbus::ops::{ModbusOp, ModbusReply};
use crate::modbus::plan::{ReadBlock, ReadItem, plan_reads};
use crate::modbus::value::{self as mv, Decoded, Table, ValueType, WordOrder};
use crate::reading::{Reading, Value};
use crate::scpi::parse;
use crate::scpi::session::Framing;
use args::{ArgError, ArgValue};

const DEFAULT_MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The error queue is read until "no error", but never forever (a babbling instrument).
const MAX_ERROR_QUEUE_READS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error("instrument {instrument}: unknown {what} `{name}` (driver {driver} has: {known})")]
    Unknown {
        instrument: String,
        driver: String,
        what: &'static str,
        name: String,
        known: String,
    },
    #[error("instrument {instrument}: {context}: {source}")]
    Link {
        instrument: String,
        context: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("instrument {instrument}: {quantity}: cannot use reply {reply:?}: {message}")]
    Parse {
        instrument: String,
        quantity: String,
        reply: String,
        message: String,
    },
    /// The instrument's own error queue reported a problem after a command.
    #[error("instrument {instrument}: `{command}` was refused: error {code}, {message:?}")]
    Refused {
        instrument: String,
        command: String,
        code: i32,
        message: String,
    },
    #[error("instrument {instrument}: {source}")]
    Args {
        instrument: String,
        action: String,
        #[source]
        source: Box<ArgError>,
    },
    #[error("instrument {instrument}: measurement {measurement} not complete within {timeout:?}")]
    MeasurementTimeout {
        instrument: String,
        measurement: String,
        timeout: Duration,
    },
    #[error("instrument {instrument}: {message}")]
    Invalid { instrument: String, message: String },
}

impl InstrumentError {
    /// The link-level error underneath, if any.
    pub fn link_error(&self) -> Option<&LinkError> {
        match self {
            InstrumentError::Link { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// One way to get a set of quantities from a SCPI instrument.
#[derive(Debug, PartialEq)]
enum ScpiFetch<'a> {
    Single(&'a str),
    /// A block query and the (field index, quantity) pairs wanted from it.
    Block(&'a str, Vec<(usize, &'a str)>),
}

#[derive(Clone)]
pub struct Instrument {
    id: Arc<str>,
    driver: Arc<Driver>,
    link: LinkHandle,
    unit: u8,
    /// The last read plan. A background poll asks for the same quantities every interval, so
    /// choosing blocks (SCPI) or sorting and merging registers (Modbus) runs once per list
    /// rather than once per read.
    last_plan: Arc<Mutex<Option<Arc<ReadPlan>>>>,
}

/// The requests that read a list of quantities, and the list they were planned for.
struct ReadPlan {
    names: Vec<String>,
    requests: PlannedRequests,
}

enum PlannedRequests {
    Modbus(Vec<ReadBlock>),
    /// One query step per fetch, and what each reply holds.
    Scpi {
        steps: Vec<ScpiStep>,
        fetches: Vec<PlannedFetch>,
    },
}

/// What one SCPI reply holds, by index into the plan's names.
enum PlannedFetch {
    Single(usize),
    /// (field of the block reply, name index) pairs.
    Block(Vec<(usize, usize)>),
}

impl std::fmt::Debug for Instrument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrument")
            .field("id", &self.id)
            .field("driver", &self.driver.name())
            .field("link", &self.link.name())
            .finish()
    }
}

/// The SCPI link preparation a driver asks for.
pub fn scpi_setup(driver: &DriverFile, skip_identity: bool) -> ScpiSetup {
    let s = driver.scpi.clone().unwrap_or_default();
    let framing = Framing::from(&s);
    let identity = if skip_identity {
        None
    } else {
        driver
            .identity
            .as_ref()
            .and_then(|i| i.query.as_ref().map(|q| (q.clone(), i.contains.clone())))
    };
    ScpiSetup {
        framing,
        init: driver.init.clone(),
        identity,
    }
}

impl Instrument {
    pub fn new(id: &str, driver: Arc<Driver>, link: LinkHandle, unit: Option<u8>) -> Instrument {
        Instrument {
            id: Arc::from(id),
            driver,
            link,
            unit: unit.unwrap_or(1),
            last_plan: Arc::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    pub fn link(&self) -> &LinkHandle {
        &self.link
    }

    fn file(&self) -> &DriverFile {
        &self.driver.file
    }

    /// Borrowed, not cloned: a clone (with its list of invalid markers) was a fifth of
    /// `read`'s own cost per SCPI query (callgrind, benches/io.rs).
    fn scpi_settings(&self) -> &ScpiSettings {
        static DEFAULT: OnceLock<ScpiSettings> = OnceLock::new();
        self.file()
            .scpi
            .as_ref()
            .unwrap_or_else(|| DEFAULT.get_or_init(ScpiSettings::default))
    }

    fn unknown(&self, what: &'static str, name: &str, known: Vec<&String>) -> InstrumentError {
        InstrumentError::Unknown {
            instrument: self.id.to_string(),
            driver: self.driver.name().to_string(),
            what,
            name: name.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }
    }

    fn link_err(&self, context: impl Into<String>, source: LinkError) -> InstrumentError {
        InstrumentError::Link {
            instrument: self.id.to_string(),
            context: context.into(),
            source: Box::new(source),
        }
    }

    fn quantity(&self, name: &str) -> Result<&Quantity, InstrumentError> {
        self.file()
            .quantities
            .get(name)
            .ok_or_else(|| self.unknown("quantity", name, self.file().quantities.keys().collect()))
    }

    /// Read quantities now. Each reading carries the driver's unit; instrument "no data"
    /// markers come back as [`Value::Invalid`], not as an error.
    pub async fn read(&self, names: &[&str]) -> Result<Vec<Reading>, InstrumentError> {
        match self.file().driver.protocol {
            Protocol::Scpi => self.read_scpi(names).await,
            Protocol::Modbus => {
                let quantities = names
                    .iter()
                    .map(|n| self.quantity(n))
                    .collect::<Result<Vec<_>, _>>()?;
                self.read_modbus(names, &quantities, true).await
            }
        }
    }

    fn plan_scpi<'a>(&'a self, names: &[&'a str]) -> Result<Vec<ScpiFetch<'a>>, InstrumentError> {
        let file = self.file();
        let mut plan = Vec::new();
        let mut covered: Vec<&str> = Vec::new();
        for &name in names {
            if covered.contains(&name) {
                continue;
            }
            let q = self.quantity(name)?;
            // The block that serves the most of the still-wanted quantities in one query.
            // Counted first and listed only for the winner: this runs on every poll.
            let still_wanted = |f: &str| names.contains(&f) && !covered.contains(&f);
            let serves = |fields: &[String]| fields.iter().filter(|f| still_wanted(f)).count();
            let best = file
                .blocks
                .iter()
                .filter(|(_, b)| b.fields.iter().any(|f| f == name))
                .map(|(bname, b)| (bname, b, serves(&b.fields)))
                .max_by_key(|(_, _, n)| *n)
                .filter(|(_, _, n)| q.query.is_none() || *n >= 2)
                .map(|(bname, b, _)| {
                    let wanted: Vec<(usize, &str)> = b
                        .fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| still_wanted(f))
                        .map(|(i, f)| (i, f.as_str()))
                        .collect();
                    (bname.as_str(), wanted)
                });
            match (q.query.is_some(), best) {
                (true, Some((b, wanted))) if wanted.len() >= 2 => {
                    covered.extend(wanted.iter().map(|(_, n)| *n));
                    plan.push(ScpiFetch::Block(b, wanted));
                }
                (true, _) => {
                    covered.push(name);
                    plan.push(ScpiFetch::Single(name));
                }
                (false, Some((b, wanted))) => {
                    covered.extend(wanted.iter().map(|(_, n)| *n));
                    plan.push(ScpiFetch::Block(b, wanted));
                }
                (false, None) => {
                    return Err(InstrumentError::Invalid {
                        instrument: self.id.to_string(),
                        message: format!(
                            "quantity {name} has no query and no block provides it (driver {})",
                            self.driver.name()
                        ),
                    });
                }
            }
        }
        Ok(plan)
    }

    /// The SCPI queries that read `names`, from the last plan when it was made for the same
    /// list.
    fn scpi_plan(&self, names: &[&str]) -> Result<Arc<ReadPlan>, InstrumentError> {
        if let Some(plan) = self.cached_plan(names) {
            return Ok(plan);
        }
        for n in names {
            self.quantity(n)?;
        }
        let file = self.file();
        let default_timeout = self.scpi_settings().timeout.unwrap_or(self.link.timeout());
        // Where a name was first asked; a name asked twice is read once.
        let index = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
        let mut steps = Vec::new();
        let mut fetches = Vec::new();
        for fetch in self.plan_scpi(names)? {
            match fetch {
                ScpiFetch::Single(n) => {
                    let q = &file.quantities[n];
                    steps.push(ScpiStep::Query {
                        text: q.query.clone().unwrap_or_default(),
                        timeout: q.timeout.unwrap_or(default_timeout),
                    });
                    fetches.push(PlannedFetch::Single(index(n)));
                }
                ScpiFetch::Block(b, wanted) => {
                    let block = &file.blocks[b];
                    steps.push(ScpiStep::Query {
                        text: block.query.clone(),
                        timeout: block.timeout.unwrap_or(default_timeout),
                    });
                    fetches.push(PlannedFetch::Block(
                        wanted.iter().map(|(i, n)| (*i, index(n))).collect(),
                    ));
                }
            }
        }
        Ok(self.remember(names, PlannedRequests::Scpi { steps, fetches }))
    }

    async fn read_scpi(&self, names: &[&str]) -> Result<Vec<Reading>, InstrumentError> {
        let settings = self.scpi_settings();
        let plan = self.scpi_plan(names)?;
        let PlannedRequests::Scpi { steps, fetches } = &plan.requests else {
            return Err(InstrumentError::Invalid {
                instrument: self.id.to_string(),
                message: "a Modbus read plan for a SCPI instrument".into(),
            });
        };
        let replies = self
            .link
            .scpi(steps.clone())
            .await
            .map_err(|e| self.link_err(format!("read {}", names.join(", ")), e))?;
        let at = SystemTime::now();
        let mut out: Vec<Option<Reading>> = vec![None; names.len()];
        for (fetch, reply) in fetches.iter().zip(replies) {
            let reply = reply.unwrap_or_default();
            match fetch {
                PlannedFetch::Single(k) => {
                    let n = names[*k];
                    let q = self.quantity(n)?;
                    let token = match q.field {
                        Some(i) => parse::field(&reply, &settings.separator, i)
                            .map_err(|e| self.parse_err(n, &reply, e.to_string()))?,
                        None => reply.as_str(),
                    };
                    let value = self.parse_scpi_value(n, q, token, settings)?;
                    out[*k] = Some(self.reading(n, q, value, at, &reply));
                }
                PlannedFetch::Block(wanted) => {
                    for (i, k) in wanted {
                        let n = names[*k];
                        let q = self.quantity(n)?;
                        let token = parse::field(&reply, &settings.separator, *i)
                            .map_err(|e| self.parse_err(n, &reply, e.to_string()))?;
                        let value = self.parse_scpi_value(n, q, token, settings)?;
                        out[*k] = Some(self.reading(n, q, value, at, token));
                    }
                }
            }
        }
        // A name the caller listed twice gets a copy at its later places.
        for i in 0..names.len() {
            if out[i].is_none()
                && let Some(first) = names.iter().position(|n| *n == names[i])
                && first < i
            {
                out[i] = out[first].clone();
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn parse_err(&self, quantity: &str, reply: &str, message: String) -> InstrumentError {
        let mut preview: String = reply.chars().take(120).collect();
        if preview.len() < reply.len() {
            preview.push('…');
        }
        InstrumentError::Parse {
            instrument: self.id.to_string(),
            quantity: quantity.to_string(),
            reply: preview,
            message,
        }
    }

    fn parse_scpi_value(
        &self,
        name: &str,
        q: &Quantity,
        token: &str,
        s: &ScpiSettings,
    ) -> Result<Value, InstrumentError> {
        let value = match q.parse {
            Parse::Number => parse::parse_number(token, &s.invalid)
                .map_err(|e| self.parse_err(name, token, e.to_string()))?,
            Parse::List => parse::list_value(
                parse::parse_list(token, &s.separator, &s.invalid)
                    .map_err(|e| self.parse_err(name, token, e.to_string()))?,
            ),
            Parse::Bool => Value::Bool(
                parse::parse_bool(token).map_err(|e| self.parse_err(name, token, e.to_string()))?,
            ),
            Parse::Text => Value::Text(token.trim().to_string()),
        };
        Ok(scaled(value, q.scale, q.offset))
    }

    fn reading(
        &self,
        name: &str,
        q: &Quantity,
        value: Value,
        at: SystemTime,
        raw: &str,
    ) -> Reading {
        Reading {
            quantity: name.to_string(),
            value,
            unit: q.unit.clone(),
            at,
            raw: Some(raw.to_string()),
        }
    }

    fn modbus_base(&self) -> u16 {
        self.file()
            .modbus
            .as_ref()
            .map(|m| m.address_base as u16)
            .unwrap_or(0)
    }

    fn modbus_timeout(&self) -> Option<Duration> {
        self.file().modbus.as_ref().and_then(|m| m.timeout)
    }

    fn default_order(&self) -> WordOrder {
        self.file()
            .modbus
            .as_ref()
            .and_then(|m| m.order)
            .unwrap_or_default()
    }

    /// The last plan, when it was made for the same list of names.
    fn cached_plan(&self, names: &[&str]) -> Option<Arc<ReadPlan>> {
        // A poisoned lock only means another reader panicked mid-update; the cache is a hint,
        // so plan afresh rather than trust or propagate it.
        let plan = self.last_plan.lock().ok().and_then(|p| p.clone())?;
        (plan.names.len() == names.len() && plan.names.iter().zip(names).all(|(a, b)| a == b))
            .then_some(plan)
    }

    fn remember(&self, names: &[&str], requests: PlannedRequests) -> Arc<ReadPlan> {
        let plan = Arc::new(ReadPlan {
            names: names.iter().map(|n| n.to_string()).collect(),
            requests,
        });
        if let Ok(mut slot) = self.last_plan.lock() {
            *slot = Some(plan.clone());
        }
        plan
    }

    /// The Modbus requests that read `names`, from the last plan when it was made for the same
    /// list; `remember` keeps a new plan for the next read.
    fn modbus_plan(
        &self,
        names: &[&str],
        quantities: &[&Quantity],
        remember: bool,
    ) -> Result<Arc<ReadPlan>, InstrumentError> {
        if let Some(plan) = self.cached_plan(names) {
            return Ok(plan);
        }
        let base = self.modbus_base();
        let (max_gap, max_count) = self
            .file()
            .modbus
            .as_ref()
            .map(|m| (m.max_gap, m.max_count))
            .unwrap_or((10, 100));
        let mut items = Vec::with_capacity(names.len());
        for (key, (name, q)) in names.iter().zip(quantities).enumerate() {
            let (Some(table), Some(address), Some(ty)) = (q.table, q.address, q.value_type) else {
                return Err(InstrumentError::Invalid {
                    instrument: self.id.to_string(),
                    message: format!("quantity {name} has no table/address/type"),
                });
            };
            items.push(ReadItem {
                key,
                table,
                address: address.saturating_sub(base),
                count: ty.registers(q.length),
            });
        }
        let requests = PlannedRequests::Modbus(plan_reads(&items, max_gap, max_count));
        Ok(if remember {
            self.remember(names, requests)
        } else {
            Arc::new(ReadPlan {
                names: Vec::new(),
                requests,
            })
        })
    }

    /// `quantities[i]` is the driver's definition of `names[i]`; `remember` keeps the plan for
    /// the next read.
    async fn read_modbus(
        &self,
        names: &[&str],
        quantities: &[&Quantity],
        remember: bool,
    ) -> Result<Vec<Reading>, InstrumentError> {
        let plan = self.modbus_plan(names, quantities, remember)?;
        let PlannedRequests::Modbus(blocks) = &plan.requests else {
            return Err(InstrumentError::Invalid {
                instrument: self.id.to_string(),
                message: "a SCPI read plan for a Modbus instrument".into(),
            });
        };
        let at = SystemTime::now();
        let mut out: Vec<Option<Reading>> = vec![None; names.len()];
        for block in blocks {
            let op = ModbusOp::Read {
                table: block.table,
                address: block.address,
                count: block.count,
            };
            let reply = match self.link.modbus(self.unit, op, self.modbus_timeout()).await {
                Ok(r) => r,
                // A merged read that spans registers the device does not map is refused as a
                // whole by many devices: read each item on its own instead.
                Err(LinkError::Exception { code: 2, .. }) if block.items.len() > 1 => {
                    for (key, _) in &block.items {
                        let mut one = Box::pin(
                            // Not remembered: the poll's own list stays the cached plan.
                            self.read_modbus(&names[*key..=*key], &quantities[*key..=*key], false),
                        )
                        .await?;
                        out[*key] = one.pop();
                    }
                    continue;
                }
                Err(e) => return Err(self.link_err(format!("read {}", names.join(", ")), e)),
            };
            for (key, offset) in &block.items {
                let (name, q) = (names[*key], quantities[*key]);
                let ty = q.value_type.unwrap_or(ValueType::U16);
                let n = ty.registers(q.length) as usize;
                let off = *offset as usize;
                let (decoded, raw) = match &reply {
                    ModbusReply::Words(w) => {
                        let slice = w.get(off..off + n).ok_or_else(|| {
                            self.parse_err(name, &format!("{w:?}"), "reply too short".into())
                        })?;
                        let d =
                            mv::decode(slice, ty, q.order.unwrap_or(self.default_order()), q.bit)
                                .map_err(|e| {
                                self.parse_err(name, &format!("{slice:?}"), e.to_string())
                            })?;
                        (d, raw_words(slice))
                    }
                    ModbusReply::Bits(b) => {
                        let bit = *b.get(off).ok_or_else(|| {
                            self.parse_err(name, &format!("{b:?}"), "reply too short".into())
                        })?;
                        (Decoded::Bool(bit), bit.to_string())
                    }
                    ModbusReply::Written => {
                        return Err(self.parse_err(name, "", "unexpected write reply".into()));
                    }
                };
                let value = match decoded {
                    Decoded::Number(v) => Value::Number(v),
                    Decoded::Bool(b) => Value::Bool(b),
                    Decoded::Text(t) => Value::Text(t),
                };
                out[*key] = Some(self.reading(name, q, scaled(value, q.scale, q.offset), at, &raw));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn action(&self, name: &str) -> Result<&Action, InstrumentError> {
        self.file()
            .actions
            .get(name)
            .ok_or_else(|| self.unknown("action", name, self.file().actions.keys().collect()))
    }

    /// Run a named action with `key=value` arguments (typed and range-checked by the driver).
    pub async fn act(
        &self,
        name: &str,
        given: &BTreeMap<String, String>,
    ) -> Result<(), InstrumentError> {
        let action = self.action(name)?;
        let args =
            args::resolve_args(name, action, given).map_err(|source| InstrumentError::Args {
                instrument: self.id.to_string(),
                action: name.to_string(),
                source: Box::new(source),
            })?;
        self.run_action(name, action, &args).await
    }

    /// Run a named action with typed arguments (from a recipe or an API body).
    pub async fn act_typed(
        &self,
        name: &str,
        given: &BTreeMap<String, toml::Value>,
    ) -> Result<(), InstrumentError> {
        let action = self.action(name)?;
        let args = args::resolve_typed_args(name, action, given).map_err(|source| {
            InstrumentError::Args {
                instrument: self.id.to_string(),
                action: name.to_string(),
                source: Box::new(source),
            }
        })?;
        self.run_action(name, action, &args).await
    }

    async fn run_action(
        &self,
        name: &str,
        action: &Action,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<(), InstrumentError> {
        match self.file().driver.protocol {
            Protocol::Scpi => {
                let mut commands = Vec::with_capacity(action.commands.len());
                for t in &action.commands {
                    commands.push(args::render(t, args, &action.args).map_err(|source| {
                        InstrumentError::Args {
                            instrument: self.id.to_string(),
                            action: name.to_string(),
                            source: Box::new(source),
                        }
                    })?);
                }
                self.scpi_commands(&commands).await?;
            }
            Protocol::Modbus => {
                // Every write is built before the first is sent, so a value that cannot be
                // written leaves the instrument untouched rather than half-changed.
                let ops = action
                    .writes
                    .iter()
                    .map(|w| self.write_op(name, action, w, args))
                    .collect::<Result<Vec<_>, _>>()?;
                for op in ops {
                    let desc = op.to_string();
                    self.link
                        .modbus(self.unit, op, self.modbus_timeout())
                        .await
                        .map_err(|e| self.link_err(format!("action {name}: {desc}"), e))?;
                }
            }
        }
        if let Some(settle) = action.settle {
            tokio::time::sleep(settle).await;
        }
        Ok(())
    }

    fn write_op(
        &self,
        action_name: &str,
        action: &Action,
        w: &ModbusWrite,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<ModbusOp, InstrumentError> {
        let bad = |message: String| InstrumentError::Invalid {
            instrument: self.id.to_string(),
            message: format!("action {action_name}: {message}"),
        };
        let value = match (&w.arg, w.value) {
            (Some(a), _) => {
                let given = args
                    .get(a)
                    .ok_or_else(|| bad(format!("argument {a} has no value")))?;
                let def = action
                    .args
                    .get(a)
                    .ok_or_else(|| bad(format!("argument {a} is not declared")))?;
                args::register_value(given, def).ok_or_else(|| {
                    bad(format!(
                        "argument {a}: {given} has no number to write (the driver gives no \
                         values entry for it)"
                    ))
                })?
            }
            (None, Some(v)) => v,
            (None, None) => return Err(bad("a write has neither arg nor value".into())),
        };
        let file_address = match &w.address_arg {
            Some(a) => match args.get(a) {
                Some(ArgValue::Int(v)) => w.address_for(*v),
                Some(other) => {
                    return Err(bad(format!(
                        "argument {a}: address_arg needs an integer, got {other}"
                    )));
                }
                None => return Err(bad(format!("argument {a} has no value"))),
            },
            None => w.address.map(i128::from),
        }
        .ok_or_else(|| bad("a write has no address".into()))?;
        // The loader keeps every address an argument's range can reach inside the table; this
        // guards drivers built in code.
        let address =
            u16::try_from(file_address - i128::from(self.modbus_base())).map_err(|_| {
                let from = w
                    .address_arg
                    .as_ref()
                    .and_then(|a| args.get(a).map(|v| format!(" (from argument {a} = {v})")))
                    .unwrap_or_default();
                bad(format!(
                    "address {file_address}{from} is outside the register table"
                ))
            })?;
        match w.table {
            Table::Coil => Ok(ModbusOp::WriteCoil {
                address,
                value: value != 0.0,
            }),
            Table::Holding => {
                let ty = w.value_type.unwrap_or(ValueType::U16);
                if ty == ValueType::Bit {
                    let bit = w.bit.unwrap_or(0).min(15);
                    let mask = 1u16 << bit;
                    return Ok(ModbusOp::MaskWrite {
                        address,
                        and_mask: !mask,
                        or_mask: if value != 0.0 { mask } else { 0 },
                    });
                }
                let raw = mv::unscale(value, w.scale, w.offset);
                let decoded = if ty == ValueType::Bool {
                    Decoded::Bool(raw != 0.0)
                } else {
                    Decoded::Number(raw)
                };
                let words = mv::encode(&decoded, ty, w.order.unwrap_or(self.default_order()), None)
                    .map_err(|e| bad(format!("register {file_address}: {e}")))?;
                Ok(if words.len() == 1 {
                    ModbusOp::WriteRegister {
                        address,
                        value: words[0],
                    }
                } else {
                    ModbusOp::WriteRegisters {
                        address,
                        values: words,
                    }
                })
            }
            t => Err(bad(format!("table {t:?} is read-only"))),
        }
    }

    /// Send SCPI commands; with `check_errors`, read the error queue after each and fail on the
    /// first entry that is not "no error".
    async fn scpi_commands(&self, commands: &[String]) -> Result<(), InstrumentError> {
        let s = self.scpi_settings();
        let check = if s.check_errors {
            s.error_query.clone()
        } else {
            None
        };
        let timeout = s.timeout.unwrap_or(self.link.timeout());
        let mut steps = Vec::new();
        for c in commands {
            steps.push(ScpiStep::Write(c.clone()));
            if let Some(q) = &check {
                steps.push(ScpiStep::Query {
                    text: q.clone(),
                    timeout,
                });
            }
        }
        let replies = self
            .link
            .scpi(steps)
            .await
            .map_err(|e| self.link_err(format!("`{}`", commands.join("; ")), e))?;
        if check.is_some() {
            for (cmd, reply) in commands.iter().zip(replies.iter().skip(1).step_by(2)) {
                let reply = reply.as_deref().unwrap_or_default();
                let entry = parse::parse_error_entry(reply)
                    .map_err(|e| self.parse_err("error queue", reply, e.to_string()))?;
                if !entry.is_no_error() {
                    // Drain the rest so the next command starts from an empty queue.
                    let _ = self.drain_errors().await;
                    return Err(InstrumentError::Refused {
                        instrument: self.id.to_string(),
                        command: cmd.clone(),
                        code: entry.code,
                        message: entry.message,
                    });
                }
            }
        }
        Ok(())
    }

    /// Read the error queue until it reports no error; returns the entries read.
    pub async fn drain_errors(&self) -> Result<Vec<parse::ErrorEntry>, InstrumentError> {
        let s = self.scpi_settings();
        let Some(q) = s.error_query.clone() else {
            return Ok(Vec::new());
        };
        let timeout = s.timeout.unwrap_or(self.link.timeout());
        let mut out = Vec::new();
        for _ in 0..MAX_ERROR_QUEUE_READS {
            let reply = self
                .link
                .scpi(vec![ScpiStep::Query {
                    text: q.clone(),
                    timeout,
                }])
                .await
                .map_err(|e| self.link_err(q.clone(), e))?;
            let reply = reply.into_iter().flatten().next().unwrap_or_default();
            let entry = parse::parse_error_entry(&reply)
                .map_err(|e| self.parse_err("error queue", &reply, e.to_string()))?;
            if entry.is_no_error() {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Start a triggered measurement, wait for it to complete, then read what it fetches.
    pub async fn measure(&self, name: &str) -> Result<Vec<Reading>, InstrumentError> {
        let file = self.file();
        let m = file
            .measurements
            .get(name)
            .ok_or_else(|| self.unknown("measurement", name, file.measurements.keys().collect()))?;
        let timeout = m.timeout.unwrap_or(DEFAULT_MEASUREMENT_TIMEOUT);
        self.scpi_commands(&m.start).await?;
        let started = tokio::time::Instant::now();
        let timed_out = || InstrumentError::MeasurementTimeout {
            instrument: self.id.to_string(),
            measurement: name.to_string(),
            timeout,
        };
        match &m.wait {
            Wait::Opc(q) => {
                let r = self
                    .link
                    .scpi(vec![ScpiStep::Query {
                        text: q.clone(),
                        timeout,
                    }])
                    .await;
                match r {
                    Ok(_) => {}
                    Err(LinkError::Timeout { .. }) => return Err(timed_out()),
                    Err(e) => return Err(self.link_err(format!("measurement {name}: {q}"), e)),
                }
            }
            Wait::Poll {
                query,
                until,
                interval,
            } => loop {
                let reply = self
                    .link
                    .scpi(vec![ScpiStep::Query {
                        text: query.clone(),
                        timeout: self.link.timeout(),
                    }])
                    .await
                    .map_err(|e| self.link_err(format!("measurement {name}: {query}"), e))?;
                let reply = reply.into_iter().flatten().next().unwrap_or_default();
                if reply.trim().eq_ignore_ascii_case(until.trim()) {
                    break;
                }
                if started.elapsed() + *interval > timeout {
                    return Err(timed_out());
                }
                tokio::time::sleep(*interval).await;
            },
            Wait::Delay(d) => tokio::time::sleep(*d).await,
        }
        let mut wanted: Vec<&str> = Vec::new();
        for f in &m.fetch {
            if let Some(b) = file.blocks.get(f) {
                wanted.extend(
                    b.fields
                        .iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| s.as_str()),
                );
            } else {
                wanted.push(f.as_str());
            }
        }
        self.read(&wanted).await
    }

    /// Send a raw SCPI line: a query (contains `?`) returns its reply.
    pub async fn scpi_raw(&self, text: &str) -> Result<Option<String>, InstrumentError> {
        let s = self.scpi_settings();
        let step = if text.contains('?') {
            ScpiStep::Query {
                text: text.to_string(),
                timeout: s.timeout.unwrap_or(self.link.timeout()),
            }
        } else {
            ScpiStep::Write(text.to_string())
        };
        let r = self
            .link
            .scpi(vec![step])
            .await
            .map_err(|e| self.link_err(format!("`{text}`"), e))?;
        Ok(r.into_iter().flatten().next())
    }

    /// One raw Modbus transaction with this instrument's unit id.
    pub async fn modbus_raw(&self, op: ModbusOp) -> Result<ModbusReply, InstrumentError> {
        let desc = op.to_string();
        self.link
            .modbus(self.unit, op, self.modbus_timeout())
            .await
            .map_err(|e| self.link_err(desc, e))
    }

    /// Convert a 0/1-based driver address into a protocol address.
    pub fn protocol_address(&self, address: u16) -> u16 {
        address.saturating_sub(self.modbus_base())
    }
}

/// The registers a Modbus reading came from, as `[17664, 16384]` (what `{:?}` prints), without
/// the formatting machinery: every polled Modbus reading records one.
fn raw_words(words: &[u16]) -> String {
    let mut out = String::with_capacity(2 + words.len() * 7);
    let mut digits = itoa::Buffer::new();
    out.push('[');
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(digits.format(*w));
    }
    out.push(']');
    out
}

fn scaled(value: Value, scale: Option<f64>, offset: Option<f64>) -> Value {
    match value {
        Value::Number(v) if scale.is_some() || offset.is_some() => {
            Value::Number(mv::scale(v, scale, offset))
        }
        Value::List(l) if scale.is_some() || offset.is_some() => {
            Value::List(l.into_iter().map(|v| mv::scale(v, scale, offset)).collect())
        }
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::raw_words;

    #[test]
    fn raw_words_reads_like_the_debug_form() {
        for words in [&[][..], &[0], &[7, 65535], &[17664, 16384, 10, 0]] {
            assert_eq!(raw_words(words), format!("{words:?}"));
        }
    }
}
