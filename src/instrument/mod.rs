//! TODO
pub mod args;
