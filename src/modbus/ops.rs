//! One Modbus transaction on a tokio-modbus client context, with its errors sorted into
//! "the device said no" (the link stays up) and "the link is broken" (drop and reconnect).
//!
//! There are no timeouts here on purpose: the link actor wraps every call in
//! `tokio::time::timeout` and drops the connection when one fires, because a late reply
//! would otherwise be taken for the answer to the next request.

use std::borrow::Cow;
use std::fmt;

use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, Slave, SlaveContext};

use crate::modbus::exception;
use crate::modbus::value::Table;

/// Protocol limits per request (Modbus application protocol v1.1b3, section 6).
const MAX_READ_BITS: u16 = 2000;
const MAX_READ_WORDS: u16 = 125;
const MAX_WRITE_BITS: usize = 1968;
const MAX_WRITE_WORDS: usize = 123;

/// One request. Addresses are 0-based protocol addresses; the driver layer converts 1-based
/// register numbers before building one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusOp {
    Read {
        table: Table,
        address: u16,
        count: u16,
    },
    WriteCoil {
        address: u16,
        value: bool,
    },
    WriteCoils {
        address: u16,
        values: Vec<bool>,
    },
    /// Function 6. Some devices only accept function 16; use `WriteRegisters` with one value for them.
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteRegisters {
        address: u16,
        values: Vec<u16>,
    },
    /// Function 22: register = (register AND and_mask) OR (or_mask AND NOT and_mask).
    MaskWrite {
        address: u16,
        and_mask: u16,
        or_mask: u16,
    },
}

impl ModbusOp {
    /// The write for `words` at `address` of `table`: a single-item write for one word or bit,
    /// a multiple write otherwise. Coils take each word as 0 = off, anything else = on.
    pub fn write(table: Table, address: u16, words: &[u16]) -> Result<ModbusOp, ModbusError> {
        match (table, words) {
            (Table::Input | Table::DiscreteInput, _) => Err(ModbusError::ReadOnlyTable(table)),
            (_, []) => Err(ModbusError::BadRequest(format!(
                "nothing to write to {table} {address}"
            ))),
            (Table::Coil, [w]) => Ok(ModbusOp::WriteCoil {
                address,
                value: *w != 0,
            }),
            (Table::Coil, ws) => Ok(ModbusOp::WriteCoils {
                address,
                values: ws.iter().map(|w| *w != 0).collect(),
            }),
            (Table::Holding, [w]) => Ok(ModbusOp::WriteRegister { address, value: *w }),
            (Table::Holding, ws) => Ok(ModbusOp::WriteRegisters {
                address,
                values: ws.to_vec(),
            }),
        }
    }

    /// Refuses what no device would accept, before it goes on the wire.
    fn check(&self) -> Result<(), ModbusError> {
        let (count, max) = match self {
            ModbusOp::Read { table, count, .. } if table.is_bits() => {
                (usize::from(*count), usize::from(MAX_READ_BITS))
            }
            ModbusOp::Read { count, .. } => (usize::from(*count), usize::from(MAX_READ_WORDS)),
            ModbusOp::WriteCoils { values, .. } => (values.len(), MAX_WRITE_BITS),
            ModbusOp::WriteRegisters { values, .. } => (values.len(), MAX_WRITE_WORDS),
            _ => return Ok(()),
        };
        if count == 0 || count > max {
            return Err(ModbusError::BadRequest(format!(
                "{self}: count must be 1..={max}"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for ModbusOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModbusOp::Read {
                table,
                address,
                count,
            } => write!(f, "read {table} {address}+{count}"),
            ModbusOp::WriteCoil { address, value } => {
                write!(
                    f,
                    "write coil {address} {}",
                    if *value { "on" } else { "off" }
                )
            }
            ModbusOp::WriteCoils { address, values } => {
                write!(f, "write coils {address}+{}", values.len())
            }
            ModbusOp::WriteRegister { address, value } => {
                write!(f, "write holding {address} = {value}")
            }
            ModbusOp::WriteRegisters { address, values } => {
                write!(f, "write holding {address}+{}", values.len())
            }
            ModbusOp::MaskWrite {
                address,
                and_mask,
                or_mask,
            } => write!(
                f,
                "mask write holding {address} and 0x{and_mask:04x} or 0x{or_mask:04x}"
            ),
        }
    }
}

/// What a successful transaction returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusReply {
    /// Holding or input registers, exactly `count` of them.
    Words(Vec<u16>),
    /// Coils or discrete inputs, exactly `count` of them.
    Bits(Vec<bool>),
    Written,
}

#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The device answered with an exception: it is alive and said no.
    #[error("device refused: {} (exception 0x{code:02x})", exception::describe(*code))]
    Exception { code: u8, name: &'static str },
    /// The connection failed (closed, reset, i/o error).
    #[error("modbus transport failed: {0}")]
    Transport(#[source] std::io::Error),
    /// A reply that does not belong to the request (another transaction id or unit, another
    /// function, a wrong length): the stream may be out of step.
    #[error("modbus reply does not match the request: {0}")]
    Mismatch(String),
    /// A write aimed at input registers or discrete inputs.
    #[error("{0} table is read-only")]
    ReadOnlyTable(Table),
    /// A request no device would accept (count 0 or above the protocol limit); nothing was sent.
    #[error("invalid modbus request: {0}")]
    BadRequest(String),
}

impl ModbusError {
    /// True when the link must be dropped and reconnected: after a transport failure or a
    /// mismatched reply the byte stream can no longer be trusted.
    pub fn is_link_fault(&self) -> bool {
        matches!(self, ModbusError::Transport(_) | ModbusError::Mismatch(_))
    }

    fn exception(code: tokio_modbus::ExceptionCode) -> Self {
        let code = exception::code_of(code);
        ModbusError::Exception {
            code,
            name: exception::name(code),
        }
    }
}

/// Runs one transaction for unit `unit` and checks that the reply fits the request.
pub async fn execute(
    ctx: &mut Context,
    unit: u8,
    op: &ModbusOp,
) -> Result<ModbusReply, ModbusError> {
    op.check()?;
    ctx.set_slave(Slave(unit));
    let request = match op {
        ModbusOp::Read {
            table,
            address,
            count,
        } => match table {
            Table::Coil => Request::ReadCoils(*address, *count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(*address, *count),
            Table::Holding => Request::ReadHoldingRegisters(*address, *count),
            Table::Input => Request::ReadInputRegisters(*address, *count),
        },
        ModbusOp::WriteCoil { address, value } => Request::WriteSingleCoil(*address, *value),
        ModbusOp::WriteCoils { address, values } => {
            Request::WriteMultipleCoils(*address, Cow::Borrowed(values))
        }
        ModbusOp::WriteRegister { address, value } => {
            Request::WriteSingleRegister(*address, *value)
        }
        ModbusOp::WriteRegisters { address, values } => {
            Request::WriteMultipleRegisters(*address, Cow::Borrowed(values))
        }
        ModbusOp::MaskWrite {
            address,
            and_mask,
            or_mask,
        } => Request::MaskWriteRegister(*address, *and_mask, *or_mask),
    };
    // Client::call rather than the Reader helpers: those assert on the reply length
    // (a panic in debug builds), and a bad device must not be able to panic us.
    let response = match ctx.call(request).await {
        Ok(Ok(r)) => r,
        Ok(Err(code)) => return Err(ModbusError::exception(code)),
        Err(tokio_modbus::Error::Transport(e)) => return Err(ModbusError::Transport(e)),
        Err(tokio_modbus::Error::Protocol(e)) => return Err(ModbusError::Mismatch(e.to_string())),
    };
    check_reply(op, response)
}

fn check_reply(op: &ModbusOp, response: Response) -> Result<ModbusReply, ModbusError> {
    let mismatch = |what: String| Err(ModbusError::Mismatch(format!("{op}: {what}")));
    match (op, response) {
        (
            ModbusOp::Read { table, count, .. },
            Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits),
        ) if table.is_bits() => {
            // Bits arrive in whole bytes, so a reply may carry up to 7 padding bits.
            let count = usize::from(*count);
            if bits.len() < count || bits.len() >= count + 8 {
                return mismatch(format!("{} bits for {count}", bits.len()));
            }
            bits.truncate(count);
            Ok(ModbusReply::Bits(bits))
        }
        (
            ModbusOp::Read { table, count, .. },
            Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words),
        ) if !table.is_bits() => {
            if words.len() != usize::from(*count) {
                return mismatch(format!("{} registers for {count}", words.len()));
            }
            Ok(ModbusReply::Words(words))
        }
        (ModbusOp::WriteCoil { address, value }, Response::WriteSingleCoil(a, v)) => {
            if (a, v) != (*address, *value) {
                return mismatch(format!("echo {a} {v}"));
            }
            Ok(ModbusReply::Written)
        }
        (ModbusOp::WriteRegister { address, value }, Response::WriteSingleRegister(a, v)) => {
            if (a, v) != (*address, *value) {
                return mismatch(format!("echo {a} = {v}"));
            }
            Ok(ModbusReply::Written)
        }
        (ModbusOp::WriteCoils { address, values }, Response::WriteMultipleCoils(a, n))
            if (a, usize::from(n)) == (*address, values.len()) =>
        {
            Ok(ModbusReply::Written)
        }
        (ModbusOp::WriteRegisters { address, values }, Response::WriteMultipleRegisters(a, n))
            if (a, usize::from(n)) == (*address, values.len()) =>
        {
            Ok(ModbusReply::Written)
        }
        (
            ModbusOp::MaskWrite {
                address,
                and_mask,
                or_mask,
            },
            Response::MaskWriteRegister(a, am, om),
        ) if (a, am, om) == (*address, *and_mask, *or_mask) => Ok(ModbusReply::Written),
        (_, other) => mismatch(format!("unexpected reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_read_well_in_errors() {
        let op = ModbusOp::Read {
            table: Table::Holding,
            address: 2820,
            count: 2,
        };
        assert_eq!(op.to_string(), "read holding 2820+2");
        let op = ModbusOp::write(Table::Coil, 3, &[1]).map(|o| o.to_string());
        assert_eq!(op.ok().as_deref(), Some("write coil 3 on"));
        assert!(matches!(
            ModbusOp::write(Table::Input, 3, &[1]),
            Err(ModbusError::ReadOnlyTable(Table::Input))
        ));
    }

    #[test]
    fn error_messages_and_link_faults() {
        let e = ModbusError::Exception {
            code: 2,
            name: exception::name(2),
        };
        assert_eq!(
            e.to_string(),
            "device refused: illegal data address (exception 0x02)"
        );
        assert!(!e.is_link_fault());
        assert!(ModbusError::Mismatch("x".into()).is_link_fault());
        assert!(!ModbusError::ReadOnlyTable(Table::DiscreteInput).is_link_fault());
    }

    #[test]
    fn replies_of_the_wrong_length_are_mismatches() {
        let op = ModbusOp::Read {
            table: Table::Holding,
            address: 1,
            count: 2,
        };
        let r = check_reply(&op, Response::ReadHoldingRegisters(vec![1]));
        assert!(matches!(r, Err(ModbusError::Mismatch(_))));
        let op = ModbusOp::Read {
            table: Table::Coil,
            address: 0,
            count: 3,
        };
        let r = check_reply(&op, Response::ReadCoils(vec![true; 8]));
        assert_eq!(r.ok(), Some(ModbusReply::Bits(vec![true; 3])));
    }
}
