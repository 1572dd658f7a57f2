//! Modbus exception codes as words a person reads in an error message.
//!
//! An exception means the device understood the request and refused it: the link is fine.

use tokio_modbus::ExceptionCode;

/// The specification's name for a known exception code, lowercase; `None` for other codes.
pub fn known_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => return None,
    })
}

/// The name of a code; "unknown exception" for codes the specification does not define.
pub fn name(code: u8) -> &'static str {
    known_name(code).unwrap_or("unknown exception")
}

/// The name of a code, or `exception 0x0c` for codes the specification does not define.
pub fn describe(code: u8) -> String {
    match known_name(code) {
        Some(n) => n.to_string(),
        None => format!("exception 0x{code:02x}"),
    }
}

/// The raw code of a tokio-modbus exception.
pub fn code_of(exception: ExceptionCode) -> u8 {
    exception.into()
}

/// The name of a tokio-modbus exception (see [`name`]).
pub fn name_of(exception: ExceptionCode) -> &'static str {
    name(code_of(exception))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_raw_and_typed_codes() {
        assert_eq!(describe(2), "illegal data address");
        assert_eq!(describe(0x0B), "gateway target device failed to respond");
        assert_eq!(describe(0x0C), "exception 0x0c");
        assert_eq!(name(0x07), "unknown exception");
        assert_eq!(
            name_of(ExceptionCode::ServerDeviceBusy),
            "server device busy"
        );
        assert_eq!(code_of(ExceptionCode::GatewayPathUnavailable), 0x0A);
        assert_eq!(name_of(ExceptionCode::Custom(0x42)), "unknown exception");
        for code in [1u8, 2, 3, 4, 5, 6, 8, 0x0A, 0x0B] {
            assert_eq!(name_of(ExceptionCode::new(code)), name(code));
            assert!(known_name(code).is_some());
        }
    }
}
