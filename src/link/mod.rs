//! Links: one task per physical connection.
//!
//! A [`Link`] task owns the TCP socket or serial port and runs one request at a time, so an RS-485
//! bus shared by several Modbus unit ids never carries two interleaved queries. Callers hold a
//! cheap [`LinkHandle`] and get an answer or a typed [`LinkError`], never a hang: every exchange
//! runs under a timeout, and after an I/O error, a timeout or a mismatched reply the task drops
//! the connection (so a late reply cannot be mistaken for the next one) and reconnects with
//! capped exponential backoff.
//!
//! SCPI runs either over a byte stream with terminator framing (TCP, serial, a serial device
//! server) or over a message transport (USB-TMC, Prologix GPIB, VXI-11, HiSLIP) through the
//! [`message::MessageIo`] seam; the reconnect rules are the same for both. On a Prologix link
//! several instruments share the adapter, each at its GPIB address: their handles come from
//! [`LinkHandle::at_address`] and each address is prepared (init, identity) on first use.

pub mod backoff;
pub mod hislip;
pub mod message;
pub mod prologix;
pub mod transport;
pub mod usbtmc;
pub mod vxi11;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::schema::{LinkConfig, LinkProtocol, Transport};
use crate::modbus::ops::{self, ModbusError, ModbusOp, ModbusReply};
use crate::scpi::session::{Framing, ScpiConn, ScpiIoError};
use backoff::Backoff;
use message::{MessageError, MessageIo, PROBE_GRACE, ReadSpec};
use transport::Stream;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a caller waits for its turn on a busy link before giving up.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
const QUEUE_DEPTH: usize = 256;

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not connected yet: the first attempt is in progress or about to be.
    Connecting,
    Connected,
    /// The connection was lost or could not be made; retrying with backoff.
    Reconnecting,
    /// The connection works but the far end is not what it should be (wrong identity), or the
    /// port cannot be opened for a reason retrying will not fix soon (permission). Still retried,
    /// at the slowest backoff.
    Failed,
    /// The link task has ended (shutdown).
    Closed,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Reconnecting => "reconnecting",
            LinkState::Failed => "failed",
            LinkState::Closed => "closed",
        })
    }
}

/// A snapshot of a link, published after every change.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub state: LinkState,
    pub endpoint: String,
    pub last_error: Option<String>,
    pub connected_since: Option<SystemTime>,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Failed connection attempts since the last success.
    pub attempt: u32,
    /// The `*IDN?` (or identity quantity) reply seen on the current connection.
    pub identity: Option<String>,
    /// Requests answered and failed since the link started. Live in [`LinkHandle::status`]; a
    /// [`LinkHandle::watch`] snapshot carries them as of its last state change, because
    /// publishing every request through the watch would wake every watcher per request.
    pub requests_ok: u64,
    pub requests_failed: u64,
}

/// Per-request counters, kept outside the status watch: they change on every request, the rest
/// of the status only when the connection does.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Why a request on a link did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("link {link} ({endpoint}) is {state}: {last_error}; next attempt in {retry_in:?}")]
    Down {
        link: String,
        endpoint: String,
        state: LinkState,
        last_error: String,
        retry_in: Duration,
    },
    #[error("link {link} ({endpoint}): no reply to `{request}` within {timeout:?}")]
    Timeout {
        link: String,
        endpoint: String,
        request: String,
        timeout: Duration,
    },
    #[error("link {link} ({endpoint}): {request}: {message}")]
    Io {
        link: String,
        endpoint: String,
        request: String,
        message: String,
    },
    /// The instrument answered with something that is not a reply to the request.
    #[error("link {link} ({endpoint}): {request}: mismatched reply: {message}")]
    Mismatch {
        link: String,
        endpoint: String,
        request: String,
        message: String,
    },
    /// A Modbus exception: the device understood and said no; the link stays up.
    #[error("link {link}: unit {unit}: {request}: modbus exception {code:#04x} ({name})")]
    Exception {
        link: String,
        unit: u8,
        request: String,
        code: u8,
        name: &'static str,
    },
    #[error("link {link}: {message}")]
    Busy { link: String, message: String },
    #[error("link {link} speaks {protocol}, which cannot carry a {wanted} request")]
    WrongProtocol {
        link: String,
        protocol: LinkProtocol,
        wanted: &'static str,
    },
    #[error("link {link} is closed")]
    Closed { link: String },
}

impl LinkError {
    /// True when the instrument itself refused the request (the link is fine).
    pub fn is_device_refusal(&self) -> bool {
        matches!(self, LinkError::Exception { .. })
    }
}

/// One SCPI exchange step.
#[derive(Debug, Clone)]
pub enum ScpiStep {
    Write(String),
    Query { text: String, timeout: Duration },
}

/// How a SCPI link prepares each new connection: framing, init commands and the identity check.
#[derive(Debug, Clone, Default)]
pub struct ScpiSetup {
    pub framing: Framing,
    pub init: Vec<String>,
    /// Identity query and the substrings its reply must contain (case-insensitive).
    pub identity: Option<(String, Vec<String>)>,
}

/// Link settings resolved from the config, with defaults applied.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub name: String,
    pub protocol: LinkProtocol,
    pub transport: Transport,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Minimum silence between Modbus RTU frames (t3.5 plus any configured extra).
    pub inter_frame: Duration,
    pub queue_timeout: Duration,
}

impl LinkSpec {
    pub fn from_config(name: &str, c: &LinkConfig) -> LinkSpec {
        // A serial device server keeps the serial line's timing: the frames still cross it.
        let t35 = match (transport::serial_baud(&c.transport), c.protocol) {
            (Some(baud), LinkProtocol::ModbusRtu) => transport::t35(baud),
            _ => Duration::ZERO,
        };
        LinkSpec {
            name: name.to_string(),
            protocol: c.protocol,
            transport: c.transport.clone(),
            timeout: c.timeout.unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            backoff_initial: c.backoff_initial.unwrap_or(DEFAULT_BACKOFF_INITIAL),
            backoff_max: c.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
            inter_frame: t35 + c.inter_frame_delay.unwrap_or(Duration::ZERO),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

/// A job and the instant after which it is no longer worth serving: its caller has waited the
/// link's queue timeout behind others, and is told the link is overloaded instead.
struct Queued {
    job: Job,
    serve_by: Instant,
}

enum Job {
    Scpi {
        address: Option<u8>,
        steps: Vec<ScpiStep>,
        reply: oneshot::Sender<Result<Vec<Option<String>>, LinkError>>,
    },
    Modbus {
        unit: u8,
        op: ModbusOp,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<ModbusReply, LinkError>>,
    },
}

/// A cheap, cloneable way to use a link.
#[derive(Clone)]
pub struct LinkHandle {
    name: Arc<str>,
    protocol: LinkProtocol,
    /// Bus address this handle's SCPI requests go to (Prologix GPIB address).
    address: Option<u8>,
    queue_timeout: Duration,
    default_timeout: Duration,
    tx: mpsc::Sender<Queued>,
    status: watch::Receiver<LinkStatus>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl LinkHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn protocol(&self) -> LinkProtocol {
        self.protocol
    }

    /// A handle on the same link whose SCPI requests go to the instrument at bus address
    /// `address` (its GPIB address on a Prologix link). The link must have been started with
    /// [`spawn_addressed`] knowing that address, or requests fail.
    pub fn at_address(&self, address: u8) -> LinkHandle {
        LinkHandle {
            address: Some(address),
            ..self.clone()
        }
    }

    /// The bus address this handle's requests go to, if any.
    pub fn address(&self) -> Option<u8> {
        self.address
    }

    /// The link's default request timeout.
    pub fn timeout(&self) -> Duration {
        self.default_timeout
    }

    pub fn status(&self) -> LinkStatus {
        let mut s = self.status.borrow().clone();
        s.requests_ok = self.counters.ok.load(Ordering::Relaxed);
        s.requests_failed = self.counters.failed.load(Ordering::Relaxed);
        s
    }

    /// Subscribe to status changes.
    pub fn watch(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Run SCPI steps back to back, with nothing else on the link in between. Returns one entry
    /// per step: `Some(reply)` for queries, `None` for writes.
    pub async fn scpi(&self, steps: Vec<ScpiStep>) -> Result<Vec<Option<String>>, LinkError> {
        if self.protocol != LinkProtocol::Scpi {
            return Err(LinkError::WrongProtocol {
                link: self.name.to_string(),
                protocol: self.protocol,
                wanted: "scpi",
            });
        }
        let (reply, rx) = oneshot::channel();
        self.submit(
            Job::Scpi {
                address: self.address,
                steps,
                reply,
            },
            rx,
        )
        .await
    }

    /// One Modbus transaction with unit `unit`; `timeout` overrides the link default.
    pub async fn modbus(
        &self,
        unit: u8,
        op: ModbusOp,
        timeout: Option<Duration>,
    ) -> Result<ModbusReply, LinkError> {
        if self.protocol == LinkProtocol::Scpi {
            return Err(LinkError::WrongProtocol {
                link: self.name.to_string(),
                protocol: self.protocol,
                wanted: "modbus",
            });
        }
        let (reply, rx) = oneshot::channel();
        self.submit(
            Job::Modbus {
                unit,
                op,
                timeout,
                reply,
            },
            rx,
        )
        .await
    }

    async fn submit<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, LinkError>>,
    ) -> Result<T, LinkError> {
        let closed = || LinkError::Closed {
            link: self.name.to_string(),
        };
        // No timer on the way back: the link task bounds every exchange it serves and answers a
        // job that waited past `serve_by` with `Busy` unserved, so the reply comes within the
        // queue timeout plus one exchange. Only a full queue is waited on here, under the same
        // deadline. A polled link runs this per request: a timer here cost a tenth of its rate.
        let serve_by = Instant::now() + self.queue_timeout;
        match self.tx.try_send(Queued { job, serve_by }) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(closed()),
            Err(TrySendError::Full(queued)) => {
                match tokio::time::timeout_at(serve_by, self.tx.send(queued)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        return Err(overloaded(&self.name, self.queue_timeout));
                    }
                }
            }
        }
        rx.await.map_err(|_| closed())?
    }
}

fn overloaded(link: &str, queue_timeout: Duration) -> LinkError {
    LinkError::Busy {
        link: link.to_string(),
        message: format!(
            "request waited {queue_timeout:?} behind others without being served: link overloaded"
        ),
    }
}

enum Session {
    Scpi(ScpiConn<Stream>),
    Message(Box<dyn MessageIo>),
    Modbus(tokio_modbus::client::Context),
}

/// Start the task that owns a link. The task ends when every handle is dropped.
pub fn spawn(spec: LinkSpec, scpi: Option<ScpiSetup>) -> LinkHandle {
    spawn_inner(spec, scpi.unwrap_or_default(), BTreeMap::new())
}

/// Start a link whose SCPI instruments share a bus, each at its own address with its own
/// driver setup (a Prologix adapter). Use [`LinkHandle::at_address`] for each instrument.
pub fn spawn_addressed(spec: LinkSpec, setups: BTreeMap<u8, ScpiSetup>) -> LinkHandle {
    spawn_inner(spec, ScpiSetup::default(), setups)
}

fn spawn_inner(spec: LinkSpec, scpi: ScpiSetup, by_address: BTreeMap<u8, ScpiSetup>) -> LinkHandle {
    let endpoint = transport::describe(&spec.transport);
    let (status_tx, status_rx) = watch::channel(LinkStatus {
        state: LinkState::Connecting,
        endpoint: endpoint.clone(),
        last_error: None,
        connected_since: None,
        reconnects: 0,
        attempt: 0,
        identity: None,
        requests_ok: 0,
        requests_failed: 0,
    });
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let handle = LinkHandle {
        name: Arc::from(spec.name.as_str()),
        protocol: spec.protocol,
        address: None,
        queue_timeout: spec.queue_timeout,
        default_timeout: spec.timeout,
        tx,
        status: status_rx,
        counters: counters.clone(),
    };
    let actor = Actor {
        backoff: Backoff::new(spec.backoff_initial, spec.backoff_max),
        spec,
        endpoint,
        scpi,
        by_address,
        prepared: BTreeSet::new(),
        session: None,
        next_attempt: Instant::now(),
        last_frame: None,
        ever_connected: false,
        status: status_tx,
        counters,
    };
    tokio::spawn(actor.run(rx));
    handle
}

struct Actor {
    spec: LinkSpec,
    endpoint: String,
    scpi: ScpiSetup,
    /// Per-address setups of a shared bus; empty on a link with one instrument.
    by_address: BTreeMap<u8, ScpiSetup>,
    /// Addresses whose init and identity check ran on the current connection.
    prepared: BTreeSet<u8>,
    session: Option<Session>,
    backoff: Backoff,
    next_attempt: Instant,
    last_frame: Option<Instant>,
    ever_connected: bool,
    status: watch::Sender<LinkStatus>,
    counters: Arc<Counters>,
}

/// What went wrong in one exchange, and whether the connection must go.
struct Failure {
    error: LinkError,
    drop_connection: bool,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        loop {
            let reconnect_due = self.session.is_none();
            tokio::select! {
                biased;
                job = rx.recv() => match job {
                    Some(Queued { job, serve_by }) => {
                        if Instant::now() > serve_by {
                            self.refuse(job, overloaded(&self.spec.name, self.spec.queue_timeout));
                        } else {
                            self.serve(job).await;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(self.next_attempt), if reconnect_due => {
                    self.connect().await;
                }
            }
        }
        if let Some(Session::Modbus(mut ctx)) = self.session.take() {
            use tokio_modbus::client::Client;
            let _ = ctx.disconnect().await;
        }
        self.publish(|s| s.state = LinkState::Closed);
    }

    async fn connect(&mut self) {
        let result = tokio::time::timeout(self.spec.connect_timeout, self.open_session()).await;
        let outcome = match result {
            Ok(Ok((session, identity))) => Ok((session, identity)),
            Ok(Err((msg, permanent))) => Err((msg, permanent)),
            Err(_) => Err((
                format!("connect timed out after {:?}", self.spec.connect_timeout),
                false,
            )),
        };
        match outcome {
            Ok((session, identity)) => {
                self.session = Some(session);
                self.backoff.reset();
                let was_connected = self.ever_connected;
                self.ever_connected = true;
                tracing::info!(link = %self.spec.name, endpoint = %self.endpoint, "link connected");
                self.publish(|s| {
                    s.state = LinkState::Connected;
                    s.connected_since = Some(SystemTime::now());
                    s.attempt = 0;
                    s.identity = identity;
                    if was_connected {
                        s.reconnects += 1;
                    }
                });
            }
            Err((message, permanent)) => {
                let delay = if permanent {
                    self.spec.backoff_max
                } else {
                    // Never retry a failed connect immediately.
                    self.backoff.next_delay().max(self.spec.backoff_initial)
                };
                self.next_attempt = Instant::now() + delay;
                tracing::warn!(link = %self.spec.name, endpoint = %self.endpoint, error = %message, retry_in = ?delay, "link connect failed");
                let state = if permanent {
                    LinkState::Failed
                } else if self.ever_connected {
                    LinkState::Reconnecting
                } else {
                    LinkState::Connecting
                };
                self.publish(|s| {
                    s.state = state;
                    s.last_error = Some(message);
                    s.attempt += 1;
                    s.identity = None;
                });
            }
        }
    }

    /// Open the transport and prepare the protocol session. `Err((message, permanent))`.
    async fn open_session(&mut self) -> Result<(Session, Option<String>), (String, bool)> {
        self.prepared.clear();
        if message::is_message_transport(&self.spec.transport) {
            return self.open_message_session().await;
        }
        let mut stream = transport::open(&self.spec.transport).await.map_err(|e| {
            let permanent = e.kind() == std::io::ErrorKind::PermissionDenied;
            (format!("cannot open {}: {e}", self.endpoint), permanent)
        })?;
        if matches!(self.spec.transport, Transport::SerialServer { .. }) {
            // A device server may hand the new connection what the serial line said while no
            // one was connected (the late reply the last session gave up on).
            transport::drain_stale(&mut stream).await;
        }
        match self.spec.protocol {
            LinkProtocol::Scpi => {
                let mut conn = ScpiConn::new(stream, self.scpi.framing.clone());
                for cmd in &self.scpi.init {
                    tokio::time::timeout(self.spec.timeout, conn.write(cmd))
                        .await
                        .map_err(|_| (format!("init `{cmd}`: write timed out"), false))?
                        .map_err(|e| (format!("init `{cmd}`: {e}"), false))?;
                }
                let mut identity = None;
                if let Some((query, contains)) = &self.scpi.identity {
                    let reply = tokio::time::timeout(self.spec.timeout, conn.query(query))
                        .await
                        .map_err(|_| {
                            (
                                format!(
                                    "identity query `{query}`: no reply within {:?}",
                                    self.spec.timeout
                                ),
                                false,
                            )
                        })?
                        .map_err(|e| (format!("identity query `{query}`: {e}"), false))?;
                    crate::scpi::parse::check_identity(&reply, contains)
                        .map_err(|e| (format!("wrong instrument: {e}"), true))?;
                    identity = Some(reply);
                }
                Ok((Session::Scpi(conn), identity))
            }
            LinkProtocol::ModbusTcp => Ok((
                Session::Modbus(tokio_modbus::client::tcp::attach(stream)),
                None,
            )),
            LinkProtocol::ModbusRtu => Ok((
                Session::Modbus(tokio_modbus::client::rtu::attach(stream)),
                None,
            )),
        }
    }

    async fn open_message_session(&mut self) -> Result<(Session, Option<String>), (String, bool)> {
        let mut io = message::open(&self.spec.transport, self.spec.timeout).await?;
        if self.ever_connected {
            // Recovering from a failure: the device may still hold half a reply or a queued
            // command for the connection that went away.
            let bound = self.spec.timeout + PROBE_GRACE;
            match tokio::time::timeout(bound, io.clear()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(link = %self.spec.name, error = %e, "device clear failed")
                }
                Err(_) => tracing::debug!(link = %self.spec.name, "device clear timed out"),
            }
        }
        if !self.by_address.is_empty() || message::is_addressed_transport(&self.spec.transport) {
            // Each address is prepared on first use, so one absent instrument does not keep
            // the others on the bus from working.
            let info = io.peer_info();
            return Ok((Session::Message(io), info));
        }
        let setup = self.scpi.clone();
        let identity = prepare_message(io.as_mut(), &setup, self.spec.timeout).await?;
        Ok((Session::Message(io), identity))
    }

    async fn serve(&mut self, job: Job) {
        if self.session.is_none() {
            if Instant::now() >= self.next_attempt {
                self.connect().await;
            }
            if self.session.is_none() {
                self.refuse(job, self.down_error());
                return;
            }
        }
        match job {
            Job::Scpi {
                address,
                steps,
                reply,
            } => {
                let result = self.run_scpi(address, &steps).await;
                let _ = reply.send(self.settle(result));
            }
            Job::Modbus {
                unit,
                op,
                timeout,
                reply,
            } => {
                let result = self.run_modbus(unit, &op, timeout).await;
                let _ = reply.send(self.settle(result));
            }
        }
    }

    fn settle<T>(&mut self, result: Result<T, Failure>) -> Result<T, LinkError> {
        match result {
            Ok(v) => {
                self.count(true);
                Ok(v)
            }
            Err(f) => {
                self.count(false);
                if f.drop_connection {
                    self.drop_session(&f.error);
                }
                Err(f.error)
            }
        }
    }

    /// Answers a job with an error without running it.
    fn refuse(&self, job: Job, err: LinkError) {
        match job {
            Job::Scpi { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Job::Modbus { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
        self.count(false);
    }

    fn count(&self, ok: bool) {
        let counter = if ok {
            &self.counters.ok
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes a status change, with the request counts as they stand.
    fn publish(&self, change: impl FnOnce(&mut LinkStatus)) {
        self.status.send_modify(|s| {
            change(s);
            s.requests_ok = self.counters.ok.load(Ordering::Relaxed);
            s.requests_failed = self.counters.failed.load(Ordering::Relaxed);
        });
    }

    fn drop_session(&mut self, error: &LinkError) {
        self.session = None;
        let mut delay = self.backoff.next_delay();
        // After a timeout on a serial line the late reply can still be on its way, and reopening
        // the port does not stop it arriving: give it the link timeout to arrive, so the flush
        // on reopen discards it rather than the next request reading it as its answer.
        // A usbtmc node has no connection to drop either; its device clear on reopen covers a
        // real device, the wait covers one that ignores it.
        if (transport::is_serial_line(&self.spec.transport)
            || matches!(self.spec.transport, Transport::Usbtmc { .. }))
            && matches!(error, LinkError::Timeout { .. })
        {
            delay = delay.max(self.spec.timeout);
        }
        self.next_attempt = Instant::now() + delay;
        tracing::warn!(link = %self.spec.name, endpoint = %self.endpoint, %error, "link dropped; reconnecting");
        let message = error.to_string();
        self.publish(|s| {
            s.state = LinkState::Reconnecting;
            s.last_error = Some(message);
            s.connected_since = None;
            s.identity = None;
        });
    }

    fn down_error(&self) -> LinkError {
        let s = self.status.borrow();
        LinkError::Down {
            link: self.spec.name.clone(),
            endpoint: self.endpoint.clone(),
            state: s.state,
            last_error: s
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected".into()),
            retry_in: self.next_attempt.saturating_duration_since(Instant::now()),
        }
    }

    async fn run_scpi(
        &mut self,
        address: Option<u8>,
        steps: &[ScpiStep],
    ) -> Result<Vec<Option<String>>, Failure> {
        match self.session {
            Some(Session::Message(_)) => self.run_scpi_message(address, steps).await,
            _ if address.is_some() => Err(Failure {
                error: LinkError::Io {
                    link: self.spec.name.clone(),
                    endpoint: self.endpoint.clone(),
                    request: describe_steps(steps),
                    message: "this link kind has no bus addresses".into(),
                },
                drop_connection: false,
            }),
            _ => self.run_scpi_stream(steps).await,
        }
    }

    async fn run_scpi_message(
        &mut self,
        address: Option<u8>,
        steps: &[ScpiStep],
    ) -> Result<Vec<Option<String>>, Failure> {
        let link = self.spec.name.clone();
        let endpoint = self.endpoint.clone();
        let default_timeout = self.spec.timeout;
        let setup = match address {
            Some(a) => match self.by_address.get(&a) {
                Some(s) => s.clone(),
                None => {
                    return Err(Failure {
                        error: LinkError::Io {
                            link,
                            endpoint,
                            request: describe_steps(steps),
                            message: format!("no instrument is configured at address {a}"),
                        },
                        drop_connection: false,
                    });
                }
            },
            None => self.scpi.clone(),
        };
        let Some(Session::Message(io)) = self.session.as_mut() else {
            unreachable!("checked by run_scpi")
        };
        let io = io.as_mut();
        let fail = |request: &str, timeout: Duration, e: MessageError| {
            message_failure(&link, &endpoint, request, timeout, e)
        };
        let bound = default_timeout + PROBE_GRACE;
        match tokio::time::timeout(bound, io.select(address)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail("select address", default_timeout, e)),
            Err(_) => {
                return Err(fail(
                    "select address",
                    default_timeout,
                    MessageError::Timeout(bound),
                ));
            }
        }
        if let Some(a) = address
            && !self.prepared.contains(&a)
        {
            match prepare_message(io, &setup, default_timeout).await {
                Ok(_) => {
                    self.prepared.insert(a);
                }
                Err((message, wrong_instrument)) => {
                    let error = if wrong_instrument {
                        LinkError::Mismatch {
                            link,
                            endpoint,
                            request: format!("address {a}"),
                            message,
                        }
                    } else {
                        LinkError::Io {
                            link,
                            endpoint,
                            request: format!("address {a}"),
                            message,
                        }
                    };
                    // A wrong identity came as a whole reply: the bus is in step, and the other
                    // instruments on it are fine. Anything else may leave a reply in flight.
                    return Err(Failure {
                        error,
                        drop_connection: !wrong_instrument,
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(steps.len());
        for step in steps {
            let (request, timeout) = match step {
                ScpiStep::Write(t) => (t, default_timeout),
                ScpiStep::Query { text, timeout } => (text, *timeout),
            };
            let result = match step {
                ScpiStep::Write(t) => msg_write(io, &setup.framing, t, timeout)
                    .await
                    .map(|_| None),
                ScpiStep::Query { text, .. } => {
                    msg_query(io, &setup.framing, text, timeout).await.map(Some)
                }
            };
            match result {
                Ok(reply) => out.push(reply),
                Err(e) => return Err(fail(request, timeout, e)),
            }
        }
        Ok(out)
    }

    async fn run_scpi_stream(
        &mut self,
        steps: &[ScpiStep],
    ) -> Result<Vec<Option<String>>, Failure> {
        let Some(Session::Scpi(conn)) = self.session.as_mut() else {
            unreachable!("scpi job on a non-scpi session is refused by the handle")
        };
        let link = &self.spec.name;
        let endpoint = &self.endpoint;
        let mut out = Vec::with_capacity(steps.len());
        for step in steps {
            let (request, timeout) = match step {
                ScpiStep::Write(t) => (t, self.spec.timeout),
                ScpiStep::Query { text, timeout } => (text, *timeout),
            };
            let fut = async {
                match step {
                    ScpiStep::Write(t) => conn.write(t).await.map(|_| None),
                    ScpiStep::Query { text, .. } => conn.query(text).await.map(Some),
                }
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(reply)) => out.push(reply),
                Ok(Err(e)) => {
                    let error = match e {
                        ScpiIoError::ReplyTooLong { .. } | ScpiIoError::NotUtf8 { .. } => {
                            LinkError::Mismatch {
                                link: link.clone(),
                                endpoint: endpoint.clone(),
                                request: request.clone(),
                                message: e.to_string(),
                            }
                        }
                        _ => LinkError::Io {
                            link: link.clone(),
                            endpoint: endpoint.clone(),
                            request: request.clone(),
                            message: e.to_string(),
                        },
                    };
                    return Err(Failure {
                        error,
                        drop_connection: true,
                    });
                }
                Err(_) => {
                    return Err(Failure {
                        error: LinkError::Timeout {
                            link: link.clone(),
                            endpoint: endpoint.clone(),
                            request: request.clone(),
                            timeout,
                        },
                        drop_connection: true,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn run_modbus(
        &mut self,
        unit: u8,
        op: &ModbusOp,
        timeout: Option<Duration>,
    ) -> Result<ModbusReply, Failure> {
        // Modbus RTU needs t3.5 of silence between frames; tokio-modbus inserts none.
        if !self.spec.inter_frame.is_zero()
            && let Some(last) = self.last_frame
        {
            tokio::time::sleep_until(last + self.spec.inter_frame).await;
        }
        let Some(Session::Modbus(ctx)) = self.session.as_mut() else {
            unreachable!("modbus job on a non-modbus session is refused by the handle")
        };
        let timeout = timeout.unwrap_or(self.spec.timeout);
        let result = tokio::time::timeout(timeout, ops::execute(ctx, unit, op)).await;
        self.last_frame = Some(Instant::now());
        // Formatting the request costs a sixth of the actor's time per transaction (callgrind,
        // benches/io.rs): only pay for it when an error message needs it.
        let request = || op.to_string();
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                let request = request();
                let drop_connection = e.is_link_fault();
                let error = match e {
                    ModbusError::Exception { code, name } => LinkError::Exception {
                        link: self.spec.name.clone(),
                        unit,
                        request,
                        code,
                        name,
                    },
                    ModbusError::Mismatch(message) => LinkError::Mismatch {
                        link: self.spec.name.clone(),
                        endpoint: self.endpoint.clone(),
                        request: format!("unit {unit}: {request}"),
                        message,
                    },
                    other => LinkError::Io {
                        link: self.spec.name.clone(),
                        endpoint: self.endpoint.clone(),
                        request: format!("unit {unit}: {request}"),
                        message: other.to_string(),
                    },
                };
                Err(Failure {
                    error,
                    drop_connection,
                })
            }
            Err(_) => Err(Failure {
                error: LinkError::Timeout {
                    link: self.spec.name.clone(),
                    endpoint: self.endpoint.clone(),
                    request: format!("unit {unit}: {}", request()),
                    timeout,
                },
                drop_connection: true,
            }),
        }
    }
}

fn describe_steps(steps: &[ScpiStep]) -> String {
    steps
        .iter()
        .map(|s| match s {
            ScpiStep::Write(t) => t.as_str(),
            ScpiStep::Query { text, .. } => text.as_str(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn message_failure(
    link: &str,
    endpoint: &str,
    request: &str,
    timeout: Duration,
    e: MessageError,
) -> Failure {
    let drop_connection = !e.keeps_connection();
    let (link, endpoint, request) = (link.to_string(), endpoint.to_string(), request.to_string());
    let error = match e {
        MessageError::Timeout(_) => LinkError::Timeout {
            link,
            endpoint,
            request,
            timeout,
        },
        MessageError::TooLong { .. } | MessageError::Protocol(_) => LinkError::Mismatch {
            link,
            endpoint,
            request,
            message: e.to_string(),
        },
        other => LinkError::Io {
            link,
            endpoint,
            request,
            message: other.to_string(),
        },
    };
    Failure {
        error,
        drop_connection,
    }
}

/// The bytes of one command on a message transport: the command and the driver's write
/// terminator, refused when the command holds a line break of its own (the instrument would see
/// two commands, as on a stream).
fn frame_command(cmd: &str, framing: &Framing) -> Result<Vec<u8>, MessageError> {
    let wt = &framing.write_termination;
    let bytes = cmd.as_bytes();
    if bytes.iter().any(|b| *b == b'\n' || *b == b'\r')
        || (!wt.is_empty() && memchr::memmem::find(bytes, wt).is_some())
    {
        return Err(MessageError::Unsupported(format!(
            "command contains a line terminator: {:?}",
            crate::scpi::parse::preview(cmd)
        )));
    }
    let mut out = Vec::with_capacity(bytes.len() + wt.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(wt);
    Ok(out)
}

async fn msg_write(
    io: &mut dyn MessageIo,
    framing: &Framing,
    cmd: &str,
    timeout: Duration,
) -> Result<(), MessageError> {
    let bytes = frame_command(cmd, framing)?;
    // The implementation bounds its own I/O; this catches one that does not.
    tokio::time::timeout(timeout + PROBE_GRACE, io.write_msg(&bytes))
        .await
        .map_err(|_| MessageError::Timeout(timeout))?
}

async fn msg_query(
    io: &mut dyn MessageIo,
    framing: &Framing,
    cmd: &str,
    timeout: Duration,
) -> Result<String, MessageError> {
    msg_write(io, framing, cmd, timeout).await?;
    let spec = ReadSpec {
        timeout,
        max: framing
            .max_reply
            .saturating_add(framing.read_termination.len() + 1),
        terminator: &framing.read_termination,
    };
    let mut reply = tokio::time::timeout(timeout + PROBE_GRACE, io.read_msg(spec))
        .await
        .map_err(|_| MessageError::Timeout(timeout))??;
    let rt = &framing.read_termination;
    if !rt.is_empty() && reply.ends_with(rt) {
        reply.truncate(reply.len() - rt.len());
    }
    if reply.last() == Some(&b'\r') {
        reply.pop();
    }
    if reply.len() > framing.max_reply {
        return Err(MessageError::TooLong {
            max: framing.max_reply,
        });
    }
    String::from_utf8(reply).map_err(|e| {
        MessageError::Protocol(format!(
            "reply is not valid utf-8: {:?}",
            crate::scpi::parse::preview(&String::from_utf8_lossy(e.as_bytes()))
        ))
    })
}

/// Run a setup's init commands and identity check on a message transport. Returns the identity
/// reply; `Err((message, wrong_instrument))`, where a wrong instrument is not worth retrying soon.
async fn prepare_message(
    io: &mut dyn MessageIo,
    setup: &ScpiSetup,
    timeout: Duration,
) -> Result<Option<String>, (String, bool)> {
    for cmd in &setup.init {
        msg_write(io, &setup.framing, cmd, timeout)
            .await
            .map_err(|e| (format!("init `{cmd}`: {e}"), false))?;
    }
    let Some((query, contains)) = &setup.identity else {
        return Ok(None);
    };
    let reply = msg_query(io, &setup.framing, query, timeout)
        .await
        .map_err(|e| (format!("identity query `{query}`: {e}"), false))?;
    crate::scpi::parse::check_identity(&reply, contains)
        .map_err(|e| (format!("wrong instrument: {e}"), true))?;
    Ok(Some(reply))
}
