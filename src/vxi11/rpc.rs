//! ONC RPC (RFC 5531) over TCP with record marking, and the XDR (RFC 4506) subset VXI-11 needs.
//!
//! Shared by the client ([`super::Vxi11Client`]) and the simulated server (`sim::vxi11`), so the
//! encoding lives in one place; the independent peers in tests/peers check it against an
//! implementation we did not write. Only AUTH_NONE credentials are sent or accepted: VXI-11
//! instruments do not authenticate.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The portmapper (rpcbind version 2) program, its usual port and GETPORT.
pub const PMAP_PROG: u32 = 100_000;
pub const PMAP_VERS: u32 = 2;
pub const PMAP_PORT: u16 = 111;
pub const PMAPPROC_GETPORT: u32 = 3;
pub const IPPROTO_TCP: u32 = 6;

/// Largest record accepted from the peer. A VXI-11 read reply is bounded by the request size the
/// client asks for (1 MiB here), so 16 MiB only ever stops a corrupt or hostile length.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

const LAST_FRAGMENT: u32 = 0x8000_0000;
const RPC_VERSION: u32 = 2;
const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;

/// Why an RPC call did not reach the procedure: the server's accept or reject status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcFailure {
    #[error("program unavailable (PROG_UNAVAIL)")]
    ProgUnavail,
    #[error("program version mismatch (PROG_MISMATCH): server supports {low}..={high}")]
    ProgMismatch { low: u32, high: u32 },
    #[error("procedure unavailable (PROC_UNAVAIL)")]
    ProcUnavail,
    #[error("server could not decode the arguments (GARBAGE_ARGS)")]
    GarbageArgs,
    #[error("server system error (SYSTEM_ERR)")]
    SystemErr,
    #[error("rpc version mismatch (RPC_MISMATCH): server supports {low}..={high}")]
    RpcMismatch { low: u32, high: u32 },
    #[error("authentication error (AUTH_ERROR {0})")]
    AuthError(u32),
    #[error("unknown accept status {0}")]
    UnknownAccept(u32),
    #[error("unknown reply status {0}")]
    UnknownReply(u32),
}

/// An XDR encoder into a growable buffer.
#[derive(Debug, Default, Clone)]
pub struct XdrWriter {
    buf: Vec<u8>,
}

impl XdrWriter {
    pub fn new() -> Self {
        XdrWriter::default()
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }
    /// Variable-length opaque (and string): length, bytes, zero padding to 4.
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32);
        self.buf.extend_from_slice(data);
        let pad = (4 - data.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// An XDR decoder over a received record. Every read is bounds-checked: a short or corrupt
/// record gives an error, never a panic.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        XdrReader { buf, pos: 0 }
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let end = self.pos + 4;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("record ends at byte {} inside a 4-byte field", self.pos))?;
        self.pos = end;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self) -> Result<i32, String> {
        self.u32().map(|v| v as i32)
    }
    pub fn bool(&mut self) -> Result<bool, String> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("invalid xdr boolean {v}")),
        }
    }
    pub fn opaque(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        let padded = len
            .checked_add((4 - len % 4) % 4)
            .ok_or("opaque length overflows")?;
        let remaining = self.buf.len() - self.pos;
        if padded > remaining {
            return Err(format!(
                "opaque of {len} bytes but only {remaining} left in the record"
            ));
        }
        let data = &self.buf[self.pos..self.pos + len];
        self.pos += padded;
        Ok(data)
    }
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Write one record as a single last fragment.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, record: &[u8]) -> io::Result<()> {
    let len = u32::try_from(record.len())
        .ok()
        .filter(|l| *l < LAST_FRAGMENT)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "rpc record too long"))?;
    let mut out = Vec::with_capacity(4 + record.len());
    out.extend_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
    out.extend_from_slice(record);
    w.write_all(&out).await?;
    w.flush().await
}

/// Read one record, joining fragments. `Ok(None)` when the peer closed cleanly between records.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut hdr = [0u8; 4];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let word = u32::from_be_bytes(hdr);
        let len = (word & !LAST_FRAGMENT) as usize;
        if record.len() + len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("rpc record longer than {max} bytes"),
            ));
        }
        let start = record.len();
        record.resize(start + len, 0);
        r.read_exact(&mut record[start..]).await?;
        if word & LAST_FRAGMENT != 0 {
            return Ok(Some(record));
        }
    }
}

/// The header of a call with AUTH_NONE credentials; the arguments follow.
pub fn call_header(xid: u32, prog: u32, vers: u32, proc_: u32) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.u32(xid)
        .u32(MSG_CALL)
        .u32(RPC_VERSION)
        .u32(prog)
        .u32(vers)
        .u32(proc_)
        // credential and verifier: AUTH_NONE, empty body
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(0);
    w
}

/// Parse a reply to call `xid`: `Ok(Ok(results))` on SUCCESS, `Ok(Err(failure))` when the
/// server refused the call, `Err(text)` when the record is not a well-formed reply to `xid`.
pub fn parse_reply(record: &[u8], xid: u32) -> Result<Result<&[u8], RpcFailure>, String> {
    let mut r = XdrReader::new(record);
    let got = r.u32()?;
    if got != xid {
        return Err(format!(
            "reply xid {got:#x} does not match call xid {xid:#x}"
        ));
    }
    let mtype = r.u32()?;
    if mtype != MSG_REPLY {
        return Err(format!(
            "message type {mtype} where a reply (1) was expected"
        ));
    }
    match r.u32()? {
        0 => {
            let _flavor = r.u32()?;
            let _body = r.opaque()?;
            Ok(match r.u32()? {
                0 => Ok(r.remaining()),
                1 => Err(RpcFailure::ProgUnavail),
                2 => Err(RpcFailure::ProgMismatch {
                    low: r.u32()?,
                    high: r.u32()?,
                }),
                3 => Err(RpcFailure::ProcUnavail),
                4 => Err(RpcFailure::GarbageArgs),
                5 => Err(RpcFailure::SystemErr),
                n => Err(RpcFailure::UnknownAccept(n)),
            })
        }
        1 => Ok(Err(match r.u32()? {
            0 => RpcFailure::RpcMismatch {
                low: r.u32()?,
                high: r.u32()?,
            },
            1 => RpcFailure::AuthError(r.u32()?),
            n => RpcFailure::UnknownReply(n),
        })),
        n => Ok(Err(RpcFailure::UnknownReply(n))),
    }
}

/// A decoded call, for servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub args: &'a [u8],
}

/// Parse a call record. `Err` when it is not an RPC version 2 call (the caller drops the
/// connection: with record marking it cannot resynchronise anyway).
pub fn parse_call(record: &[u8]) -> Result<Call<'_>, String> {
    let mut r = XdrReader::new(record);
    let xid = r.u32()?;
    if r.u32()? != MSG_CALL {
        return Err("not an rpc call".into());
    }
    let rpcvers = r.u32()?;
    if rpcvers != RPC_VERSION {
        return Err(format!("rpc version {rpcvers}"));
    }
    let prog = r.u32()?;
    let vers = r.u32()?;
    let proc_ = r.u32()?;
    for _ in 0..2 {
        let _flavor = r.u32()?;
        let _body = r.opaque()?;
    }
    Ok(Call {
        xid,
        prog,
        vers,
        proc_,
        args: r.remaining(),
    })
}

/// An accepted reply: `Ok(results)` as SUCCESS, `Err(failure)` as the matching accept status.
pub fn accepted_reply(xid: u32, result: Result<&[u8], RpcFailure>) -> Vec<u8> {
    let mut w = XdrWriter::new();
    w.u32(xid).u32(MSG_REPLY).u32(0).u32(0).u32(0);
    match result {
        Ok(results) => {
            w.u32(0);
            let mut out = w.into_bytes();
            out.extend_from_slice(results);
            return out;
        }
        Err(RpcFailure::ProgUnavail) => w.u32(1),
        Err(RpcFailure::ProgMismatch { low, high }) => w.u32(2).u32(low).u32(high),
        Err(RpcFailure::ProcUnavail) => w.u32(3),
        Err(RpcFailure::GarbageArgs) => w.u32(4),
        Err(_) => w.u32(5),
    };
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdr_opaque_pads_to_four_and_round_trips() {
        let mut w = XdrWriter::new();
        w.opaque(b"inst0").i32(-2).bool(true);
        let bytes = w.into_bytes();
        assert_eq!(bytes.len(), 4 + 8 + 4 + 4);
        assert_eq!(&bytes[..4], &[0, 0, 0, 5]);
        let mut r = XdrReader::new(&bytes);
        assert_eq!(r.opaque().unwrap(), b"inst0");
        assert_eq!(r.i32().unwrap(), -2);
        assert!(r.bool().unwrap());
        assert!(r.u32().is_err());
    }

    #[test]
    fn corrupt_lengths_are_errors_not_panics() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(XdrReader::new(&bytes).opaque().is_err());
        assert!(parse_reply(&[0, 0], 1).is_err());
        assert!(parse_call(&[0, 0, 0, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn call_and_reply_round_trip() {
        let mut call = call_header(7, PMAP_PROG, PMAP_VERS, PMAPPROC_GETPORT);
        call.u32(395_183).u32(1).u32(IPPROTO_TCP).u32(0);
        let bytes = call.into_bytes();
        let c = parse_call(&bytes).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (7, 100_000, 2, 3));
        assert_eq!(c.args.len(), 16);
        let mut res = XdrWriter::new();
        res.u32(4321);
        let reply = accepted_reply(7, Ok(&res.into_bytes()));
        assert_eq!(
            parse_reply(&reply, 7).unwrap().unwrap(),
            &[0, 0, 0x10, 0xe1]
        );
        assert!(parse_reply(&reply, 8).is_err());
        let refused = accepted_reply(9, Err(RpcFailure::ProgMismatch { low: 1, high: 1 }));
        assert_eq!(
            parse_reply(&refused, 9).unwrap(),
            Err(RpcFailure::ProgMismatch { low: 1, high: 1 })
        );
    }
}
