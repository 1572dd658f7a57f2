//! The driver file format: one TOML file per instrument model (see drivers/README.md).
//!
//! These types are the parsed shape only; `driver::load` checks the cross-references
//! (a block naming an unknown quantity, an action template naming an unknown argument, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::modbus::value::{Table, ValueType, WordOrder};
use crate::reading::InvalidKind;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriverFile {
    pub driver: DriverMeta,
    #[serde(default)]
    pub identity: Option<Identity>,
    /// SCPI settings; only for `protocol = "scpi"`.
    #[serde(default)]
    pub scpi: Option<ScpiSettings>,
    /// Modbus settings; only for `protocol = "modbus"`.
    #[serde(default)]
    pub modbus: Option<ModbusSettings>,
    /// Commands sent once after every (re)connect, in order.
    #[serde(default)]
    pub init: Vec<String>,
    #[serde(default)]
    pub quantities: BTreeMap<String, Quantity>,
    /// One query whose reply carries several quantities.
    #[serde(default)]
    pub blocks: BTreeMap<String, Block>,
    /// Triggered measurements: start, wait for completion, then read quantities.
    #[serde(default)]
    pub measurements: BTreeMap<String, Measurement>,
    #[serde(default)]
    pub actions: BTreeMap<String, Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Scpi,
    Modbus,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriverMeta {
    /// The name instruments refer to in the config (`driver = "yokogawa-wt310e"`).
    pub name: String,
    pub protocol: Protocol,
    #[serde(default)]
    pub manufacturer: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub description: String,
}

/// How to check that the instrument on the link is the model this driver is for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// SCPI: the identity query, usually `*IDN?`. Modbus: unused.
    #[serde(default)]
    pub query: Option<String>,
    /// Modbus: a quantity whose value identifies the model.
    #[serde(default)]
    pub quantity: Option<String>,
    /// Every string must appear in the reply (case-insensitive), e.g. `["YOKOGAWA", "WT310"]`.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Modbus: the value the identity quantity must have.
    #[serde(default)]
    pub equals: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScpiSettings {
    /// Appended to every command written; default "\n".
    #[serde(default = "default_term")]
    pub write_termination: String,
    /// Ends every reply; default "\n". A trailing "\r" is always stripped.
    #[serde(default = "default_term")]
    pub read_termination: String,
    /// Default timeout for one query; default 2 s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Error-queue query, e.g. `:STATus:ERRor?` or `SYST:ERR?`.
    #[serde(default)]
    pub error_query: Option<String>,
    /// Query the error queue after every action command (needs `error_query`).
    #[serde(default)]
    pub check_errors: bool,
    /// Reply tokens that mean "no valid value".
    #[serde(default)]
    pub invalid: Vec<InvalidMarker>,
    /// Separator between values in list replies; default ",".
    #[serde(default = "default_sep")]
    pub separator: String,
}

impl Default for ScpiSettings {
    fn default() -> Self {
        ScpiSettings {
            write_termination: default_term(),
            read_termination: default_term(),
            timeout: None,
            error_query: None,
            check_errors: false,
            invalid: Vec::new(),
            separator: default_sep(),
        }
    }
}

fn default_term() -> String {
    "\n".to_string()
}
fn default_sep() -> String {
    ",".to_string()
}

/// A reply token or value that is not a reading. Exactly one of `token` / `value`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidMarker {
    /// Matched against the trimmed token, case-insensitive: `NAN`, `INF`, `-INF`.
    #[serde(default)]
    pub token: Option<String>,
    /// Matched against the parsed number with a relative tolerance of 1e-9: 9.91e37, -1.
    #[serde(default)]
    pub value: Option<f64>,
    pub kind: InvalidKind,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSettings {
    /// Whether the addresses in this file are 0-based (protocol addresses) or 1-based
    /// (register numbers as some manuals print them). Required: manuals mix both.
    pub address_base: u8,
    /// Merge reads of one table whose gap is at most this many registers; default 10.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Never merge beyond this many registers (or coils) in one request; default 100.
    #[serde(default = "default_max_count")]
    pub max_count: u16,
    /// Default timeout for one transaction; default 1 s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Default word order for 32/64-bit values; default ABCD (big-endian).
    #[serde(default)]
    pub order: Option<WordOrder>,
}

fn default_max_gap() -> u16 {
    10
}
fn default_max_count() -> u16 {
    100
}

/// How a reply is turned into a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parse {
    /// One number (NR1/NR2/NR3), or an invalid marker.
    #[default]
    Number,
    /// A separated list of numbers (a spectrum).
    List,
    /// The reply as text, trimmed (quotes kept).
    Text,
    /// `1`/`0`/`ON`/`OFF`.
    Bool,
}

/// A named quantity. SCPI quantities have `query`; Modbus quantities have `table` and `address`.
/// A quantity that only comes from a block or a measurement has neither.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quantity {
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub description: String,
    // --- SCPI ---
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub parse: Parse,
    /// Take the N-th (0-based) field of a separated reply.
    #[serde(default)]
    pub field: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    // --- Modbus ---
    #[serde(default)]
    pub table: Option<Table>,
    #[serde(default)]
    pub address: Option<u16>,
    #[serde(default, rename = "type")]
    pub value_type: Option<ValueType>,
    #[serde(default)]
    pub order: Option<WordOrder>,
    /// For `type = "bit"`: bit 0..15 of the register.
    #[serde(default)]
    pub bit: Option<u8>,
    /// For `type = "string"`: number of registers.
    #[serde(default)]
    pub length: Option<u16>,
    // --- both ---
    /// value = raw * scale + offset
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// Whether a background poll or `labgate read` may read this quantity on its own
    /// (false for values that only exist after a measurement).
    #[serde(default)]
    pub measurement_only: bool,
}

/// One query, many quantities: `fields[i]` names the quantity in position i of the reply
/// (use "" to skip a position).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub query: String,
    pub fields: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A triggered measurement: send `start`, wait, then read `fetch`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    #[serde(default)]
    pub description: String,
    /// Commands that start the measurement.
    pub start: Vec<String>,
    pub wait: Wait,
    /// Give up waiting after this long; default 60 s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Quantities (or blocks) read once the measurement is complete.
    pub fetch: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Wait {
    /// Send this query (usually `*OPC?`) and wait for its reply `1`.
    Opc(String),
    /// Poll `query` every `interval` until its trimmed reply equals `until`.
    Poll {
        query: String,
        until: String,
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
    /// Just wait this long.
    #[serde(with = "humantime_serde")]
    Delay(Duration),
}

/// A named action with typed arguments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub description: String,
    /// SCPI: command templates; `{arg}` is replaced by the argument's value.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Modbus: register or coil writes.
    #[serde(default)]
    pub writes: Vec<ModbusWrite>,
    #[serde(default)]
    pub args: BTreeMap<String, Arg>,
    /// Pause after the action (e.g. a source settling after `*RST`).
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusWrite {
    pub table: Table,
    /// The address written; with `address_arg`, the address for argument value 1.
    /// Required (an `Option` so the loader can say why it is needed).
    #[serde(default)]
    pub address: Option<u16>,
    /// An `int` argument that picks the address: value v writes at
    /// `address + (v - 1) * address_step` (one action for "relay N" instead of one per N).
    #[serde(default)]
    pub address_arg: Option<String>,
    /// Addresses between neighbouring argument values; default 1.
    #[serde(default)]
    pub address_step: Option<u16>,
    #[serde(rename = "type", default)]
    pub value_type: Option<ValueType>,
    #[serde(default)]
    pub order: Option<WordOrder>,
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// The argument whose value is written...
    #[serde(default)]
    pub arg: Option<String>,
    /// ...or a constant.
    #[serde(default)]
    pub value: Option<f64>,
}

impl ModbusWrite {
    /// The address (in the file's address base) this write goes to when its `address_arg` is
    /// `value`; the fixed address when it has none. Wide integers, so the loader can ask about
    /// an argument's whole range without overflowing.
    pub fn address_for(&self, value: i64) -> Option<i128> {
        let address = i128::from(self.address?);
        if self.address_arg.is_none() {
            return Some(address);
        }
        let step = i128::from(self.address_step.unwrap_or(1));
        Some(address + (i128::from(value) - 1) * step)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    #[serde(rename = "type")]
    pub arg_type: ArgType,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// For `type = "enum"`.
    #[serde(default)]
    pub choices: Vec<String>,
    /// For `type = "enum"` written by a Modbus write: the number each choice writes,
    /// `values[i]` for `choices[i]`.
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// For `type = "bool"` in SCPI templates: text for true/false; default "ON"/"OFF".
    #[serde(default)]
    pub true_text: Option<String>,
    #[serde(default)]
    pub false_text: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    Float,
    Int,
    Bool,
    Enum,
}
