//! Driver files: instrument models described in TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub mod load;
pub mod schema;

pub use schema::DriverFile;

/// A parsed and validated driver file.
#[derive(Debug, Clone)]
pub struct Driver {
    /// Where it was loaded from, for messages.
    pub source: PathBuf,
    pub file: DriverFile,
}

impl Driver {
    pub fn name(&self) -> &str {
        &self.file.driver.name
    }
}

/// Drivers by `[driver] name`.
pub type DriverSet = BTreeMap<String, Arc<Driver>>;
