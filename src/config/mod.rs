//! The bench configuration: loading, validation and the resolved model.

pub mod schema;
