//! HiSLIP message framing: the 16-byte header (`HS`, type, control code, parameter, payload
//! length) and the message type and error code tables. Shared by the client and `sim::hislip`.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const HEADER_LEN: usize = 16;
const PROLOGUE: &[u8; 2] = b"HS";

/// Message types used here (IVI-6.1 table 4); others are read as `None` and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    Initialize = 0,
    InitializeResponse = 1,
    FatalError = 2,
    Error = 3,
    Data = 6,
    DataEnd = 7,
    DeviceClearComplete = 8,
    DeviceClearAcknowledge = 9,
    Trigger = 12,
    Interrupted = 13,
    AsyncInterrupted = 14,
    AsyncMaxMsgSize = 15,
    AsyncMaxMsgSizeResponse = 16,
    AsyncInitialize = 17,
    AsyncInitializeResponse = 18,
    AsyncDeviceClear = 19,
    AsyncStatusQuery = 21,
    AsyncStatusResponse = 22,
    AsyncDeviceClearAcknowledge = 23,
    AsyncLockInfo = 24,
    AsyncLockInfoResponse = 25,
}

impl MsgType {
    pub fn from_u8(v: u8) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Initialize,
            1 => InitializeResponse,
            2 => FatalError,
            3 => Error,
            6 => Data,
            7 => DataEnd,
            8 => DeviceClearComplete,
            9 => DeviceClearAcknowledge,
            12 => Trigger,
            13 => Interrupted,
            14 => AsyncInterrupted,
            15 => AsyncMaxMsgSize,
            16 => AsyncMaxMsgSizeResponse,
            17 => AsyncInitialize,
            18 => AsyncInitializeResponse,
            19 => AsyncDeviceClear,
            21 => AsyncStatusQuery,
            22 => AsyncStatusResponse,
            23 => AsyncDeviceClearAcknowledge,
            24 => AsyncLockInfo,
            25 => AsyncLockInfoResponse,
            _ => return None,
        })
    }
}

/// FatalError codes (IVI-6.1 table 7).
pub fn fatal_error_name(code: u8) -> &'static str {
    match code {
        0 => "unidentified error",
        1 => "poorly formed message header",
        2 => "attempt to use connection without both channels established",
        3 => "invalid initialization sequence",
        4 => "server refused connection: maximum number of clients exceeded",
        5 => "secure connection failed",
        128..=255 => "device-defined fatal error",
        _ => "reserved fatal error code",
    }
}

/// Error codes (IVI-6.1 table 8).
pub fn error_name(code: u8) -> &'static str {
    match code {
        0 => "unidentified error",
        1 => "unrecognized message type",
        2 => "unrecognized control code",
        3 => "unrecognized vendor defined message",
        4 => "message too large",
        5 => "authentication failed",
        128..=255 => "device-defined error",
        _ => "reserved error code",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `None` for a type this implementation does not know (the raw value is in `raw_type`).
    pub kind: Option<MsgType>,
    pub raw_type: u8,
    pub control: u8,
    pub param: u32,
    pub len: u64,
}

impl Header {
    pub fn new(kind: MsgType, control: u8, param: u32, len: u64) -> Header {
        Header {
            kind: Some(kind),
            raw_type: kind as u8,
            control,
            param,
            len,
        }
    }

    pub fn type_name(&self) -> String {
        match self.kind {
            Some(k) => format!("{k:?}"),
            None => format!("message type {}", self.raw_type),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..2].copy_from_slice(PROLOGUE);
        b[2] = self.raw_type;
        b[3] = self.control;
        b[4..8].copy_from_slice(&self.param.to_be_bytes());
        b[8..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if &b[..2] != PROLOGUE {
            return Err(format!(
                "message does not start with \"HS\" (got {:02x} {:02x}): stream out of step",
                b[0], b[1]
            ));
        }
        Ok(Header {
            kind: MsgType::from_u8(b[2]),
            raw_type: b[2],
            control: b[3],
            param: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            len: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        })
    }
}

/// Write a header and its payload in one go (one segment for small messages).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    h: &Header,
    payload: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    w.write_all(&out).await?;
    w.flush().await
}

/// Read one header. The outer error is I/O (EOF included), the inner a malformed header.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Result<Header, String>> {
    let mut b = [0u8; HEADER_LEN];
    r.read_exact(&mut b).await?;
    Ok(Header::decode(&b))
}

/// Read a payload of `len` bytes; the caller bounds `len` before calling.
pub async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "payload length too large"))?;
    let mut v = vec![0u8; len];
    r.read_exact(&mut v).await?;
    Ok(v)
}

/// Read and drop a payload of `len` bytes a piece at a time, so a message nobody wants (a stale
/// reply) costs no memory however long it claims to be.
pub async fn discard_payload<R: AsyncRead + Unpin>(r: &mut R, mut len: u64) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks_prologue() {
        let h = Header::new(MsgType::DataEnd, 1, 0xffff_ff02, 6);
        let b = h.encode();
        assert_eq!(&b[..4], b"HS\x07\x01");
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert!(Header::decode(&bad).unwrap_err().contains("out of step"));
        let mut unknown = b;
        unknown[2] = 200;
        let u = Header::decode(&unknown).unwrap();
        assert_eq!((u.kind, u.raw_type), (None, 200));
    }
}
