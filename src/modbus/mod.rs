//! The Modbus engine: value codecs, read planning and exceptions on top of tokio-modbus.

pub mod exception;
pub mod ops;
pub mod plan;
pub mod value;
