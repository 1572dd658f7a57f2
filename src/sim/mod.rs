//! Built-in simulated instruments served on loopback (and on pseudo-terminals).

pub mod fault;
pub mod modbus;
