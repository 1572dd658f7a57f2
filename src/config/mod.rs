//! The bench configuration: loading, validation and the resolved model.

pub mod load;
pub mod schema;

pub use load::{Bench, DEMO_CONFIG, InstrumentDef, ResolvedPaths, demo, load, load_with_drivers};
