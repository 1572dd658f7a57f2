//! A simulated VXI-11 instrument server: a portmapper and the core channel on loopback ports,
//! fronting any [`ScpiDevice`] (the built-in simulators).
//!
//! The portmapper answers GETPORT for the core program only, on its own port (ephemeral in
//! tests; a real one sits on 111). [`start`] serves one instrument under the names in the config;
//! [`start_named`] several, each under its own name with its own faults, as a LAN/GPIB gateway
//! or a multi-channel instrument does. Each create_link gets its own device value from the
//! named device's factory, which shares the instrument's state exactly as
//! [`super::scpi_server::serve_tcp`] does.
//!
//! [`MessageDevice`] turns whole messages into SCPI commands and replies; the HiSLIP simulator
//! uses it too. A command that must wait ([`ScpiDevice::hold_until`], `*OPC?` during a
//! measurement) does not hold up the write that carried it: the write returns at once and the
//! read that wants the reply waits, up to the I/O timeout the client sent, like a real
//! instrument.
//!
//! Faults: `silent` runs nothing and answers no read (the client gets error 15, I/O timeout);
//! `delay` holds every reply back (error 15 if longer than the I/O timeout); `garbage` replaces
//! replies; `drop_after` closes the connection after that many messages on one link.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::fault::Faults;
use super::scpi_server::{GARBAGE_REPLY, ScpiDevice, split_commands};
use crate::vxi11::rpc::{self, RpcFailure, XdrReader, XdrWriter};
use crate::vxi11::{self as proto};

/// A device factory shared by every connection.
pub type DeviceFactory = Arc<dyn Fn() -> Box<dyn ScpiDevice> + Send + Sync>;

/// A factory handing every connection a clone of `device`, which shares its state (the
/// simulated instruments keep theirs behind an `Arc`).
pub fn shared_device<D>(device: &D) -> DeviceFactory
where
    D: ScpiDevice + Clone + Sync + 'static,
{
    let device = device.clone();
    Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(device.clone()) })
}

/// One instrument a server offers under a name (a VXI-11 device name, a HiSLIP sub-address),
/// with the faults it shows. Names match case-insensitively, as instruments accept them.
#[derive(Clone)]
pub struct NamedDevice {
    pub name: String,
    pub factory: DeviceFactory,
    pub faults: Faults,
}

impl std::fmt::Debug for NamedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedDevice")
            .field("name", &self.name)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl NamedDevice {
    pub fn new(name: impl Into<String>, factory: DeviceFactory, faults: Faults) -> NamedDevice {
        NamedDevice {
            name: name.into(),
            factory,
            faults,
        }
    }

    /// `names`, all served by `factory` with the same faults.
    pub fn same(names: &[String], factory: &DeviceFactory, faults: &Faults) -> Vec<NamedDevice> {
        names
            .iter()
            .map(|n| NamedDevice::new(n.clone(), factory.clone(), faults.clone()))
            .collect()
    }

    /// The device `name` asks for, if any.
    pub fn find<'a>(devices: &'a [NamedDevice], name: &str) -> Option<&'a NamedDevice> {
        devices.iter().find(|d| d.name.eq_ignore_ascii_case(name))
    }

    /// A server's device table must name every device once: a duplicate would make one of them
    /// unreachable without anyone noticing.
    pub fn check_unique(devices: &[NamedDevice], what: &str) -> io::Result<()> {
        for (i, d) in devices.iter().enumerate() {
            if devices[..i]
                .iter()
                .any(|e| e.name.eq_ignore_ascii_case(&d.name))
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what}: device name {:?} given twice", d.name),
                ));
            }
        }
        Ok(())
    }
}

/// One device's message handling: whole messages in, whole replies out.
pub struct MessageDevice {
    device: Box<dyn ScpiDevice>,
    faults: Faults,
    pending: VecDeque<Item>,
    replies: Vec<String>,
    output: VecDeque<Vec<u8>>,
}

enum Item {
    Command(String),
    EndOfMessage,
}

impl MessageDevice {
    pub fn new(device: Box<dyn ScpiDevice>, faults: Faults) -> Self {
        MessageDevice {
            device,
            faults,
            pending: VecDeque::new(),
            replies: Vec::new(),
            output: VecDeque::new(),
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Take one complete message and run what it can without waiting.
    pub async fn message(&mut self, data: &[u8]) {
        if self.faults.silent {
            return;
        }
        let text = String::from_utf8_lossy(data);
        for line in text.split('\n') {
            for c in split_commands(line.trim_end_matches('\r')) {
                self.pending.push_back(Item::Command(c.to_string()));
            }
        }
        self.pending.push_back(Item::EndOfMessage);
        self.advance(Instant::now()).await;
    }

    /// Run pending commands, waiting for holds that end by `deadline`. False if one is still
    /// held at the deadline.
    async fn advance(&mut self, deadline: Instant) -> bool {
        while let Some(item) = self.pending.front() {
            match item {
                Item::Command(c) => {
                    if let Some(at) = self.device.hold_until(c) {
                        if at > deadline {
                            tokio::time::sleep_until(deadline).await;
                            return false;
                        }
                        tokio::time::sleep_until(at).await;
                    }
                    if let Some(r) = self.device.handle(c) {
                        self.replies.push(r);
                    }
                }
                Item::EndOfMessage => {
                    if !self.replies.is_empty() {
                        let mut reply = if self.faults.garbage {
                            GARBAGE_REPLY.to_vec()
                        } else {
                            let mut r = self.replies.join(";").into_bytes();
                            r.push(b'\n');
                            r
                        };
                        self.replies.clear();
                        reply.shrink_to_fit();
                        self.output.push_back(reply);
                    }
                }
            }
            self.pending.pop_front();
        }
        true
    }

    /// The next reply, waiting at most `timeout` for it. `None`: nothing to send in time.
    pub async fn reply(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let start = Instant::now();
        let deadline = start + timeout;
        if self.output.is_empty() && !self.advance(deadline).await {
            return None;
        }
        if let Some(d) = self.faults.delay {
            if d > timeout {
                tokio::time::sleep_until(deadline).await;
                return None;
            }
            tokio::time::sleep(d).await;
        }
        match self.output.pop_front() {
            Some(r) => Some(r),
            None => {
                tokio::time::sleep_until(deadline).await;
                None
            }
        }
    }

    /// The reply to what was sent, if it produces one: waits for held commands (at most
    /// `timeout`) but not for a reply that will never come.
    pub async fn reply_if_any(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if !self.advance(Instant::now() + timeout).await {
            return None;
        }
        let reply = self.output.pop_front()?;
        if let Some(d) = self.faults.delay {
            tokio::time::sleep(d).await;
        }
        Some(reply)
    }

    /// Put an unread part of a reply back at the front.
    pub fn unread(&mut self, rest: Vec<u8>) {
        if !rest.is_empty() {
            self.output.push_front(rest);
        }
    }

    /// Device clear: forget input not yet run and output not yet read.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.replies.clear();
        self.output.clear();
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vxi11SimConfig {
    /// Must be loopback: the simulator has no access control.
    pub host: IpAddr,
    /// 0 picks an ephemeral port.
    pub portmap_port: u16,
    pub core_port: u16,
    /// Device names create_link accepts (case-insensitive), all served by [`start`]'s one
    /// factory. [`start_named`] ignores them and takes its own.
    pub devices: Vec<String>,
    pub max_recv_size: u32,
    /// Return at most this many bytes per device_read (reason REQCNT until the last piece), as
    /// instruments with small output buffers do.
    pub read_chunk: Option<usize>,
    /// Faults of the devices [`start`] serves ([`start_named`] takes each device's own).
    pub faults: Faults,
}

impl Default for Vxi11SimConfig {
    fn default() -> Self {
        Vxi11SimConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            portmap_port: 0,
            core_port: 0,
            devices: vec!["inst0".to_string()],
            max_recv_size: 4096,
            read_chunk: None,
            faults: Faults::default(),
        }
    }
}

/// A running VXI-11 simulator; dropping it stops the servers and closes every connection.
#[derive(Debug)]
pub struct Vxi11Sim {
    pub portmap: SocketAddr,
    pub core: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Vxi11Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Vxi11Sim {
    /// Stop and wait until the ports are released.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Start the portmapper and the core server with one instrument under `cfg.devices`. Must be
/// called inside a tokio runtime.
pub async fn start(cfg: Vxi11SimConfig, factory: DeviceFactory) -> io::Result<Vxi11Sim> {
    let devices = NamedDevice::same(&cfg.devices, &factory, &cfg.faults);
    start_named(cfg, devices).await
}

/// Start the portmapper and the core server offering `devices`, each under its own name.
pub async fn start_named(cfg: Vxi11SimConfig, devices: Vec<NamedDevice>) -> io::Result<Vxi11Sim> {
    NamedDevice::check_unique(&devices, "vxi-11 sim")?;
    if !cfg.host.is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("vxi-11 sim host {} is not a loopback address", cfg.host),
        ));
    }
    let pmap = bind(cfg.host, cfg.portmap_port, "portmapper").await?;
    let core = bind(cfg.host, cfg.core_port, "core channel").await?;
    let sim = Vxi11Sim {
        portmap: pmap.local_addr()?,
        core: core.local_addr()?,
        tasks: Vec::new(),
    };
    let core_port = sim.core.port();
    let mut sim = sim;
    sim.tasks.push(tokio::spawn(accept_loop(pmap, move |s| {
        serve_portmap(s, core_port)
    })));
    let cfg = Arc::new(cfg);
    let devices: Arc<[NamedDevice]> = devices.into();
    let next_link = Arc::new(AtomicI32::new(1));
    sim.tasks.push(tokio::spawn(accept_loop(core, move |s| {
        serve_core(s, cfg.clone(), devices.clone(), next_link.clone())
    })));
    Ok(sim)
}

/// A port clash names the port and what it was for (`labgate sim` shows it as is).
async fn bind(host: IpAddr, port: u16, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("vxi-11 sim {what}: cannot listen on {host}:{port}: {e}"),
        )
    })
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    let fut = serve(s);
                    conns.spawn(async move {
                        if let Err(e) = fut.await {
                            tracing::debug!(message = "vxi-11 sim connection ended", error = %e);
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(message = "vxi-11 sim accept failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn serve_portmap(mut s: TcpStream, core_port: u16) -> io::Result<()> {
    while let Some(record) = rpc::read_record(&mut s, 64 * 1024).await? {
        let call = rpc::parse_call(&record).map_err(bad)?;
        let reply = if call.prog != rpc::PMAP_PROG {
            rpc::accepted_reply(call.xid, Err(RpcFailure::ProgUnavail))
        } else if call.vers != rpc::PMAP_VERS {
            rpc::accepted_reply(
                call.xid,
                Err(RpcFailure::ProgMismatch {
                    low: rpc::PMAP_VERS,
                    high: rpc::PMAP_VERS,
                }),
            )
        } else {
            match call.proc_ {
                0 => rpc::accepted_reply(call.xid, Ok(&[])),
                rpc::PMAPPROC_GETPORT => {
                    let mut r = XdrReader::new(call.args);
                    match (|| -> Result<_, String> { Ok((r.u32()?, r.u32()?, r.u32()?)) })() {
                        Ok((prog, vers, prot)) => {
                            let port = if prog == proto::CORE_PROG
                                && vers == proto::CORE_VERS
                                && prot == rpc::IPPROTO_TCP
                            {
                                core_port as u32
                            } else {
                                0
                            };
                            let mut w = XdrWriter::new();
                            w.u32(port);
                            rpc::accepted_reply(call.xid, Ok(&w.into_bytes()))
                        }
                        Err(_) => rpc::accepted_reply(call.xid, Err(RpcFailure::GarbageArgs)),
                    }
                }
                _ => rpc::accepted_reply(call.xid, Err(RpcFailure::ProcUnavail)),
            }
        };
        rpc::write_record(&mut s, &reply).await?;
    }
    Ok(())
}

struct SimLink {
    device: MessageDevice,
    /// Bytes of a message whose END has not arrived yet.
    input: Vec<u8>,
    /// Complete messages received, for the device's `drop_after` fault.
    messages: u64,
    drop_after: Option<u64>,
}

/// Largest message a link buffers before END; beyond it device_write fails with error 9.
const MAX_INPUT: usize = 1024 * 1024;

async fn serve_core(
    mut s: TcpStream,
    cfg: Arc<Vxi11SimConfig>,
    devices: Arc<[NamedDevice]>,
    next_link: Arc<AtomicI32>,
) -> io::Result<()> {
    let mut links: HashMap<i32, SimLink> = HashMap::new();
    while let Some(record) = rpc::read_record(&mut s, rpc::MAX_RECORD).await? {
        let call = rpc::parse_call(&record).map_err(bad)?;
        let mut close_after = false;
        let result: Result<Vec<u8>, RpcFailure> = if call.prog != proto::CORE_PROG {
            Err(RpcFailure::ProgUnavail)
        } else if call.vers != proto::CORE_VERS {
            Err(RpcFailure::ProgMismatch {
                low: proto::CORE_VERS,
                high: proto::CORE_VERS,
            })
        } else {
            let mut r = XdrReader::new(call.args);
            let mut w = XdrWriter::new();
            let handled: Result<bool, String> = async {
                match call.proc_ {
                    0 => {}
                    proto::CREATE_LINK => {
                        let _client = r.i32()?;
                        let _lock = r.bool()?;
                        let _lock_timeout = r.u32()?;
                        let name = String::from_utf8_lossy(r.opaque()?).into_owned();
                        if let Some(d) = NamedDevice::find(&devices, &name) {
                            let id = next_link.fetch_add(1, Ordering::Relaxed);
                            links.insert(
                                id,
                                SimLink {
                                    device: MessageDevice::new((d.factory)(), d.faults.clone()),
                                    input: Vec::new(),
                                    messages: 0,
                                    drop_after: d.faults.drop_after,
                                },
                            );
                            w.i32(0).i32(id).u32(0).u32(cfg.max_recv_size);
                        } else {
                            w.i32(3).i32(0).u32(0).u32(0);
                        }
                    }
                    proto::DEVICE_WRITE => {
                        let lid = r.i32()?;
                        let _io = r.u32()?;
                        let _lock = r.u32()?;
                        let flags = r.i32()?;
                        let data = r.opaque()?;
                        match links.get_mut(&lid) {
                            None => {
                                w.i32(4).u32(0);
                            }
                            Some(_) if data.len() > cfg.max_recv_size as usize => {
                                w.i32(5).u32(0);
                            }
                            Some(l) if l.input.len() + data.len() > MAX_INPUT => {
                                l.input.clear();
                                w.i32(9).u32(0);
                            }
                            Some(l) => {
                                l.input.extend_from_slice(data);
                                if flags & proto::FLAG_END != 0 {
                                    let msg = std::mem::take(&mut l.input);
                                    l.device.message(&msg).await;
                                    l.messages += 1;
                                    if l.drop_after.is_some_and(|m| l.messages >= m) {
                                        close_after = true;
                                    }
                                }
                                w.i32(0).u32(data.len() as u32);
                            }
                        }
                    }
                    proto::DEVICE_READ => {
                        let lid = r.i32()?;
                        let request = r.u32()? as usize;
                        let io_ms = r.u32()?;
                        let _lock = r.u32()?;
                        let flags = r.i32()?;
                        let term = r.i32()?;
                        match links.get_mut(&lid) {
                            None => {
                                w.i32(4).i32(0).opaque(&[]);
                            }
                            Some(l) => {
                                let timeout = Duration::from_millis(io_ms as u64);
                                match l.device.reply(timeout).await {
                                    None => {
                                        w.i32(15).i32(0).opaque(&[]);
                                    }
                                    Some(mut msg) => {
                                        let term = (flags & proto::FLAG_TERMCHRSET != 0)
                                            .then_some(term as u8);
                                        let limit = request
                                            .max(1)
                                            .min(cfg.read_chunk.unwrap_or(usize::MAX).max(1));
                                        let mut cut = msg.len().min(limit);
                                        let mut reason = 0;
                                        if let Some(t) = term
                                            && let Some(i) = msg[..cut].iter().position(|b| *b == t)
                                        {
                                            cut = i + 1;
                                            reason |= proto::REASON_CHR;
                                        }
                                        let rest = msg.split_off(cut);
                                        if rest.is_empty() {
                                            reason |= proto::REASON_END;
                                        } else if reason == 0 {
                                            reason = proto::REASON_REQCNT;
                                        }
                                        l.device.unread(rest);
                                        w.i32(0).i32(reason).opaque(&msg);
                                    }
                                }
                            }
                        }
                    }
                    proto::DEVICE_CLEAR => {
                        let lid = r.i32()?;
                        match links.get_mut(&lid) {
                            None => {
                                w.i32(4);
                            }
                            Some(l) => {
                                l.input.clear();
                                l.device.clear();
                                w.i32(0);
                            }
                        }
                    }
                    proto::DESTROY_LINK => {
                        let lid = r.i32()?;
                        w.i32(if links.remove(&lid).is_some() { 0 } else { 4 });
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            }
            .await;
            match handled {
                Ok(true) => Ok(w.into_bytes()),
                Ok(false) => Err(RpcFailure::ProcUnavail),
                Err(_) => Err(RpcFailure::GarbageArgs),
            }
        };
        let reply = match &result {
            Ok(b) => rpc::accepted_reply(call.xid, Ok(b)),
            Err(f) => rpc::accepted_reply(call.xid, Err(f.clone())),
        };
        rpc::write_record(&mut s, &reply).await?;
        if close_after {
            return Ok(());
        }
    }
    Ok(())
}
