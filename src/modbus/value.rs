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

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete input",
            Table::Holding => "holding",
            Table::Input => "input",
        })
    }
}

impl Table {
    /// Coils and discrete inputs carry bits; the other two carry 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Only coils and holding registers can be written.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
            ValueType::Bool => "bool",
            ValueType::Bit => "bit",
            ValueType::String => "string",
        })
    }
}

impl std::fmt::Display for WordOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WordOrder::ABCD => "ABCD",
            WordOrder::CDAB => "CDAB",
            WordOrder::BADC => "BADC",
            WordOrder::DCBA => "DCBA",
        })
    }
}

impl ValueType {
    /// How many 16-bit registers (or bits, for coil tables) one value occupies.
    ///
    /// `length` only matters for strings; a string without a length is taken as one register
    /// (the driver loader is expected to insist on a length).
    pub fn registers(self, length: Option<u16>) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bool | ValueType::Bit => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
            ValueType::String => length.unwrap_or(1).max(1),
        }
    }

    /// Whether the word order applies (16-bit values are always big-endian, as the Modbus
    /// specification sends every register high byte first).
    fn is_wide(self) -> bool {
        self.registers(None) > 1 && self != ValueType::String
    }
}

/// A decoded value, before scale and offset.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoded::Number(v) => write!(f, "{v}"),
            Decoded::Bool(b) => write!(f, "{b}"),
            Decoded::Text(t) => write!(f, "{t:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{ty} needs {need} register(s), got {got}")]
    TooFewRegisters {
        ty: ValueType,
        need: u16,
        got: usize,
    },
    #[error("{value} does not fit in {ty}")]
    OutOfRange { ty: ValueType, value: f64 },
    #[error("{value} is not a finite number and cannot be written as {ty}")]
    NotFinite { ty: ValueType, value: f64 },
    #[error("{ty} value is not ascii: byte 0x{byte:02x} at position {position}")]
    NotAscii {
        ty: ValueType,
        byte: u8,
        position: usize,
    },
    #[error("text of {chars} characters does not fit in {registers} register(s)")]
    TextTooLong { chars: usize, registers: u16 },
    #[error("cannot write {value} as {ty}")]
    WrongKind { ty: ValueType, value: Decoded },
    #[error("bit type needs a bit number 0..15, got {0:?}")]
    BadBit(Option<u8>),
    #[error("a single bit is written with a mask write (see bit_mask), not as a register value")]
    BitNeedsMask,
}

/// Puts big-endian bytes into registers in the given order.
///
/// For 32-bit values with bytes A B C D (A most significant):
/// - ABCD: registers `[AB, CD]` (big-endian, the Modbus default)
/// - CDAB: registers `[CD, AB]` (low word first, Watlow F4T)
/// - BADC: registers `[BA, DC]` (bytes swapped within each word)
/// - DCBA: registers `[DC, BA]` (fully little-endian)
///
/// For 64-bit values with bytes A B C D E F G H the same two rules apply to all four words:
/// - ABCD: `[AB, CD, EF, GH]`
/// - CDAB: `[GH, EF, CD, AB]` (all four words in reverse order, bytes within a word unchanged)
/// - BADC: `[BA, DC, FE, HG]` (word order kept, bytes swapped within each word)
/// - DCBA: `[HG, FE, DC, BA]` (fully little-endian)
///
/// So "CD first" always means "least significant word first", whatever the width.
fn bytes_to_regs(be: &[u8], order: WordOrder) -> Vec<u16> {
    let swap_bytes = matches!(order, WordOrder::BADC | WordOrder::DCBA);
    let swap_words = matches!(order, WordOrder::CDAB | WordOrder::DCBA);
    let mut regs: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
            if swap_bytes { w.swap_bytes() } else { w }
        })
        .collect();
    if swap_words {
        regs.reverse();
    }
    regs
}

/// The inverse of [`bytes_to_regs`]: registers in `order` back to big-endian bytes.
fn regs_to_bytes(regs: &[u16], order: WordOrder) -> Vec<u8> {
    let mut out = vec![0u8; regs.len() * 2];
    reorder_into(regs, order, &mut out);
    out
}

/// Writes the registers' bytes, most significant first, in `order`, into `out` (exactly two
/// bytes per register). Decoding a polled number runs this; it allocates nothing.
fn reorder_into(regs: &[u16], order: WordOrder, out: &mut [u8]) {
    let swap_bytes = matches!(order, WordOrder::BADC | WordOrder::DCBA);
    let swap_words = matches!(order, WordOrder::CDAB | WordOrder::DCBA);
    let n = regs.len();
    for (i, &w) in regs.iter().enumerate() {
        let w = if swap_bytes { w.swap_bytes() } else { w };
        let at = 2 * if swap_words { n - 1 - i } else { i };
        out[at..at + 2].copy_from_slice(&w.to_be_bytes());
    }
}

/// Decodes one value from the registers read for it. Registers beyond the type's width are
/// ignored, except for strings, which take every register given (pass exactly `length`).
///
/// Coils and discrete inputs are passed as registers holding 0 or 1 with `ty = Bool`.
/// `order` applies to 32- and 64-bit types only. u64 and i64 become f64, which is exact
/// only up to 2^53 (9007199254740992); larger counters lose their low bits.
pub fn decode(
    regs: &[u16],
    ty: ValueType,
    order: WordOrder,
    bit: Option<u8>,
) -> Result<Decoded, ValueError> {
    let need = if ty == ValueType::String {
        regs.len().max(1) as u16
    } else {
        ty.registers(None)
    };
    if regs.len() < need as usize {
        return Err(ValueError::TooFewRegisters {
            ty,
            need,
            got: regs.len(),
        });
    }
    let regs = &regs[..need as usize];
    if ty == ValueType::String {
        return decode_text(regs);
    }
    // Every other type is at most four registers wide.
    let mut buf = [0u8; 8];
    let bytes = &mut buf[..regs.len() * 2];
    reorder_into(
        regs,
        if ty.is_wide() { order } else { WordOrder::ABCD },
        bytes,
    );
    let bytes = &*bytes;
    let number = |v: f64| Ok(Decoded::Number(v));
    match ty {
        ValueType::U16 => number(f64::from(regs[0])),
        ValueType::I16 => number(f64::from(regs[0] as i16)),
        ValueType::U32 => number(f64::from(u32::from_be_bytes(arr(bytes)))),
        ValueType::I32 => number(f64::from(i32::from_be_bytes(arr(bytes)))),
        ValueType::F32 => number(widen_f32(f32::from_be_bytes(arr(bytes)))),
        ValueType::U64 => number(u64::from_be_bytes(arr(bytes)) as f64),
        ValueType::I64 => number(i64::from_be_bytes(arr(bytes)) as f64),
        ValueType::F64 => number(f64::from_be_bytes(arr(bytes))),
        ValueType::Bool => Ok(Decoded::Bool(regs[0] != 0)),
        ValueType::Bit => match bit {
            Some(b) if b < 16 => Ok(Decoded::Bool(regs[0] & (1 << b) != 0)),
            other => Err(ValueError::BadBit(other)),
        },
        ValueType::String => decode_text(regs),
    }
}

/// An ASCII string, two characters per register, high byte first; trailing NULs and spaces
/// are padding.
fn decode_text(regs: &[u16]) -> Result<Decoded, ValueError> {
    let bytes = regs_to_bytes(regs, WordOrder::ABCD);
    if let Some((position, &byte)) = bytes.iter().enumerate().find(|(_, b)| !b.is_ascii()) {
        return Err(ValueError::NotAscii {
            ty: ValueType::String,
            byte,
            position,
        });
    }
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    // Checked ASCII above, so this cannot fail; map anyway rather than unwrap.
    Ok(Decoded::Text(
        String::from_utf8_lossy(&bytes[..end]).into_owned(),
    ))
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// Encodes one value into registers for a write.
///
/// Numbers are rounded to the nearest integer for integer types and range-checked;
/// NaN or infinity is refused for integer types (f32/f64 carry them as they are, but a
/// finite f64 beyond the f32 range is refused). Strings are ASCII, two characters per register,
/// high byte first, padded with NUL to `length` registers (or to their own length).
/// `Bit` is refused: one bit is written with a mask write, see [`bit_mask`].
pub fn encode(
    value: &Decoded,
    ty: ValueType,
    order: WordOrder,
    length: Option<u16>,
) -> Result<Vec<u16>, ValueError> {
    let wrong = || ValueError::WrongKind {
        ty,
        value: value.clone(),
    };
    let order = if ty.is_wide() { order } else { WordOrder::ABCD };
    match ty {
        ValueType::Bit => Err(ValueError::BitNeedsMask),
        ValueType::Bool => match value {
            Decoded::Bool(b) => Ok(vec![u16::from(*b)]),
            Decoded::Number(v) if *v == 0.0 || *v == 1.0 => Ok(vec![*v as u16]),
            Decoded::Number(v) => Err(ValueError::OutOfRange { ty, value: *v }),
            Decoded::Text(_) => Err(wrong()),
        },
        ValueType::String => {
            let Decoded::Text(text) = value else {
                return Err(wrong());
            };
            if let Some((position, &byte)) = text
                .as_bytes()
                .iter()
                .enumerate()
                .find(|(_, b)| !b.is_ascii())
            {
                return Err(ValueError::NotAscii { ty, byte, position });
            }
            let registers = length.unwrap_or(text.len().div_ceil(2).max(1) as u16);
            if text.len() > registers as usize * 2 {
                return Err(ValueError::TextTooLong {
                    chars: text.len(),
                    registers,
                });
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(registers as usize * 2, 0);
            Ok(bytes_to_regs(&bytes, WordOrder::ABCD))
        }
        _ => {
            let v = match value {
                Decoded::Number(v) => *v,
                Decoded::Bool(b) => f64::from(u8::from(*b)),
                Decoded::Text(_) => return Err(wrong()),
            };
            let bytes: Vec<u8> = match ty {
                ValueType::F64 => v.to_be_bytes().to_vec(),
                ValueType::F32 => {
                    let f = v as f32;
                    if v.is_finite() && !f.is_finite() {
                        return Err(ValueError::OutOfRange { ty, value: v });
                    }
                    f.to_be_bytes().to_vec()
                }
                _ => {
                    if !v.is_finite() {
                        return Err(ValueError::NotFinite { ty, value: v });
                    }
                    let r = v.round();
                    // Bounds as f64: the upper ones are exclusive powers of two, exactly representable.
                    let (lo, hi) = match ty {
                        ValueType::U16 => (0.0, 65536.0),
                        ValueType::I16 => (-32768.0, 32768.0),
                        ValueType::U32 => (0.0, 4294967296.0),
                        ValueType::I32 => (-2147483648.0, 2147483648.0),
                        ValueType::U64 => (0.0, 18446744073709551616.0),
                        _ => (-9223372036854775808.0, 9223372036854775808.0),
                    };
                    if r < lo || r >= hi {
                        return Err(ValueError::OutOfRange { ty, value: v });
                    }
                    match ty {
                        ValueType::U16 => (r as u16).to_be_bytes().to_vec(),
                        ValueType::I16 => (r as i16).to_be_bytes().to_vec(),
                        ValueType::U32 => (r as u32).to_be_bytes().to_vec(),
                        ValueType::I32 => (r as i32).to_be_bytes().to_vec(),
                        ValueType::U64 => (r as u64).to_be_bytes().to_vec(),
                        _ => (r as i64).to_be_bytes().to_vec(),
                    }
                }
            };
            Ok(bytes_to_regs(&bytes, order))
        }
    }
}

/// The `(and_mask, or_mask)` of a mask write (function 22) that sets or clears one bit
/// and leaves the other fifteen alone.
pub fn bit_mask(bit: u8, value: bool) -> Result<(u16, u16), ValueError> {
    if bit >= 16 {
        return Err(ValueError::BadBit(Some(bit)));
    }
    let m = 1u16 << bit;
    Ok((!m, if value { m } else { 0 }))
}

/// A float32 register's value as the decimal the device meant: the f64 nearest the shortest
/// decimal that reads back as the same f32. A chamber setpoint of 23.1 is stored as the f32
/// 23.1000003814697265625; widened bit for bit it would be reported, stored and graphed as
/// 23.100000381469727. Writing the result back as f32 gives the same bits.
fn widen_f32(x: f32) -> f64 {
    use std::io::Write;
    if !x.is_finite() {
        return f64::from(x);
    }
    // Display of an f32 is its shortest round-trip decimal, at most 48 characters without an
    // exponent (f32::MAX is 39 digits); formatted on the stack, this runs on every poll.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{x}").is_err() {
        return f64::from(x);
    }
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(f64::from(x))
}

/// The divisor a decimal scale stands for: 10 for 0.1, 100 for 0.01, none for 2.5.
fn decimal_divisor(scale: f64) -> Option<f64> {
    if scale == 0.0 || !scale.is_finite() || scale.abs() >= 1.0 {
        return None;
    }
    let k = (1.0 / scale).round();
    (k.abs() <= 1e15 && (k * scale - 1.0).abs() < 1e-12).then_some(k)
}

/// Engineering value from a raw one: `raw * scale + offset` (scale 1 and offset 0 when absent).
///
/// A decimal scale (0.1, 0.01, ...) divides instead of multiplying: 0.1 has no exact binary
/// form, so 2345 * 0.1 is 234.50000000000003, while 2345 / 10 is the double nearest 234.5,
/// what the register means.
pub fn scale(raw: f64, scale: Option<f64>, offset: Option<f64>) -> f64 {
    let scaled = match scale {
        None => raw,
        Some(s) => match decimal_divisor(s) {
            Some(k) => raw / k,
            None => raw * s,
        },
    };
    scaled + offset.unwrap_or(0.0)
}

/// Raw value to write for an engineering value: `(value - offset) / scale` (a decimal scale
/// multiplies by its divisor, the mirror of [`scale`]).
///
/// A zero scale gives a non-finite result, which [`encode`] then refuses for integer types.
pub fn unscale(value: f64, scale: Option<f64>, offset: Option<f64>) -> f64 {
    let v = value - offset.unwrap_or(0.0);
    match scale {
        None => v,
        Some(s) => match decimal_divisor(s) {
            Some(k) => v * k,
            None => v / s,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_registers_read_as_the_decimal_they_hold() {
        for x in [23.1f32, -0.3, 1e-7, 3.4028235e38, 0.0, 1.5, 16777217.0] {
            let w = widen_f32(x);
            assert_eq!(w as f32, x, "{x} must round-trip");
            assert_eq!(w.to_string(), x.to_string());
        }
        let regs = encode(
            &Decoded::Number(23.1),
            ValueType::F32,
            WordOrder::CDAB,
            None,
        )
        .unwrap();
        assert_eq!(
            decode(&regs, ValueType::F32, WordOrder::CDAB, None).unwrap(),
            Decoded::Number(23.1)
        );
        assert!(widen_f32(f32::NAN).is_nan());
        assert_eq!(widen_f32(f32::INFINITY), f64::INFINITY);
    }

    #[test]
    fn decimal_scales_give_the_decimal_value() {
        assert_eq!(scale(2345.0, Some(0.1), None), 234.5);
        assert_eq!(scale(1234.0, Some(0.01), None), 12.34);
        assert_eq!(scale(29.0, Some(0.01), None), 0.29);
        assert_eq!(scale(-15.0, Some(0.1), Some(100.0)), 98.5);
        assert_eq!(scale(7.0, Some(2.5), None), 17.5);
        assert_eq!(
            scale(3.0, Some(0.3), None),
            3.0 * 0.3,
            "not a decimal divisor"
        );
        // 0.29 * 100 is 28.999999999999996 in binary; the integer register gets 29.
        let raw = unscale(0.29, Some(0.01), None);
        assert_eq!(
            encode(&Decoded::Number(raw), ValueType::U16, WordOrder::ABCD, None).unwrap(),
            [29]
        );
        assert_eq!(unscale(234.5, Some(0.1), None), 2345.0);
        assert_eq!(unscale(17.5, Some(2.5), None), 7.0);
        assert!(!unscale(1.0, Some(0.0), None).is_finite());
        for raw in 0..2000 {
            let raw = f64::from(raw);
            assert_eq!(unscale(scale(raw, Some(0.1), None), Some(0.1), None), raw);
        }
    }

    #[test]
    fn orders_of_a_32_bit_value() {
        let be = [0xA1, 0xB2, 0xC3, 0xD4];
        assert_eq!(bytes_to_regs(&be, WordOrder::ABCD), [0xA1B2, 0xC3D4]);
        assert_eq!(bytes_to_regs(&be, WordOrder::CDAB), [0xC3D4, 0xA1B2]);
        assert_eq!(bytes_to_regs(&be, WordOrder::BADC), [0xB2A1, 0xD4C3]);
        assert_eq!(bytes_to_regs(&be, WordOrder::DCBA), [0xD4C3, 0xB2A1]);
    }

    #[test]
    fn orders_of_a_64_bit_value() {
        let be = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            bytes_to_regs(&be, WordOrder::CDAB),
            [0x0708, 0x0506, 0x0304, 0x0102]
        );
        assert_eq!(
            bytes_to_regs(&be, WordOrder::DCBA),
            [0x0807, 0x0605, 0x0403, 0x0201]
        );
        for order in [
            WordOrder::ABCD,
            WordOrder::CDAB,
            WordOrder::BADC,
            WordOrder::DCBA,
        ] {
            assert_eq!(regs_to_bytes(&bytes_to_regs(&be, order), order), be);
        }
    }

    #[test]
    fn watlow_float_low_word_first() {
        // 25.0f32 = 0x41C8_0000; the F4T sends the low word first.
        let regs = [0x0000, 0x41C8];
        assert_eq!(
            decode(&regs, ValueType::F32, WordOrder::CDAB, None),
            Ok(Decoded::Number(25.0))
        );
    }
}
