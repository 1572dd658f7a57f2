//! The SCPI engine: line framing, queries, numeric parsing and the error queue.

pub mod parse;
pub mod session;
