//! The SCPI engine: line framing, queries, numeric parsing and the error queue.
//!
//! - [`session`]: [`session::ScpiConn`] frames commands and replies over any byte stream and bounds
//!   reply size; it has no timeouts (the link actor owns those).
//! - [`parse`]: pure functions from reply text to [`crate::reading::Value`]s, error-queue entries
//!   and identity checks.

pub mod parse;
pub mod session;
