//! Fault injection for the simulators, so tests can prove labgate survives a bad instrument.

use std::time::Duration;

/// Misbehaviour a simulated instrument can be told to show. All off by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Answer every request this much later than normal.
    pub delay: Option<Duration>,
    /// Close the connection after this many requests on it (a flaky cable, a reset device).
    pub drop_after: Option<u64>,
    /// Read requests but never answer.
    pub silent: bool,
    /// Answer with bytes that are not a valid reply.
    pub garbage: bool,
}
