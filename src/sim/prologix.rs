//! A simulated Prologix GPIB adapter (GPIB-Ethernet on TCP, GPIB-USB on a pseudo-terminal)
//! fronting simulated SCPI instruments by GPIB address.
//!
//! Modelled on the Prologix manual: a line ends at an unescaped CR or LF; a line starting with
//! `++` is an adapter command; any other line, unescaped (ESC quotes the next byte), is one GPIB
//! message (EOI on its last byte) to the instrument at the current address. `++read` relays
//! that instrument's pending output; with nothing pending the adapter waits `++read_tmo_ms` and
//! relays nothing, exactly as a real adapter with no talker would. `++auto 1` reads after every
//! data line. `++eos` appends CR/LF to data per its mode. The version line and the counters in
//! [`PrologixStats`] let tests check what the host did (how often it switched addresses).
//!
//! Per-address [`Faults`] show as a real GPIB instrument's would through a real adapter, and
//! only at that address: a `silent` instrument takes its messages and never talks, so `++read`
//! waits `++read_tmo_ms` and relays nothing while the adapter still answers `++ver` (the host
//! sees "no instrument listening at GPIB address N", not a dead adapter); a `delay`ed reply is
//! relayed late if it is ready within the read timeout, else that `++read` relays nothing and
//! the reply stays queued in the instrument (a `++clr` discards it); `garbage` is relayed as
//! sent. `drop_after` does not apply: a GPIB instrument has no TCP connection to drop, and the
//! adapter's connection carries every address, so closing it for one instrument's fault would
//! cut the others off too. A hung adapter is [`PrologixStats::silent`].

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fault::Faults;
use super::pty::open_pty;
use super::scpi_server::{GARBAGE_REPLY, ScpiDevice, split_commands};

const ESC: u8 = 0x1b;
/// Longest adapter input line kept (the real adapter's buffer is smaller still).
const MAX_LINE: usize = 64 * 1024;

pub const VERSION_ETHERNET: &str = "Prologix GPIB-ETHERNET Controller version 01.06.06.00";
pub const VERSION_USB: &str = "Prologix GPIB-USB Controller version 6.107";

/// What the adapter saw, for tests.
#[derive(Debug, Default)]
pub struct PrologixStats {
    /// `++addr N` commands that set an address (queries not counted).
    pub address_switches: AtomicU64,
    /// `++read` commands.
    pub reads: AtomicU64,
    /// GPIB messages delivered to instruments.
    pub messages: AtomicU64,
    /// `++clr` (selected device clear) commands.
    pub clears: AtomicU64,
    /// Connections (TCP) or sessions served.
    pub connections: AtomicU64,
    /// While set the adapter reads and ignores everything (a hung adapter).
    pub silent: AtomicBool,
}

/// The instruments on the bus, by GPIB address. Made anew per connection by a factory, but the
/// simulated devices share their state through `Arc`s as on the TCP servers.
pub type Bus = BTreeMap<u8, Box<dyn ScpiDevice>>;

/// The faults each instrument on the bus shows, by GPIB address (absent: none).
pub type BusFaults = BTreeMap<u8, Faults>;

/// One reply an instrument has ready to send from `ready` on (later under a `delay` fault).
struct Output {
    ready: Instant,
    bytes: VecDeque<u8>,
}

struct Adapter {
    bus: Bus,
    faults: Arc<BusFaults>,
    /// Output each instrument has to send (its replies, newline-terminated), oldest first.
    pending: BTreeMap<u8, VecDeque<Output>>,
    addr: u8,
    auto: bool,
    eos: u8,
    read_tmo: Duration,
    version: &'static str,
    stats: Arc<PrologixStats>,
}

/// Serve one host connection until it closes.
pub async fn serve_stream<S>(
    mut stream: S,
    bus: Bus,
    faults: Arc<BusFaults>,
    version: &'static str,
    stats: Arc<PrologixStats>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut a = Adapter {
        bus,
        faults,
        pending: BTreeMap::new(),
        addr: 0,
        auto: false,
        eos: 0,
        read_tmo: Duration::from_millis(500),
        version,
        stats,
    };
    let mut line: Vec<u8> = Vec::new();
    let mut escaped = false;
    let mut raw_plus = 0usize;
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if a.stats.silent.load(Ordering::Relaxed) {
            continue;
        }
        for &b in &chunk[..n] {
            if escaped {
                escaped = false;
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            match b {
                ESC => escaped = true,
                b'\r' | b'\n' => {
                    // An adapter command is `++` at the start of the line, unescaped.
                    let is_cmd = raw_plus >= 2 && line.starts_with(b"++");
                    let l = std::mem::take(&mut line);
                    raw_plus = 0;
                    if l.is_empty() {
                        continue;
                    }
                    if is_cmd {
                        a.command(&String::from_utf8_lossy(&l[2..]), &mut stream)
                            .await?;
                    } else {
                        a.data(l, &mut stream).await?;
                    }
                }
                _ => {
                    if b == b'+' && line.len() == raw_plus && raw_plus < 2 {
                        raw_plus += 1;
                    }
                    if line.len() < MAX_LINE {
                        line.push(b);
                    }
                }
            }
        }
    }
}

impl Adapter {
    async fn command<S: AsyncWrite + Unpin>(&mut self, cmd: &str, out: &mut S) -> io::Result<()> {
        let mut parts = cmd.split_whitespace();
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let arg = parts.next();
        let num = arg.and_then(|a| a.parse::<u64>().ok());
        let reply: Option<String> = match name.as_str() {
            "ver" => Some(self.version.to_string()),
            "addr" => match num {
                None => Some(self.addr.to_string()),
                Some(n) if n <= 30 => {
                    self.addr = n as u8;
                    self.stats.address_switches.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Some(_) => Some("Error".into()),
            },
            "auto" => match num {
                None => Some(u8::from(self.auto).to_string()),
                Some(n) => {
                    self.auto = n == 1;
                    None
                }
            },
            "eos" => match num {
                None => Some(self.eos.to_string()),
                Some(n) => {
                    self.eos = n.min(3) as u8;
                    None
                }
            },
            "read_tmo_ms" => {
                if let Some(n) = num {
                    self.read_tmo = Duration::from_millis(n.clamp(1, 3000));
                }
                None
            }
            "read" => {
                self.stats.reads.fetch_add(1, Ordering::Relaxed);
                self.read(out).await?;
                None
            }
            "clr" => {
                self.stats.clears.fetch_add(1, Ordering::Relaxed);
                self.pending.remove(&self.addr);
                None
            }
            "mode" | "eoi" | "eot_enable" | "eot_char" | "savecfg" | "ifc" | "loc" | "llo"
            | "trg" | "rst" => None,
            "spoll" => Some("0".into()),
            _ => Some("Unrecognized command".into()),
        };
        if let Some(r) = reply {
            out.write_all(r.as_bytes()).await?;
            out.write_all(b"\r\n").await?;
            out.flush().await?;
        }
        Ok(())
    }

    /// One GPIB message to the addressed instrument.
    async fn data<S: AsyncWrite + Unpin>(
        &mut self,
        mut msg: Vec<u8>,
        out: &mut S,
    ) -> io::Result<()> {
        match self.eos {
            0 => msg.extend_from_slice(b"\r\n"),
            1 => msg.push(b'\r'),
            2 => msg.push(b'\n'),
            _ => {}
        }
        let Some(dev) = self.bus.get_mut(&self.addr) else {
            // No listener: the bytes go nowhere.
            return Ok(());
        };
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let faults = self.faults.get(&self.addr).cloned().unwrap_or_default();
        if faults.silent {
            // Like the other servers' silent instrument: takes the message, never talks.
            if self.auto {
                self.read(out).await?;
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(&msg).into_owned();
        // EOI ends the message; a terminator inside it separates program messages too.
        let mut replies = Vec::new();
        for unit in text.split(['\n', '\r']).filter(|s| !s.trim().is_empty()) {
            for command in split_commands(unit) {
                if let Some(at) = dev.hold_until(command) {
                    tokio::time::sleep_until(at).await;
                }
                if let Some(r) = dev.handle(command) {
                    replies.push(r);
                }
            }
        }
        if !replies.is_empty() {
            let bytes: VecDeque<u8> = if faults.garbage {
                GARBAGE_REPLY.iter().copied().collect()
            } else {
                let mut b: VecDeque<u8> = replies.join(";").into_bytes().into();
                b.push_back(b'\n');
                b
            };
            // A late instrument does not hold up the bus: the adapter serves other addresses
            // meanwhile and only a `++read` of this one waits for it.
            let ready = Instant::now() + faults.delay.unwrap_or_default();
            self.pending
                .entry(self.addr)
                .or_default()
                .push_back(Output { ready, bytes });
        }
        if self.auto {
            self.read(out).await?;
        }
        Ok(())
    }

    /// Relay the addressed instrument's output up to its end (the newline sent with EOI).
    async fn read<S: AsyncWrite + Unpin>(&mut self, out: &mut S) -> io::Result<()> {
        let give_up = Instant::now() + self.read_tmo;
        let q = self.pending.entry(self.addr).or_default();
        let ready = match q.front() {
            Some(o) if o.ready <= give_up => o.ready,
            // No talker, nothing to say, or not within the read timeout: the adapter gives up
            // then and relays nothing. A late reply stays with the instrument.
            _ => {
                tokio::time::sleep_until(give_up).await;
                return Ok(());
            }
        };
        tokio::time::sleep_until(ready).await;
        let Some(front) = q.front_mut() else {
            return Ok(());
        };
        let end = front
            .bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(front.bytes.len(), |p| p + 1);
        let bytes: Vec<u8> = front.bytes.drain(..end).collect();
        if front.bytes.is_empty() {
            q.pop_front();
        }
        out.write_all(&bytes).await?;
        out.flush().await
    }
}

/// Serve a GPIB-Ethernet adapter on `listener`; `bus` builds the instruments for a connection,
/// which show `faults` by address.
pub async fn serve_tcp<F>(
    listener: TcpListener,
    bus: F,
    faults: BusFaults,
    stats: Arc<PrologixStats>,
) -> io::Result<()>
where
    F: Fn() -> Bus + Send + Sync + 'static,
{
    let bus = Arc::new(bus);
    let faults = Arc::new(faults);
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (bus, faults, stats) = (bus.clone(), faults.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(sock, bus(), faults, VERSION_ETHERNET, stats).await {
                tracing::debug!(message = "sim prologix connection ended", error = %e);
            }
        });
    }
}

/// Serve a GPIB-USB adapter on a new pseudo-terminal. Returns the device path a client opens
/// and the serving task (abort it to stop).
pub fn serve_pty<F>(
    bus: F,
    faults: BusFaults,
    stats: Arc<PrologixStats>,
) -> io::Result<(PathBuf, JoinHandle<()>)>
where
    F: Fn() -> Bus + Send + Sync + 'static,
{
    let (mut master, path) = open_pty()?;
    let faults = Arc::new(faults);
    let task = tokio::spawn(async move {
        // A pty has no connections: keep serving the same bus state across client sessions.
        loop {
            let session = serve_stream(
                &mut master,
                bus(),
                faults.clone(),
                VERSION_USB,
                stats.clone(),
            );
            if let Err(e) = session.await {
                tracing::debug!(message = "sim prologix pty error", error = %e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Ok((path, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every query with its own text.
    struct Echo;

    impl ScpiDevice for Echo {
        fn handle(&mut self, line: &str) -> Option<String> {
            line.ends_with('?').then(|| line.to_string())
        }
    }

    /// The adapter's next line, bounded.
    async fn line<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        let read = async {
            while s.read_exact(&mut b).await.is_ok() && b[0] != b'\n' {
                out.push(b[0]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("bounded");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_reply_later_than_the_read_timeout_stays_queued_until_cleared() {
        let (mut host, adapter) = tokio::io::duplex(4096);
        let bus: Bus = BTreeMap::from([
            (1, Box::new(Echo) as Box<dyn ScpiDevice>),
            (2, Box::new(Echo) as _),
        ]);
        let faults = BusFaults::from([(
            1,
            Faults {
                delay: Some(Duration::from_millis(120)),
                ..Faults::default()
            },
        )]);
        let stats = Arc::new(PrologixStats::default());
        let task = tokio::spawn(serve_stream(
            adapter,
            bus,
            Arc::new(faults),
            VERSION_ETHERNET,
            stats,
        ));

        // Read timeout shorter than the delay: the read gives up, and the adapter still answers.
        host.write_all(b"++read_tmo_ms 30\n++addr 1\nA?\n++read\n++ver\n")
            .await
            .unwrap();
        assert_eq!(line(&mut host).await.trim(), VERSION_ETHERNET);
        // Address 2 is not held up by address 1's late reply.
        let started = Instant::now();
        host.write_all(b"++addr 2\nB?\n++read\n").await.unwrap();
        assert_eq!(line(&mut host).await, "B?");
        assert!(started.elapsed() < Duration::from_millis(100));
        // Once ready, the late reply is what address 1 talks next.
        tokio::time::sleep(Duration::from_millis(120)).await;
        host.write_all(b"++addr 1\n++read\n").await.unwrap();
        assert_eq!(line(&mut host).await, "A?");
        // A late reply a device clear discards never comes.
        host.write_all(b"C?\n++clr\nD?\n++read_tmo_ms 500\n++read\n")
            .await
            .unwrap();
        assert_eq!(line(&mut host).await, "D?");
        task.abort();
    }
}
