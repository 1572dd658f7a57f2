//! What an instrument reading is once it has left the wire.
//!
//! An instrument's "no data" or "overrange" marker is never a number: it becomes
//! [`Value::Invalid`] so that no limit check, average or gauge can mistake 9.91E+37 for a reading.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Why an instrument said it has no valid value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidKind {
    /// No data yet (e.g. `NAN`, 9.91E+37, Chroma's -1 "integration not finished").
    NoData,
    /// Over range or over current (e.g. `INF`, 9.9E+37, Chroma's -3).
    Overrange,
    /// The range changed while integrating (Chroma's -2).
    RangeChanged,
    /// An open or unreferenced thermocouple (34970A's 9.9E+37 on a TC channel).
    OpenSensor,
    /// Any other marker a driver declares.
    Invalid,
}

impl std::fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidKind::NoData => "no data",
            InvalidKind::Overrange => "overrange",
            InvalidKind::RangeChanged => "range changed",
            InvalidKind::OpenSensor => "open sensor",
            InvalidKind::Invalid => "invalid",
        })
    }
}

/// The value part of a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    Number(f64),
    /// The instrument's own marker for "no valid reading"; `raw` is what it sent.
    Invalid {
        kind: InvalidKind,
        raw: String,
    },
    Bool(bool),
    Text(String),
    /// A numeric list such as a spectrum; elements may be NaN where the instrument marked them invalid.
    List(Vec<f64>),
}

impl Value {
    /// The number, if this is a valid scalar reading.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(v) => Some(*v),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, Value::Invalid { .. })
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(v) => write!(f, "{v}"),
            Value::Invalid { kind, raw } => write!(f, "<{kind}: {raw}>"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Text(t) => write!(f, "{t:?}"),
            Value::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// One quantity read from one instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub quantity: String,
    pub value: Value,
    /// Unit as the driver declares it (`V`, `A`, `W`, `lm`, `K`, `degC`, `%`); empty when unitless.
    pub unit: String,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The instrument's reply this value came from, for the record.
    pub raw: Option<String>,
}
