//! Built-in simulated instruments served on loopback (and on pseudo-terminals).

pub mod ac_source;
pub mod bench;
pub mod fault;
pub mod hislip;
pub mod logger;
pub mod modbus;
pub mod plant;
pub mod power_analyzer;
pub mod prologix;
pub mod pty;
pub mod scpi_server;
pub mod sphere;
pub mod vxi11;
