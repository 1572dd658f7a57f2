//! Modbus value types, word orders, scale and offset: registers <-> numbers.

use serde::{Deserialize, Serialize};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coil,
    DiscreteInput,
    Holding,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// A coil or discrete input, or a register that is 0 / non-zero.
    Bool,
    /// One bit of a register (`bit = 0..15`).
    Bit,
    /// ASCII, two characters per register, high byte first; `length` registers.
    String,
}

/// Byte order of multi-register values, named by where bytes A (most significant) .. D land.
/// ABCD is big-endian (the Modbus default); CDAB swaps words (Watlow F4T floats);
/// BADC swaps bytes in each word; DCBA is little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum WordOrder {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}
