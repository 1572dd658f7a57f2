//! A simulated HiSLIP instrument server on one loopback port, fronting any [`ScpiDevice`]:
//! one instrument under the config's sub-addresses ([`start`]), or several, each under its own
//! sub-address with its own faults ([`start_named`]).
//!
//! The first message on a connection decides its role: Initialize opens a session (the
//! synchronous channel), AsyncInitialize with that session's id attaches the asynchronous one.
//! Replies are sent as soon as the device has them, cut into Data messages no larger than the
//! client's AsyncMaxMsgSize, the last one DataEnd, each carrying the id of the message it
//! answers. Device clear follows IVI-6.1: AsyncDeviceClear is acknowledged on the asynchronous
//! channel, and the synchronous one is cleared when DeviceClearComplete arrives.
//!
//! Faults: those of [`Faults`] as in [`super::vxi11::MessageDevice`] (`silent`: no reply, so
//! the client times out), plus [`HislipSimConfig::fatal_after`]: after that many messages the
//! server sends FatalError and closes the session, as an instrument does that lost track.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::fault::Faults;
use super::vxi11::{DeviceFactory, MessageDevice, NamedDevice};
use crate::hislip::wire::{self, Header, MsgType};

/// How long the server waits for a held reply (`*OPC?` during a measurement) before giving up
/// on it; far above any simulated measurement.
const REPLY_WAIT: Duration = Duration::from_secs(600);
/// Largest message the server accepts (header included), offered in AsyncMaxMsgSizeResponse.
pub const SERVER_MAX_MESSAGE: u64 = 1024 * 1024;
const DEFAULT_CLIENT_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct HislipSimConfig {
    /// Must be loopback.
    pub host: IpAddr,
    /// 0 picks an ephemeral port.
    pub port: u16,
    /// Sub-addresses Initialize accepts (case-insensitive), all served by [`start`]'s one
    /// factory. [`start_named`] ignores them and takes its own.
    pub devices: Vec<String>,
    /// Faults of the devices [`start`] serves ([`start_named`] takes each device's own).
    pub faults: Faults,
    /// Cut replies into Data messages of at most this many payload bytes (besides the
    /// client's maximum message size).
    pub reply_chunk: Option<usize>,
    /// Send FatalError after this many messages on a session, then close it.
    pub fatal_after: Option<u64>,
}

impl Default for HislipSimConfig {
    fn default() -> Self {
        HislipSimConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            devices: vec!["hislip0".to_string()],
            faults: Faults::default(),
            fatal_after: None,
            reply_chunk: None,
        }
    }
}

/// A running HiSLIP simulator; dropping it stops the server and closes every connection.
#[derive(Debug)]
pub struct HislipSim {
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Drop for HislipSim {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl HislipSim {
    /// Stop and wait until the port is released.
    pub async fn shutdown(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Per session: the client's maximum message size, which the asynchronous channel learns and
/// the synchronous one uses.
#[derive(Default)]
struct Sessions {
    next_id: u16,
    client_max: HashMap<u16, Arc<AtomicU64>>,
}

/// Serve one instrument under `cfg.devices`. Must be called inside a tokio runtime.
pub async fn start(cfg: HislipSimConfig, factory: DeviceFactory) -> io::Result<HislipSim> {
    let devices = NamedDevice::same(&cfg.devices, &factory, &cfg.faults);
    start_named(cfg, devices).await
}

/// Serve `devices`, each under its own sub-address.
pub async fn start_named(cfg: HislipSimConfig, devices: Vec<NamedDevice>) -> io::Result<HislipSim> {
    NamedDevice::check_unique(&devices, "hislip sim")?;
    if !cfg.host.is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("hislip sim host {} is not a loopback address", cfg.host),
        ));
    }
    let listener = TcpListener::bind((cfg.host, cfg.port)).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "hislip sim: cannot listen on {}:{}: {e}",
                cfg.host, cfg.port
            ),
        )
    })?;
    let addr = listener.local_addr()?;
    let cfg = Arc::new(cfg);
    let devices: Arc<[NamedDevice]> = devices.into();
    let sessions = Arc::new(Mutex::new(Sessions {
        next_id: 1,
        ..Default::default()
    }));
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        let (cfg, devices, sessions) = (cfg.clone(), devices.clone(), sessions.clone());
                        conns.spawn(async move {
                            if let Err(e) = serve_conn(s, cfg, devices, sessions).await {
                                tracing::debug!(message = "hislip sim connection ended", error = %e);
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(message = "hislip sim accept failed", error = %e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(HislipSim {
        addr,
        task: Some(task),
    })
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn fatal(s: &mut TcpStream, code: u8, text: &str) -> io::Result<()> {
    let h = Header::new(MsgType::FatalError, code, 0, text.len() as u64);
    wire::write_message(s, &h, text.as_bytes()).await
}

async fn serve_conn(
    mut s: TcpStream,
    cfg: Arc<HislipSimConfig>,
    devices: Arc<[NamedDevice]>,
    sessions: Arc<Mutex<Sessions>>,
) -> io::Result<()> {
    let h = match wire::read_header(&mut s).await? {
        Ok(h) => h,
        Err(e) => {
            fatal(&mut s, 1, &e).await?;
            return Err(bad(e));
        }
    };
    if h.len > 1024 {
        fatal(&mut s, 1, "initialization payload too long").await?;
        return Ok(());
    }
    let payload = wire::read_payload(&mut s, h.len).await?;
    match h.kind {
        Some(MsgType::Initialize) => {
            let sub = String::from_utf8_lossy(&payload).into_owned();
            let Some(device) = NamedDevice::find(&devices, &sub) else {
                fatal(&mut s, 3, &format!("no device with sub-address {sub:?}")).await?;
                return Ok(());
            };
            let (id, client_max) = {
                let mut g = sessions.lock().unwrap_or_else(|p| p.into_inner());
                let id = g.next_id;
                g.next_id = g.next_id.wrapping_add(1).max(1);
                let max = Arc::new(AtomicU64::new(DEFAULT_CLIENT_MAX));
                g.client_max.insert(id, max.clone());
                (id, max)
            };
            let resp = Header::new(
                MsgType::InitializeResponse,
                0,
                ((crate::hislip::PROTOCOL_VERSION as u32) << 16) | id as u32,
                0,
            );
            wire::write_message(&mut s, &resp, &[]).await?;
            let device = MessageDevice::new((device.factory)(), device.faults.clone());
            let result = serve_sync(&mut s, &cfg, device, client_max).await;
            sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .client_max
                .remove(&id);
            result
        }
        Some(MsgType::AsyncInitialize) => {
            let id = (h.param & 0xffff) as u16;
            let max = sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .client_max
                .get(&id)
                .cloned();
            let Some(max) = max else {
                fatal(&mut s, 3, &format!("no session {id}")).await?;
                return Ok(());
            };
            let resp = Header::new(
                MsgType::AsyncInitializeResponse,
                0,
                u16::from_be_bytes(*b"LS") as u32,
                0,
            );
            wire::write_message(&mut s, &resp, &[]).await?;
            serve_async(&mut s, max).await
        }
        _ => {
            fatal(&mut s, 3, &format!("{} before Initialize", h.type_name())).await?;
            Ok(())
        }
    }
}

async fn serve_async(s: &mut TcpStream, client_max: Arc<AtomicU64>) -> io::Result<()> {
    loop {
        let h = match wire::read_header(s).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                fatal(s, 1, &e).await?;
                return Err(bad(e));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if h.len > 64 * 1024 {
            fatal(s, 1, "control message payload too long").await?;
            return Ok(());
        }
        let payload = wire::read_payload(s, h.len).await?;
        let (resp, body): (Header, Vec<u8>) = match h.kind {
            Some(MsgType::AsyncMaxMsgSize) => {
                let Some(b) = payload.get(..8) else {
                    fatal(s, 1, "AsyncMaxMsgSize without an 8-byte size").await?;
                    return Ok(());
                };
                let size = u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                client_max.store(size.max(wire::HEADER_LEN as u64 + 1), Ordering::Relaxed);
                (
                    Header::new(MsgType::AsyncMaxMsgSizeResponse, 0, 0, 8),
                    SERVER_MAX_MESSAGE.to_be_bytes().to_vec(),
                )
            }
            Some(MsgType::AsyncDeviceClear) => (
                Header::new(MsgType::AsyncDeviceClearAcknowledge, 0, 0, 0),
                Vec::new(),
            ),
            Some(MsgType::AsyncStatusQuery) => (
                Header::new(MsgType::AsyncStatusResponse, 0, 0, 0),
                Vec::new(),
            ),
            Some(MsgType::AsyncLockInfo) => (
                Header::new(MsgType::AsyncLockInfoResponse, 0, 0, 0),
                Vec::new(),
            ),
            _ => {
                let text = format!("{} not supported", h.type_name());
                (
                    Header::new(MsgType::Error, 1, 0, text.len() as u64),
                    text.into_bytes(),
                )
            }
        };
        wire::write_message(s, &resp, &body).await?;
    }
}

async fn serve_sync(
    s: &mut TcpStream,
    cfg: &HislipSimConfig,
    mut device: MessageDevice,
    client_max: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut input = Vec::new();
    let mut messages = 0u64;
    loop {
        let h = match wire::read_header(s).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                fatal(s, 1, &e).await?;
                return Err(bad(e));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if h.len + wire::HEADER_LEN as u64 > SERVER_MAX_MESSAGE {
            let text = format!("message of {} bytes exceeds the maximum", h.len);
            let eh = Header::new(MsgType::Error, 4, 0, text.len() as u64);
            // The payload must still be consumed to stay in step; discard it in pieces.
            let mut left = h.len;
            while left > 0 {
                let n = left.min(64 * 1024);
                wire::read_payload(s, n).await?;
                left -= n;
            }
            wire::write_message(s, &eh, text.as_bytes()).await?;
            continue;
        }
        let payload = wire::read_payload(s, h.len).await?;
        match h.kind {
            Some(MsgType::Data) | Some(MsgType::DataEnd) => {
                if input.len() + payload.len() > SERVER_MAX_MESSAGE as usize * 4 {
                    input.clear();
                    let text = "message too large";
                    let eh = Header::new(MsgType::Error, 4, 0, text.len() as u64);
                    wire::write_message(s, &eh, text.as_bytes()).await?;
                    continue;
                }
                input.extend_from_slice(&payload);
                if h.kind != Some(MsgType::DataEnd) {
                    continue;
                }
                let id = h.param;
                let msg = std::mem::take(&mut input);
                messages += 1;
                if cfg.fatal_after.is_some_and(|n| messages >= n) {
                    fatal(s, 0, "simulated fatal error").await?;
                    return Ok(());
                }
                device.message(&msg).await;
                if let Some(reply) = device.reply_if_any(REPLY_WAIT).await {
                    let max = (client_max.load(Ordering::Relaxed) as usize - wire::HEADER_LEN)
                        .min(cfg.reply_chunk.unwrap_or(usize::MAX));
                    let mut chunks = reply.chunks(max.max(1)).peekable();
                    if reply.is_empty() {
                        wire::write_message(s, &Header::new(MsgType::DataEnd, 0, id, 0), &[])
                            .await?;
                    }
                    while let Some(c) = chunks.next() {
                        let kind = if chunks.peek().is_none() {
                            MsgType::DataEnd
                        } else {
                            MsgType::Data
                        };
                        wire::write_message(s, &Header::new(kind, 0, id, c.len() as u64), c)
                            .await?;
                    }
                }
                if device.faults().drop_after.is_some_and(|n| messages >= n) {
                    return Ok(());
                }
            }
            Some(MsgType::DeviceClearComplete) => {
                input.clear();
                device.clear();
                let ack = Header::new(MsgType::DeviceClearAcknowledge, h.control, 0, 0);
                wire::write_message(s, &ack, &[]).await?;
            }
            Some(MsgType::Trigger) => {}
            _ => {
                let text = format!("{} not supported", h.type_name());
                let eh = Header::new(MsgType::Error, 1, 0, text.len() as u64);
                wire::write_message(s, &eh, text.as_bytes()).await?;
            }
        }
    }
}
