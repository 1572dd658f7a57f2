//! VXI-11 client: the core channel of the VXI-11 TCP/IP Instrument Protocol (VXIbus Consortium,
//! revision 1.0) over ONC RPC, the subset LAN instruments need for message-based SCPI.
//!
//! Connecting asks the portmapper (normally port 111, configurable because tests and some
//! firewalled setups use another) for the port of the core program (395183, version 1, TCP),
//! opens that port and calls create_link. Then [`Vxi11Client::write`] sends one message with the
//! END flag on its last chunk (chunks no larger than the link's maxRecvSize),
//! [`Vxi11Client::read`] calls device_read until the instrument reports END (or the termination
//! character, when one is set), [`Vxi11Client::clear`] is device_clear, and
//! [`Vxi11Client::close`] destroy_link. The abort channel and service requests are not used.
//!
//! Every call is bounded: the instrument gets the I/O timeout in the call itself (so a silent
//! instrument answers with error 15 rather than not at all) and the client waits that long plus
//! [`CALL_SLACK`] before it gives up on the RPC. After any error other than a device error code
//! the connection cannot be trusted (a late reply would be read as the next one) and must be
//! dropped; [`Vxi11Error::needs_reconnect`] says which.

pub mod rpc;

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use rpc::{RpcFailure, XdrReader, XdrWriter};

/// The VXI-11 core program and version.
pub const CORE_PROG: u32 = 0x0607AF;
pub const CORE_VERS: u32 = 1;

pub const CREATE_LINK: u32 = 10;
pub const DEVICE_WRITE: u32 = 11;
pub const DEVICE_READ: u32 = 12;
pub const DEVICE_CLEAR: u32 = 15;
pub const DESTROY_LINK: u32 = 23;

/// Device_Flags bits.
pub const FLAG_WAITLOCK: i32 = 1;
pub const FLAG_END: i32 = 8;
pub const FLAG_TERMCHRSET: i32 = 128;

/// device_read reasons.
pub const REASON_REQCNT: i32 = 1;
pub const REASON_CHR: i32 = 2;
pub const REASON_END: i32 = 4;

/// What the client asks per device_read; instruments cap it by their own buffer.
pub const READ_REQUEST_SIZE: u32 = 1024 * 1024;

/// How long past the instrument's own I/O timeout the client waits for an RPC reply.
pub const CALL_SLACK: Duration = Duration::from_secs(1);

/// VXI-11 error codes (Device_ErrorCode) and their names.
pub fn error_name(code: i32) -> &'static str {
    match code {
        0 => "no error",
        1 => "syntax error",
        3 => "device not accessible",
        4 => "invalid link identifier",
        5 => "parameter error",
        6 => "channel not established",
        8 => "operation not supported",
        9 => "out of resources",
        11 => "device locked by another link",
        12 => "no lock held by this link",
        15 => "i/o timeout",
        17 => "i/o error",
        21 => "invalid address",
        23 => "abort",
        29 => "channel already established",
        _ => "unknown error code",
    }
}

/// Why a VXI-11 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Vxi11Error {
    #[error("vxi-11 {endpoint}: {call}: {source}")]
    Io {
        endpoint: String,
        call: &'static str,
        source: io::Error,
    },
    #[error("vxi-11 {endpoint}: {call}: connection closed by the instrument")]
    Closed {
        endpoint: String,
        call: &'static str,
    },
    #[error("vxi-11 {endpoint}: {call}: no rpc reply within {after:?}")]
    Timeout {
        endpoint: String,
        call: &'static str,
        after: Duration,
    },
    /// The RPC layer refused the call (wrong program, version or procedure, bad arguments).
    #[error("vxi-11 {endpoint}: {call}: rpc call refused: {failure}")]
    Rpc {
        endpoint: String,
        call: &'static str,
        failure: RpcFailure,
    },
    /// The instrument answered with a VXI-11 error code.
    #[error("vxi-11 {endpoint}: {call}: device error {code} ({name})")]
    Device {
        endpoint: String,
        call: &'static str,
        code: i32,
        name: &'static str,
    },
    #[error(
        "vxi-11 {endpoint}: portmapper knows no vxi-11 core program (395183 v1 tcp): is this a vxi-11 instrument?"
    )]
    NotRegistered { endpoint: String },
    #[error("vxi-11 {endpoint}: {call}: malformed reply: {message}")]
    Protocol {
        endpoint: String,
        call: &'static str,
        message: String,
    },
    #[error("vxi-11 {endpoint}: reply longer than {max} bytes")]
    ReplyTooLong { endpoint: String, max: usize },
}

impl Vxi11Error {
    /// Whether the connection must be dropped. A device error code leaves the RPC stream in
    /// step (the reply was read whole), except an I/O timeout or abort: the instrument may
    /// still be producing output the next read would take for its answer.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            Vxi11Error::Device { code, .. } => matches!(code, 4 | 15 | 17 | 23),
            Vxi11Error::Rpc { .. } => false,
            _ => true,
        }
    }

    /// The VXI-11 error code, when the instrument sent one.
    pub fn device_code(&self) -> Option<i32> {
        match self {
            Vxi11Error::Device { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How to reach and talk to one VXI-11 device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxi11Options {
    pub host: String,
    /// Where the portmapper listens (111 on real instruments).
    pub portmap_port: u16,
    /// Skip the portmapper and use this core port (some instruments always use the same one).
    pub core_port: Option<u16>,
    /// The device name, `inst0` for the instrument itself, `gpib0,5` behind a gateway.
    pub device: String,
    /// Sent to the instrument with every call; also bounds how long the client waits.
    pub io_timeout: Duration,
    /// Longest message accepted from the instrument.
    pub max_reply: usize,
    /// When set, device_read also ends at this byte (most instruments end with END anyway).
    pub term_char: Option<u8>,
    pub client_id: i32,
}

impl Vxi11Options {
    pub fn new(host: &str, device: &str) -> Self {
        Vxi11Options {
            host: host.to_string(),
            portmap_port: rpc::PMAP_PORT,
            core_port: None,
            device: device.to_string(),
            io_timeout: Duration::from_secs(2),
            max_reply: 4 * 1024 * 1024,
            term_char: None,
            client_id: 0x4c47,
        }
    }
}

/// An RPC connection to one program on one port, one call at a time.
struct RpcConn {
    stream: TcpStream,
    endpoint: String,
    prog: u32,
    vers: u32,
    xid: u32,
}

impl RpcConn {
    async fn open(
        host: &str,
        port: u16,
        prog: u32,
        vers: u32,
        timeout: Duration,
        call: &'static str,
    ) -> Result<RpcConn, Vxi11Error> {
        let endpoint = endpoint(host, port);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(Vxi11Error::Io {
                    endpoint,
                    call,
                    source,
                });
            }
            Err(_) => {
                return Err(Vxi11Error::Timeout {
                    endpoint,
                    call,
                    after: timeout,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(RpcConn {
            stream,
            endpoint,
            prog,
            vers,
            // Differing start values keep a stale reply from another connection from matching.
            xid: fastrand::u32(..),
        })
    }

    /// One call; `args` encodes the arguments into the record after the header.
    async fn call(
        &mut self,
        call: &'static str,
        proc_: u32,
        args: impl FnOnce(&mut XdrWriter),
        timeout: Duration,
    ) -> Result<Vec<u8>, Vxi11Error> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let mut w = rpc::call_header(xid, self.prog, self.vers, proc_);
        args(&mut w);
        let record = w.into_bytes();
        let endpoint = &self.endpoint;
        let stream = &mut self.stream;
        let exchange = async {
            rpc::write_record(stream, &record).await?;
            rpc::read_record(stream, rpc::MAX_RECORD).await
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => {
                return Err(Vxi11Error::Closed {
                    endpoint: endpoint.clone(),
                    call,
                });
            }
            Ok(Err(source)) if source.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Vxi11Error::Closed {
                    endpoint: endpoint.clone(),
                    call,
                });
            }
            Ok(Err(source)) => {
                return Err(Vxi11Error::Io {
                    endpoint: endpoint.clone(),
                    call,
                    source,
                });
            }
            Err(_) => {
                return Err(Vxi11Error::Timeout {
                    endpoint: endpoint.clone(),
                    call,
                    after: timeout,
                });
            }
        };
        match rpc::parse_reply(&reply, xid) {
            Ok(Ok(results)) => Ok(results.to_vec()),
            Ok(Err(failure)) => Err(Vxi11Error::Rpc {
                endpoint: endpoint.clone(),
                call,
                failure,
            }),
            Err(message) => Err(Vxi11Error::Protocol {
                endpoint: endpoint.clone(),
                call,
                message,
            }),
        }
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Ask the portmapper at `host:portmap_port` for the TCP port of the VXI-11 core program.
pub async fn get_core_port(
    host: &str,
    portmap_port: u16,
    timeout: Duration,
) -> Result<u16, Vxi11Error> {
    const CALL: &str = "portmapper getport";
    let mut pmap = RpcConn::open(
        host,
        portmap_port,
        rpc::PMAP_PROG,
        rpc::PMAP_VERS,
        timeout,
        CALL,
    )
    .await?;
    let results = pmap
        .call(
            CALL,
            rpc::PMAPPROC_GETPORT,
            |w| {
                w.u32(CORE_PROG).u32(CORE_VERS).u32(rpc::IPPROTO_TCP).u32(0);
            },
            timeout,
        )
        .await?;
    let port = XdrReader::new(&results)
        .u32()
        .map_err(|message| Vxi11Error::Protocol {
            endpoint: pmap.endpoint.clone(),
            call: CALL,
            message,
        })?;
    match u16::try_from(port) {
        Ok(0) => Err(Vxi11Error::NotRegistered {
            endpoint: pmap.endpoint,
        }),
        Ok(p) => Ok(p),
        Err(_) => Err(Vxi11Error::Protocol {
            endpoint: pmap.endpoint,
            call: CALL,
            message: format!("port {port} out of range"),
        }),
    }
}

/// A VXI-11 link to one device.
pub struct Vxi11Client {
    conn: RpcConn,
    link: i32,
    max_recv_size: u32,
    opts: Vxi11Options,
}

impl std::fmt::Debug for Vxi11Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vxi11Client")
            .field("endpoint", &self.conn.endpoint)
            .field("device", &self.opts.device)
            .field("link", &self.link)
            .finish()
    }
}

impl Vxi11Client {
    /// Find the core port (portmapper unless `core_port` is set), connect and create the link.
    pub async fn connect(opts: Vxi11Options) -> Result<Vxi11Client, Vxi11Error> {
        let call_timeout = opts.io_timeout + CALL_SLACK;
        let port = match opts.core_port {
            Some(p) => p,
            None => get_core_port(&opts.host, opts.portmap_port, call_timeout).await?,
        };
        let mut conn = RpcConn::open(
            &opts.host,
            port,
            CORE_PROG,
            CORE_VERS,
            call_timeout,
            "create_link",
        )
        .await?;
        let lock_timeout_ms = 0u32;
        let results = conn
            .call(
                "create_link",
                CREATE_LINK,
                |w| {
                    w.i32(opts.client_id)
                        .bool(false)
                        .u32(lock_timeout_ms)
                        .opaque(opts.device.as_bytes());
                },
                call_timeout,
            )
            .await?;
        let mut r = XdrReader::new(&results);
        let parsed = (|| -> Result<_, String> { Ok((r.i32()?, r.i32()?, r.u32()?, r.u32()?)) })();
        let (error, link, _abort_port, max_recv_size) =
            parsed.map_err(|message| Vxi11Error::Protocol {
                endpoint: conn.endpoint.clone(),
                call: "create_link",
                message,
            })?;
        if error != 0 {
            return Err(Vxi11Error::Device {
                endpoint: conn.endpoint.clone(),
                call: "create_link",
                code: error,
                name: error_name(error),
            });
        }
        Ok(Vxi11Client {
            conn,
            link,
            // The spec requires at least 1024; a server claiming less would make writes crawl.
            max_recv_size: max_recv_size.max(1024),
            opts,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.conn.endpoint
    }

    pub fn link_id(&self) -> i32 {
        self.link
    }

    /// The largest device_write chunk the instrument accepts.
    pub fn max_recv_size(&self) -> u32 {
        self.max_recv_size
    }

    pub fn set_io_timeout(&mut self, t: Duration) {
        self.opts.io_timeout = t;
    }

    pub fn set_max_reply(&mut self, max: usize) {
        self.opts.max_reply = max;
    }

    fn io_timeout_ms(&self) -> u32 {
        u32::try_from(self.opts.io_timeout.as_millis()).unwrap_or(u32::MAX)
    }

    fn call_timeout(&self) -> Duration {
        self.opts.io_timeout + CALL_SLACK
    }

    fn device_error(&self, call: &'static str, code: i32) -> Vxi11Error {
        Vxi11Error::Device {
            endpoint: self.conn.endpoint.clone(),
            call,
            code,
            name: error_name(code),
        }
    }

    fn malformed(&self, call: &'static str, message: String) -> Vxi11Error {
        Vxi11Error::Protocol {
            endpoint: self.conn.endpoint.clone(),
            call,
            message,
        }
    }

    /// Send one message: chunks of at most maxRecvSize, END on the last one.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Vxi11Error> {
        const CALL: &str = "device_write";
        let chunk_max = self.max_recv_size as usize;
        let mut sent = 0usize;
        // An empty message is still one device_write carrying END.
        loop {
            let end = (sent + chunk_max).min(data.len());
            let chunk = &data[sent..end];
            let last = end == data.len();
            let flags = if last { FLAG_END } else { 0 };
            let (link, io_ms, timeout) = (self.link, self.io_timeout_ms(), self.call_timeout());
            let results = self
                .conn
                .call(
                    CALL,
                    DEVICE_WRITE,
                    |w| {
                        w.i32(link).u32(io_ms).u32(0).i32(flags).opaque(chunk);
                    },
                    timeout,
                )
                .await?;
            let mut r = XdrReader::new(&results);
            let (error, size) = (|| -> Result<_, String> { Ok((r.i32()?, r.u32()?)) })()
                .map_err(|m| self.malformed(CALL, m))?;
            if error != 0 {
                return Err(self.device_error(CALL, error));
            }
            let size = size as usize;
            if size > chunk.len() || (size == 0 && !chunk.is_empty()) {
                return Err(self.malformed(
                    CALL,
                    format!("accepted {size} of a {}-byte chunk", chunk.len()),
                ));
            }
            sent += size;
            if sent == data.len() && last {
                return Ok(());
            }
        }
    }

    /// Read one message: device_read until END (or the termination character when set).
    pub async fn read(&mut self) -> Result<Vec<u8>, Vxi11Error> {
        const CALL: &str = "device_read";
        let mut out = Vec::new();
        loop {
            let (flags, term) = match self.opts.term_char {
                Some(c) => (FLAG_TERMCHRSET, c as i32),
                None => (0, 0),
            };
            let (link, io_ms, timeout) = (self.link, self.io_timeout_ms(), self.call_timeout());
            let results = self
                .conn
                .call(
                    CALL,
                    DEVICE_READ,
                    |w| {
                        w.i32(link)
                            .u32(READ_REQUEST_SIZE)
                            .u32(io_ms)
                            .u32(0)
                            .i32(flags)
                            .i32(term);
                    },
                    timeout,
                )
                .await?;
            let mut r = XdrReader::new(&results);
            let (error, reason, data) =
                (|| -> Result<_, String> { Ok((r.i32()?, r.i32()?, r.opaque()?)) })()
                    .map_err(|m| self.malformed(CALL, m))?;
            if error != 0 {
                return Err(self.device_error(CALL, error));
            }
            if out.len() + data.len() > self.opts.max_reply {
                return Err(Vxi11Error::ReplyTooLong {
                    endpoint: self.conn.endpoint.clone(),
                    max: self.opts.max_reply,
                });
            }
            out.extend_from_slice(data);
            let term_hit = self.opts.term_char.is_some() && reason & REASON_CHR != 0;
            if reason & REASON_END != 0 || term_hit {
                return Ok(out);
            }
            if reason & REASON_REQCNT == 0 {
                return Err(self.malformed(
                    CALL,
                    format!("read ended with reason {reason:#x}: neither END, term char nor count"),
                ));
            }
        }
    }

    /// device_clear: the instrument drops pending input and output (IEEE 488.1 DCL).
    pub async fn clear(&mut self) -> Result<(), Vxi11Error> {
        self.generic("device_clear", DEVICE_CLEAR).await
    }

    async fn generic(&mut self, call: &'static str, proc_: u32) -> Result<(), Vxi11Error> {
        let (link, io_ms, timeout) = (self.link, self.io_timeout_ms(), self.call_timeout());
        let results = self
            .conn
            .call(
                call,
                proc_,
                |w| {
                    w.i32(link).i32(0).u32(0).u32(io_ms);
                },
                timeout,
            )
            .await?;
        let error = XdrReader::new(&results)
            .i32()
            .map_err(|m| self.malformed(call, m))?;
        if error != 0 {
            return Err(self.device_error(call, error));
        }
        Ok(())
    }

    /// destroy_link, then close the connection. Instruments limit their links, so a link
    /// should be destroyed rather than abandoned when the connection is still good.
    pub async fn close(mut self) -> Result<(), Vxi11Error> {
        const CALL: &str = "destroy_link";
        let (link, timeout) = (self.link, self.call_timeout());
        let results = self
            .conn
            .call(
                CALL,
                DESTROY_LINK,
                |w| {
                    w.i32(link);
                },
                timeout,
            )
            .await?;
        let error = XdrReader::new(&results)
            .i32()
            .map_err(|m| self.malformed(CALL, m))?;
        if error != 0 {
            return Err(self.device_error(CALL, error));
        }
        Ok(())
    }
}
