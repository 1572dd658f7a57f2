//! HiSLIP client (IVI-6.1, High-Speed LAN Instrument Protocol), the subset message-based SCPI
//! instruments need.
//!
//! A session is two TCP connections to the same port: the synchronous channel carries messages
//! (Data / DataEnd) and the asynchronous one control (device clear, maximum message size).
//! Connecting runs Initialize on the first (sending the sub-address, e.g. `hislip0`, and getting a
//! session id), AsyncInitialize with that id on the second, then AsyncMaximumMessageSize so
//! writes are cut to what the server accepts. Every message the client sends carries a message
//! id that starts at 0xffff_ff00 and goes up by 2; replies carry the id of the message they
//! answer, and a reply to an older message (left over from an interrupted exchange) is discarded
//! rather than taken for the answer.
//!
//! Error and FatalError messages from the server become [`HislipError::Server`] with the
//! protocol's name for the code and the server's text. Every wait is bounded by the I/O
//! timeout; after any error for which [`HislipError::needs_reconnect`] is true the session
//! must be dropped.

pub mod wire;

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use wire::{Header, MsgType};

/// The IANA port for HiSLIP.
pub const DEFAULT_PORT: u16 = 4880;
/// Protocol version this client speaks: 1.0 (no encryption, no locking use).
pub const PROTOCOL_VERSION: u16 = 0x0100;
const VENDOR_ID: u16 = u16::from_be_bytes(*b"LG");
const FIRST_MESSAGE_ID: u32 = 0xffff_ff00;
/// A reply carrying this id answers whatever the client sent last.
const ANY_MESSAGE_ID: u32 = 0xffff_ffff;

/// Why a HiSLIP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HislipError {
    #[error("hislip {endpoint}: {op}: {source}")]
    Io {
        endpoint: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("hislip {endpoint}: {op}: connection closed by the instrument")]
    Closed { endpoint: String, op: &'static str },
    #[error("hislip {endpoint}: {op}: no answer within {after:?}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        after: Duration,
    },
    /// The server sent Error (`fatal` false) or FatalError (`fatal` true).
    #[error("hislip {endpoint}: {op}: server {} {code} ({name}): {message}", if *fatal { "fatal error" } else { "error" })]
    Server {
        endpoint: String,
        op: &'static str,
        fatal: bool,
        code: u8,
        name: &'static str,
        message: String,
    },
    #[error("hislip {endpoint}: {op}: protocol violation: {message}")]
    Protocol {
        endpoint: String,
        op: &'static str,
        message: String,
    },
    #[error("hislip {endpoint}: reply longer than {max} bytes")]
    ReplyTooLong { endpoint: String, max: usize },
}

impl HislipError {
    /// Whether the session must be dropped. A non-fatal server Error leaves both channels in
    /// step; everything else may leave bytes of a message half-read.
    pub fn needs_reconnect(&self) -> bool {
        !matches!(self, HislipError::Server { fatal: false, .. })
    }
}

/// How to reach one HiSLIP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HislipOptions {
    pub host: String,
    pub port: u16,
    /// The sub-address, `hislip0` for the instrument itself.
    pub device: String,
    /// Bounds every exchange.
    pub io_timeout: Duration,
    /// Longest message accepted from the instrument; also the size offered to it.
    pub max_reply: usize,
}

impl HislipOptions {
    pub fn new(host: &str, port: u16, device: &str) -> Self {
        HislipOptions {
            host: host.to_string(),
            port,
            device: device.to_string(),
            io_timeout: Duration::from_secs(2),
            max_reply: 4 * 1024 * 1024,
        }
    }
}

/// A HiSLIP session.
pub struct HislipClient {
    sync: TcpStream,
    asynch: TcpStream,
    endpoint: String,
    opts: HislipOptions,
    session_id: u16,
    server_version: u16,
    /// Largest message (header included) the server accepts.
    server_max: u64,
    next_id: u32,
    last_sent: Option<u32>,
    /// The last reply was read to its DataEnd (the RMT-delivered bit of the next message).
    rmt: bool,
}

impl std::fmt::Debug for HislipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HislipClient")
            .field("endpoint", &self.endpoint)
            .field("device", &self.opts.device)
            .field("session_id", &self.session_id)
            .finish()
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl HislipClient {
    pub async fn connect(opts: HislipOptions) -> Result<HislipClient, HislipError> {
        let endpoint = endpoint(&opts.host, opts.port);
        let t = opts.io_timeout;
        let ep = endpoint.clone();
        let fut = async move {
            let mut sync = open(&opts.host, opts.port, &ep).await?;
            let init = Header::new(
                MsgType::Initialize,
                0,
                ((PROTOCOL_VERSION as u32) << 16) | VENDOR_ID as u32,
                opts.device.len() as u64,
            );
            send(&mut sync, &ep, "initialize", init, opts.device.as_bytes()).await?;
            let (h, _) = expect(&mut sync, &ep, "initialize", MsgType::InitializeResponse).await?;
            let server_version = (h.param >> 16) as u16;
            let session_id = (h.param & 0xffff) as u16;
            let mut asynch = open(&opts.host, opts.port, &ep).await?;
            let ai = Header::new(MsgType::AsyncInitialize, 0, session_id as u32, 0);
            send(&mut asynch, &ep, "async initialize", ai, &[]).await?;
            expect(
                &mut asynch,
                &ep,
                "async initialize",
                MsgType::AsyncInitializeResponse,
            )
            .await?;
            let offer = (opts.max_reply as u64).saturating_add(wire::HEADER_LEN as u64);
            let mm = Header::new(MsgType::AsyncMaxMsgSize, 0, 0, 8);
            send(
                &mut asynch,
                &ep,
                "maximum message size",
                mm,
                &offer.to_be_bytes(),
            )
            .await?;
            let (_, payload) = expect(
                &mut asynch,
                &ep,
                "maximum message size",
                MsgType::AsyncMaxMsgSizeResponse,
            )
            .await?;
            let server_max = payload
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                .ok_or_else(|| HislipError::Protocol {
                    endpoint: ep.clone(),
                    op: "maximum message size",
                    message: format!("{}-byte payload where 8 were expected", payload.len()),
                })?;
            Ok(HislipClient {
                sync,
                asynch,
                endpoint: ep,
                opts,
                session_id,
                server_version,
                // Room for at least one payload byte per message, whatever the server says.
                server_max: server_max.max(wire::HEADER_LEN as u64 + 1),
                next_id: FIRST_MESSAGE_ID,
                last_sent: None,
                rmt: false,
            })
        };
        match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(HislipError::Timeout {
                endpoint,
                op: "connect",
                after: t,
            }),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn session_id(&self) -> u16 {
        self.session_id
    }
    /// The server's protocol version, major in the high byte.
    pub fn server_version(&self) -> u16 {
        self.server_version
    }
    /// The largest message the server accepts, header included.
    pub fn server_max_message_size(&self) -> u64 {
        self.server_max
    }
    pub fn set_io_timeout(&mut self, t: Duration) {
        self.opts.io_timeout = t;
    }

    /// Bounds replies read from now on (the size offered at connect stays as it was).
    pub fn set_max_reply(&mut self, max: usize) {
        self.opts.max_reply = max;
    }

    fn timeout(&self, op: &'static str) -> HislipError {
        HislipError::Timeout {
            endpoint: self.endpoint.clone(),
            op,
            after: self.opts.io_timeout,
        }
    }

    /// Send one message: Data messages no larger than the server's maximum, DataEnd last.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), HislipError> {
        const OP: &str = "write";
        let t = self.opts.io_timeout;
        let chunk = (self.server_max - wire::HEADER_LEN as u64).min(usize::MAX as u64) as usize;
        let fut = async {
            let mut rest = data;
            loop {
                let last = rest.len() <= chunk;
                let (piece, tail) = rest.split_at(rest.len().min(chunk));
                let kind = if last {
                    MsgType::DataEnd
                } else {
                    MsgType::Data
                };
                let id = self.next_id;
                let h = Header::new(kind, self.rmt as u8, id, piece.len() as u64);
                self.rmt = false;
                send(&mut self.sync, &self.endpoint, OP, h, piece).await?;
                self.last_sent = Some(id);
                self.next_id = self.next_id.wrapping_add(2);
                if last {
                    return Ok(());
                }
                rest = tail;
            }
        };
        match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(OP)),
        }
    }

    /// Read one reply: Data messages up to and including DataEnd, skipping replies to older
    /// messages.
    pub async fn read(&mut self) -> Result<Vec<u8>, HislipError> {
        const OP: &str = "read";
        let t = self.opts.io_timeout;
        let max = self.opts.max_reply;
        let fut = async {
            let mut out = Vec::new();
            loop {
                let h = wire::read_header(&mut self.sync)
                    .await
                    .map_err(|e| io_err(&self.endpoint, OP, e))?
                    .map_err(|message| HislipError::Protocol {
                        endpoint: self.endpoint.clone(),
                        op: OP,
                        message,
                    })?;
                let is_data = matches!(h.kind, Some(MsgType::Data) | Some(MsgType::DataEnd));
                let current = h.param == ANY_MESSAGE_ID || Some(h.param) == self.last_sent;
                if is_data && !current {
                    tracing::debug!(endpoint = %self.endpoint, id = h.param, "hislip: discarding a reply to an older message");
                    wire::discard_payload(&mut self.sync, h.len)
                        .await
                        .map_err(|e| io_err(&self.endpoint, OP, e))?;
                    continue;
                }
                // Checked before reading, so a corrupt length cannot make us allocate it.
                let room = if is_data {
                    max.saturating_sub(out.len()) as u64
                } else {
                    64 * 1024
                };
                if h.len > room {
                    return Err(HislipError::ReplyTooLong {
                        endpoint: self.endpoint.clone(),
                        max,
                    });
                }
                let payload = wire::read_payload(&mut self.sync, h.len)
                    .await
                    .map_err(|e| io_err(&self.endpoint, OP, e))?;
                match h.kind {
                    Some(MsgType::Data) | Some(MsgType::DataEnd) => {
                        out.extend_from_slice(&payload);
                        if h.kind == Some(MsgType::DataEnd) {
                            self.rmt = true;
                            return Ok(out);
                        }
                    }
                    Some(MsgType::Error) | Some(MsgType::FatalError) => {
                        return Err(server_error(&self.endpoint, OP, &h, &payload));
                    }
                    // Interrupted and the like announce that an older exchange was cut short:
                    // nothing for this read to take.
                    _ => continue,
                }
            }
        };
        match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(OP)),
        }
    }

    /// Device clear: AsyncDeviceClear, then DeviceClearComplete on the synchronous channel
    /// once its pending replies are discarded, until the server's DeviceClearAcknowledge.
    pub async fn clear(&mut self) -> Result<(), HislipError> {
        const OP: &str = "device clear";
        let t = self.opts.io_timeout;
        let fut = async {
            let h = Header::new(MsgType::AsyncDeviceClear, 0, 0, 0);
            send(&mut self.asynch, &self.endpoint, OP, h, &[]).await?;
            let (ack, _) = expect(
                &mut self.asynch,
                &self.endpoint,
                OP,
                MsgType::AsyncDeviceClearAcknowledge,
            )
            .await?;
            let h = Header::new(MsgType::DeviceClearComplete, ack.control, 0, 0);
            send(&mut self.sync, &self.endpoint, OP, h, &[]).await?;
            loop {
                let h = wire::read_header(&mut self.sync)
                    .await
                    .map_err(|e| io_err(&self.endpoint, OP, e))?
                    .map_err(|message| HislipError::Protocol {
                        endpoint: self.endpoint.clone(),
                        op: OP,
                        message,
                    })?;
                match h.kind {
                    Some(MsgType::DeviceClearAcknowledge) => {
                        wire::discard_payload(&mut self.sync, h.len)
                            .await
                            .map_err(|e| io_err(&self.endpoint, OP, e))?;
                        break;
                    }
                    Some(MsgType::Error) | Some(MsgType::FatalError) if h.len <= 64 * 1024 => {
                        let payload = wire::read_payload(&mut self.sync, h.len)
                            .await
                            .map_err(|e| io_err(&self.endpoint, OP, e))?;
                        return Err(server_error(&self.endpoint, OP, &h, &payload));
                    }
                    // Replies the clear makes obsolete.
                    _ => wire::discard_payload(&mut self.sync, h.len)
                        .await
                        .map_err(|e| io_err(&self.endpoint, OP, e))?,
                }
            }
            self.next_id = FIRST_MESSAGE_ID;
            self.last_sent = None;
            self.rmt = false;
            Ok(())
        };
        match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(OP)),
        }
    }
}

fn io_err(endpoint: &str, op: &'static str, e: io::Error) -> HislipError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        HislipError::Closed {
            endpoint: endpoint.to_string(),
            op,
        }
    } else {
        HislipError::Io {
            endpoint: endpoint.to_string(),
            op,
            source: e,
        }
    }
}

fn server_error(endpoint: &str, op: &'static str, h: &Header, payload: &[u8]) -> HislipError {
    let fatal = h.kind == Some(MsgType::FatalError);
    HislipError::Server {
        endpoint: endpoint.to_string(),
        op,
        fatal,
        code: h.control,
        name: if fatal {
            wire::fatal_error_name(h.control)
        } else {
            wire::error_name(h.control)
        },
        message: String::from_utf8_lossy(payload).trim().to_string(),
    }
}

async fn open(host: &str, port: u16, ep: &str) -> Result<TcpStream, HislipError> {
    let s = TcpStream::connect((host, port))
        .await
        .map_err(|e| io_err(ep, "connect", e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn send(
    s: &mut TcpStream,
    ep: &str,
    op: &'static str,
    h: Header,
    payload: &[u8],
) -> Result<(), HislipError> {
    wire::write_message(s, &h, payload)
        .await
        .map_err(|e| io_err(ep, op, e))
}

/// Read the next message, which must be `want` (or an error report from the server).
async fn expect(
    s: &mut TcpStream,
    ep: &str,
    op: &'static str,
    want: MsgType,
) -> Result<(Header, Vec<u8>), HislipError> {
    let h = wire::read_header(s)
        .await
        .map_err(|e| io_err(ep, op, e))?
        .map_err(|message| HislipError::Protocol {
            endpoint: ep.to_string(),
            op,
            message,
        })?;
    // Control answers are small; a huge length here is corruption, not data.
    if h.len > 64 * 1024 {
        return Err(HislipError::Protocol {
            endpoint: ep.to_string(),
            op,
            message: format!("{} message with a {}-byte payload", h.type_name(), h.len),
        });
    }
    let payload = wire::read_payload(s, h.len)
        .await
        .map_err(|e| io_err(ep, op, e))?;
    match h.kind {
        Some(k) if k == want => Ok((h, payload)),
        Some(MsgType::Error) | Some(MsgType::FatalError) => Err(server_error(ep, op, &h, &payload)),
        _ => Err(HislipError::Protocol {
            endpoint: ep.to_string(),
            op,
            message: format!("expected {want:?}, got {}", h.type_name()),
        }),
    }
}
