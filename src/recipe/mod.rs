//! Test recipes: TOML sequences of steps with limits and verdicts (see docs/recipes.md).
//!
//! - [`schema`]: the file format; [`load`]: parsing and validation against a station, with
//!   every problem reported at once with file:line:col.
//! - [`expr`]: expressions over parameters and measured values, evaluated with units;
//!   [`units`]: units with dimensions (conversion, and what `*` and `/` make of them);
//!   [`limits`]: limits and verdicts.
//! - [`engine`]: runs a validated recipe on instruments and files results in the store;
//!   [`locks`]: an instrument belongs to one run at a time.

pub mod engine;
pub mod expr;
pub mod limits;
pub mod load;
pub mod locks;
pub mod schema;
pub mod units;

pub use engine::{
    ConfirmRequest, EngineError, Hooks, Progress, RunOutcome, RunSpec, run, run_with,
};
pub use load::{
    Recipe, StationView, check_dir, check_file, load_and_validate, load_file, parse, validate,
};
