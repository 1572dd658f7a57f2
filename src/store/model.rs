//! What the results store keeps: runs, steps, measurements and events, as the recipe engine,
//! the CLI and the HTTP API see them.
//!
//! Times are UTC [`SystemTime`]s here and serialize as RFC 3339 text; the database keeps them as
//! integer microseconds since the Unix epoch so range filters compare integers.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A run's id; ids grow with creation order.
    RunId
);
id_type!(
    /// A step's id, unique across runs.
    StepId
);
id_type!(
    /// A measurement's id, unique across runs.
    MeasurementId
);

/// Implements the text form used in the database, CSV and filters, so the three cannot drift.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: stringify!($name), name: s.to_string() }),
                }
            }
        }
    };
}

/// A text that names no variant of an enum (from a database row, a CLI flag or a query string).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunVerdict {
    /// Every measurement within limits (marginal counts as pass).
    Pass,
    /// At least one measurement out of limits.
    Fail,
    /// The run could not be completed (instrument error, bad recipe).
    Error,
    /// An operator or the daemon stopped the run.
    Aborted,
    /// The process died while the run was going; set by [`crate::store::Store::mark_interrupted`].
    Interrupted,
}
text_enum!(RunVerdict {
    Pass => "pass",
    Fail => "fail",
    Error => "error",
    Aborted => "aborted",
    Interrupted => "interrupted",
});

/// Whether a run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Finished,
}
text_enum!(RunState {
    Running => "running",
    Finished => "finished",
});

/// A measurement's verdict against its limits; a measurement without limits has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Within the limits but outside the marginal band.
    Marginal,
    Fail,
}
text_enum!(Verdict {
    Pass => "pass",
    Marginal => "marginal",
    Fail => "fail",
});

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pass,
    Fail,
    Error,
    Skipped,
    Aborted,
    Interrupted,
}
text_enum!(StepStatus {
    Pass => "pass",
    Fail => "fail",
    Error => "error",
    Skipped => "skipped",
    Aborted => "aborted",
    Interrupted => "interrupted",
});

/// Limits already resolved to numbers in the measurement's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub nominal: Option<f64>,
    pub marginal_min: Option<f64>,
    pub marginal_max: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.min.is_none()
            && self.max.is_none()
            && self.nominal.is_none()
            && self.marginal_min.is_none()
            && self.marginal_max.is_none()
    }
}

/// What the recipe engine knows when a run starts; the store adds the id and start time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    pub recipe_name: String,
    pub recipe_version: String,
    /// Hash of the recipe file's content, so a result can be tied to the exact recipe text.
    pub recipe_hash: String,
    pub dut_serial: String,
    pub station: String,
    pub operator: String,
    /// The run's resolved parameters, kept verbatim.
    pub parameters: serde_json::Value,
}

/// One measurement as taken. Exactly one of `value` and `invalid` is set: an instrument's
/// "no data" / "overrange" marker is kept as a marker, never as a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMeasurement {
    pub step_id: StepId,
    pub name: String,
    pub value: Option<f64>,
    /// The instrument's marker kind (e.g. `overrange`) when there is no valid value.
    pub invalid: Option<String>,
    pub unit: String,
    pub limits: Limits,
    pub verdict: Option<Verdict>,
    #[serde(with = "humantime_serde")]
    pub taken_at: SystemTime,
    /// The instrument's reply as received, for audits.
    pub raw: Option<String>,
}

/// A stored measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub id: MeasurementId,
    pub run_id: RunId,
    pub step_id: StepId,
    pub name: String,
    pub value: Option<f64>,
    pub invalid: Option<String>,
    pub unit: String,
    pub limits: Limits,
    pub verdict: Option<Verdict>,
    #[serde(with = "humantime_serde")]
    pub taken_at: SystemTime,
    pub raw: Option<String>,
}

/// A stored step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub run_id: RunId,
    /// Position in the recipe, as the engine numbered it.
    pub index: i64,
    pub name: String,
    /// The recipe engine's step kind name.
    pub kind: String,
    /// None while the step runs.
    pub status: Option<StepStatus>,
    pub message: Option<String>,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub ended_at: Option<SystemTime>,
}

/// One line of a run's event stream. `seq` starts at 1 for each run and grows by one, so a
/// client that saw `seq` n resumes with [`crate::store::Store::events_since`]`(run, n)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub run_id: RunId,
    pub seq: i64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub kind: String,
    pub payload: serde_json::Value,
}

/// Event kinds the store itself writes; the recipe engine adds its own kinds.
pub mod event_kind {
    /// Written by `create_run`, payload: recipe, DUT serial, station, operator.
    pub const RUN_STARTED: &str = "run_started";
    /// Written by `finish_run`, payload: `{"verdict": ...}`.
    pub const RUN_FINISHED: &str = "run_finished";
    /// Written by `mark_interrupted` for a run a crash left running.
    pub const RUN_INTERRUPTED: &str = "run_interrupted";
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: RunId,
    pub recipe_name: String,
    pub recipe_version: String,
    pub recipe_hash: String,
    pub dut_serial: String,
    pub station: String,
    pub operator: String,
    pub state: RunState,
    /// None while running.
    pub verdict: Option<RunVerdict>,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub ended_at: Option<SystemTime>,
}

/// A run with everything measured in it, steps and measurements in the order they were taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunSummary,
    pub parameters: serde_json::Value,
    pub steps: Vec<Step>,
    pub measurements: Vec<Measurement>,
}

/// Filters for [`crate::store::Store::list_runs`]; all set filters must match. Runs come newest
/// first (by start time, then id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub dut: Option<String>,
    pub recipe: Option<String>,
    pub station: Option<String>,
    pub verdict: Option<RunVerdict>,
    /// Runs started at or after this time.
    pub from: Option<SystemTime>,
    /// Runs started before this time (exclusive, so consecutive windows do not overlap).
    pub to: Option<SystemTime>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size; 0 means the default, larger than the maximum is clamped.
    pub limit: usize,
}

/// Filters for [`crate::store::Store::measurements`]; newest first (by time taken, then id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasurementFilter {
    pub name: Option<String>,
    pub dut: Option<String>,
    pub recipe: Option<String>,
    /// Taken at or after this time.
    pub from: Option<SystemTime>,
    /// Taken before this time (exclusive).
    pub to: Option<SystemTime>,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// A measurement with the run columns a trend query needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementRow {
    pub measurement: Measurement,
    pub dut_serial: String,
    pub recipe_name: String,
    pub station: String,
}

/// One page of a listing; pass `next_cursor` back in the filter for the next page (None: no more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}
