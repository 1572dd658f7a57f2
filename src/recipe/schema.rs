//! The recipe file format (see docs/recipes.md): metadata, parameters, steps and cleanup.
//!
//! These are the parsed shapes only; `recipe::load` checks names, expressions and units, and
//! checks the recipe against a station's instruments before anything runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Station roles the recipe uses (`source`, `analyzer`, ...).
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    #[default]
    Float,
    Int,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    #[serde(default, rename = "type")]
    pub param_type: ParamType,
    #[serde(default)]
    pub unit: String,
    /// Without a default, every run must give the parameter (`--param name=value`).
    #[serde(default)]
    pub default: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub description: String,
}

/// What a failed step (a limit failed, a stabilization gave up) does to the rest of the run.
/// An error (instrument fault, step timeout) always stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    #[default]
    Continue,
    Stop,
}

/// The keys every step has besides its kind's own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub on_fail: OnFail,
    /// The whole step, instrument time included; exceeding it is an error.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Run the step again after an error (instrument fault, timeout), up to this many times.
    #[serde(default)]
    pub retries: u32,
    /// Pause before each retry (and between a group's tries).
    #[serde(default, with = "humantime_serde")]
    pub retry_delay: Option<Duration>,
}

/// A number, or an expression over parameters and earlier values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum NumOrExpr {
    Num(f64),
    Expr(String),
}

/// A duration: `"15min"`, a number of seconds, or an expression over parameters in a time unit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DurSpec {
    Secs(f64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    #[default]
    Mean,
    Min,
    Max,
    Last,
    Stddev,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    #[serde(default)]
    pub min: Option<NumOrExpr>,
    #[serde(default)]
    pub max: Option<NumOrExpr>,
    #[serde(default)]
    pub nominal: Option<NumOrExpr>,
    /// Absolute, in the limit's unit.
    #[serde(default)]
    pub tolerance: Option<f64>,
    #[serde(default)]
    pub tolerance_pct: Option<f64>,
    #[serde(default)]
    pub tolerance_ppm: Option<f64>,
    /// A band inside the limits where the verdict is marginal: absolute, in the limit's unit...
    #[serde(default)]
    pub marginal: Option<f64>,
    /// ...or in % of the span between the limits.
    #[serde(default)]
    pub marginal_pct: Option<f64>,
    /// The unit the numbers are written in; default: the compared value's unit.
    #[serde(default)]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Act {
    pub role: String,
    pub action: String,
    /// Typed as the driver's arguments; a string for a numeric argument is an expression.
    #[serde(default)]
    pub args: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    pub role: String,
    pub quantities: Vec<String>,
    /// A triggered measurement of the driver (`spectrum`); each sample runs it once.
    #[serde(default)]
    pub measurement: Option<String>,
    #[serde(default = "one")]
    pub samples: u32,
    #[serde(default)]
    pub interval: Option<DurSpec>,
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Limits by quantity name.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitSpec>,
}

fn one() -> u32 {
    1
}

fn three() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub duration: DurSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stabilize {
    pub role: String,
    pub quantities: Vec<String>,
    /// A triggered measurement run for every reading (a sphere's flux exists only after one).
    #[serde(default)]
    pub measurement: Option<String>,
    pub interval: DurSpec,
    /// The last this many readings of every quantity must lie within the band.
    #[serde(default = "three")]
    pub readings: usize,
    /// Band as % of the readings' mean (max - min <= within_pct/100 * |mean|)...
    #[serde(default)]
    pub within_pct: Option<f64>,
    /// ...or absolute, in the quantity's unit.
    #[serde(default)]
    pub within: Option<f64>,
    /// Give up (the step fails) when not stable after this long.
    pub max_duration: DurSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// The name the value is stored and referred to by.
    pub output: String,
    pub expr: String,
    /// The value's unit: the expression's inferred unit must convert to it, and is converted.
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub limit: Option<LimitSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub expr: String,
    #[serde(default)]
    pub unit: String,
    pub limit: LimitSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepHead {
    /// The variable that holds the current value inside the nested steps.
    pub var: String,
    #[serde(default)]
    pub unit: String,
    /// The values, in order...
    #[serde(default)]
    pub values: Vec<f64>,
    /// ...or a range, both ends included: `{ from = 25, to = 125, step = 25 }`.
    #[serde(default)]
    pub range: Option<SweepRange>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRange {
    pub from: f64,
    pub to: f64,
    pub step: f64,
}

/// Most values a range may expand to: more is a typo, not a test.
pub const MAX_SWEEP_VALUES: usize = 10_000;

impl SweepRange {
    /// The values from `from` to `to` (included, within rounding) by `step`; `None` if the step
    /// is zero, points away from `to`, or makes too many values.
    pub fn values(&self) -> Option<Vec<f64>> {
        let span = self.to - self.from;
        if !(self.step.is_finite() && span.is_finite()) || self.step == 0.0 {
            return None;
        }
        let n = span / self.step;
        if n < -1e-9 || n > MAX_SWEEP_VALUES as f64 {
            return None;
        }
        let count = (n + 1e-9).floor() as usize + 1;
        Some(
            (0..count)
                .map(|i| self.from + self.step * i as f64)
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitUntil {
    pub role: String,
    /// Read at every `interval` and in scope of `condition` under their names.
    pub quantities: Vec<String>,
    /// True (non-zero) when the wait is over, e.g. `math::abs(temperature - setpoint) <= 0.5`.
    pub condition: String,
    pub interval: DurSpec,
    /// The condition must hold this long without a break.
    #[serde(default)]
    pub hold: Option<DurSpec>,
    /// Give up (the step fails) after this long.
    pub max_duration: DurSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupHead {
    /// Run the nested steps up to this many times until none of them fails.
    #[serde(default = "one")]
    pub tries: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// What the operator is asked ("insert lamp 2"); the run pauses until answered.
    pub prompt: String,
}
