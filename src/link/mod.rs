//! TODO
pub mod backoff;
