//! Prologix GPIB-Ethernet (TCP port 1234) and GPIB-USB (a serial port) adapters.
//!
//! The adapter sits between a byte stream to the host and a GPIB bus with several instruments.
//! Lines starting with `++` configure the adapter; any other line is data for the instrument at
//! the current address. Set up once per connection:
//!
//! - `++savecfg 0`: do not write every setting to the adapter's EEPROM (it wears out);
//! - `++mode 1`: controller;
//! - `++auto 0`: the adapter does not address the instrument to talk after every write. With
//!   `++auto 1` a plain command (no reply) makes many instruments log "Query UNTERMINATED"
//!   (-420) because they were asked to talk with nothing to say, which then shows up in the
//!   error queue labgate reads; we send `++read eoi` after queries only;
//! - `++eos 3`: the adapter appends nothing to data, so exactly the driver's write terminator
//!   (sent escaped, as data) reaches the instrument, whatever each instrument wants;
//! - `++eoi 1`: EOI is asserted with the last byte, which is what ends a message on GPIB;
//! - `++read_tmo_ms`: the adapter's inter-character read timeout, from the link timeout;
//! - `++ver`: the liveness check; no answer means "prologix adapter not answering".
//!
//! `++addr N` is sent only when the next exchange is for a different address than the last.
//! Data bytes ESC, `+`, CR and LF are escaped with ESC so they reach the instrument instead of
//! ending or being taken for an adapter command. A reply is what the adapter relays after
//! `++read eoi`, up to the driver's read terminator (instruments send it with EOI).
//!
//! When a reply does not come in time, `++ver` tells the two failures apart: the adapter
//! answers, so "no instrument listening at GPIB address N"; or it does not, so "prologix adapter
//! not answering". Either way the link drops the connection, as after any timeout.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::message::{MessageError, MessageIo, PROBE_GRACE, ReadSpec};
use super::transport::{self, Stream};

const ESC: u8 = 0x1b;
/// The adapter's `++read_tmo_ms` range.
const ADAPTER_READ_TMO_MS: (u64, u64) = (1, 3000);
/// Longest line accepted from the adapter for its own replies (`++ver`).
const MAX_ADAPTER_LINE: usize = 256;

/// A connected, configured adapter.
pub struct Prologix {
    stream: Stream,
    buf: BytesMut,
    /// The address the adapter is set to, as far as this connection knows.
    current: Option<u8>,
    /// The address [`MessageIo::select`] asked for; applied before the next exchange.
    wanted: Option<u8>,
    version: String,
    /// The adapter's `++read_tmo_ms` as last set.
    read_tmo_ms: u64,
    /// After [`MessageIo::clear`]: addresses still to get a selected device clear (`++clr`).
    clear_pending: bool,
    cleared: BTreeSet<u8>,
}

impl Prologix {
    /// Configure the adapter on a fresh stream and check that it answers `++ver`.
    pub async fn start(mut stream: Stream, timeout: Duration) -> Result<Prologix, MessageError> {
        // A GPIB-USB adapter (a serial port) or a reconnect may hold the end of a reply the
        // previous session gave up on.
        transport::drain_stale(&mut stream).await;
        let tmo = adapter_read_tmo(timeout);
        let setup = format!(
            "++savecfg 0\n++mode 1\n++auto 0\n++eos 3\n++eoi 1\n++read_tmo_ms {tmo}\n++ver\n"
        );
        stream.write_all(setup.as_bytes()).await?;
        stream.flush().await?;
        let mut p = Prologix {
            stream,
            buf: BytesMut::new(),
            current: None,
            wanted: None,
            version: String::new(),
            read_tmo_ms: tmo,
            clear_pending: false,
            cleared: BTreeSet::new(),
        };
        let deadline = Instant::now() + timeout;
        // Skip anything else the adapter says first (an older firmware answers
        // `++savecfg` with "Unrecognized command"): the version line is the liveness answer.
        loop {
            let line = p
                .read_until(b"\n", deadline, MAX_ADAPTER_LINE)
                .await
                .map_err(|e| match e {
                    MessageError::Timeout(_) | MessageError::TooLong { .. } => {
                        MessageError::AdapterSilent {
                            adapter: "prologix",
                        }
                    }
                    other => other,
                })?;
            if is_version_line(&line) {
                p.version = String::from_utf8_lossy(&line).trim().to_string();
                break;
            }
        }
        Ok(p)
    }

    /// The adapter's `++ver` reply.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Read up to and including `terminator`; bytes after it stay buffered.
    async fn read_until(
        &mut self,
        terminator: &[u8],
        deadline: Instant,
        max: usize,
    ) -> Result<Vec<u8>, MessageError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = memchr::memmem::find(&self.buf[scanned..], terminator) {
                let end = scanned + pos + terminator.len();
                return Ok(self.buf.split_to(end).to_vec());
            }
            scanned = self.buf.len().saturating_sub(terminator.len() - 1);
            if self.buf.len() > max {
                self.buf.clear();
                return Err(MessageError::TooLong { max });
            }
            self.buf.reserve(4096);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(MessageError::Timeout(left)),
                Ok(Ok(0)) => return Err(MessageError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), MessageError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Point the adapter at the wanted address if it is not there yet.
    async fn apply_address(&mut self) -> Result<(), MessageError> {
        let Some(a) = self.wanted else {
            return Ok(());
        };
        let mut out = Vec::new();
        if self.current != Some(a) {
            out.extend_from_slice(format!("++addr {a}\n").as_bytes());
        }
        if self.clear_pending && !self.cleared.contains(&a) {
            out.extend_from_slice(b"++clr\n");
        }
        if !out.is_empty() {
            self.send(&out).await?;
            self.current = Some(a);
            if self.clear_pending {
                self.cleared.insert(a);
            }
        }
        Ok(())
    }

    /// After a read timed out: is the adapter alive? Bounded by `PROBE_GRACE` minus a margin so
    /// the actor's own bound never cuts it short.
    async fn probe(&mut self, timeout: Duration) -> MessageError {
        let bound = timeout.min(PROBE_GRACE * 3 / 4);
        self.buf.clear();
        if self.send(b"++ver\n").await.is_err() {
            return MessageError::AdapterSilent {
                adapter: "prologix",
            };
        }
        let deadline = Instant::now() + bound;
        // A late instrument reply may come first; the version line is the adapter's own.
        while let Ok(line) = self.read_until(b"\n", deadline, 64 * 1024).await {
            if is_version_line(&line) {
                return match self.current {
                    Some(address) => MessageError::NotListening { address },
                    None => MessageError::Timeout(timeout),
                };
            }
        }
        MessageError::AdapterSilent {
            adapter: "prologix",
        }
    }
}

/// Whether a line from the adapter is its `++ver` answer.
fn is_version_line(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line).to_ascii_lowercase();
    text.contains("prologix") || text.contains("version")
}

/// The adapter's read timeout for a request timeout: it waits that long for the instrument's
/// first (and each next) byte. Our own timeout fires at about the same time, and the `++ver`
/// probe after it waits until the adapter has given up. A reply whose first byte takes longer
/// than 3 s (the adapter's maximum) cannot come through a Prologix adapter.
fn adapter_read_tmo(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).clamp(ADAPTER_READ_TMO_MS.0, ADAPTER_READ_TMO_MS.1)
}

/// Escape data for the adapter: ESC before ESC, `+`, CR and LF, then the unescaped LF that ends
/// the line.
pub fn escape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        if matches!(b, ESC | b'+' | b'\r' | b'\n') {
            out.push(ESC);
        }
        out.push(b);
    }
    out.push(b'\n');
    out
}

impl MessageIo for Prologix {
    fn write_msg<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Result<(), MessageError>> {
        Box::pin(async move {
            self.apply_address().await?;
            let line = escape(msg);
            self.send(&line).await
        })
    }

    fn read_msg<'a>(
        &'a mut self,
        spec: ReadSpec<'a>,
    ) -> BoxFuture<'a, Result<Vec<u8>, MessageError>> {
        Box::pin(async move {
            if spec.terminator.is_empty() {
                return Err(MessageError::Unsupported(
                    "a prologix link needs a read termination to end replies".into(),
                ));
            }
            self.apply_address().await?;
            // Anything buffered now is no answer to this request.
            self.buf.clear();
            let tmo = adapter_read_tmo(spec.timeout);
            if tmo != self.read_tmo_ms {
                self.send(format!("++read_tmo_ms {tmo}\n++read eoi\n").as_bytes())
                    .await?;
                self.read_tmo_ms = tmo;
            } else {
                self.send(b"++read eoi\n").await?;
            }
            let deadline = Instant::now() + spec.timeout;
            match self.read_until(spec.terminator, deadline, spec.max).await {
                Err(MessageError::Timeout(_)) => Err(self.probe(spec.timeout).await),
                other => other,
            }
        })
    }

    fn clear(&mut self) -> BoxFuture<'_, Result<(), MessageError>> {
        Box::pin(async move {
            // A selected device clear reaches one address only: send it to each on first use.
            self.clear_pending = true;
            self.cleared.clear();
            Ok(())
        })
    }

    fn select(&mut self, address: Option<u8>) -> BoxFuture<'_, Result<(), MessageError>> {
        Box::pin(async move {
            match address {
                Some(a) if a > 30 => Err(MessageError::Unsupported(format!(
                    "GPIB address {a} is out of range (0..=30)"
                ))),
                _ => {
                    self.wanted = address;
                    Ok(())
                }
            }
        })
    }

    fn peer_info(&self) -> Option<String> {
        Some(self.version.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_protects_data_bytes() {
        assert_eq!(escape(b"*IDN?\n"), b"*IDN?\x1b\n\n");
        assert_eq!(escape(b"A+B\r\x1b"), b"A\x1b+B\x1b\r\x1b\x1b\n");
        assert_eq!(escape(b""), b"\n");
    }
}
