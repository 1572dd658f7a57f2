//! A line-framed SCPI connection over any byte stream (TCP, serial port, in-memory duplex).
//!
//! There are deliberately no timeouts in here: the link actor wraps each whole exchange in
//! `tokio::time::timeout` and drops the connection after one, so a late reply can never be taken
//! for the answer to the next query. For the same reason, after an error for which
//! [`ScpiIoError::needs_reconnect`] is true the stream's framing can no longer be trusted and the
//! caller should drop the connection.
//!
//! Replies are bounded by [`Framing::max_reply`] so an instrument that babbles without ever
//! sending a terminator cannot grow memory without bound.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parse::preview;
use crate::driver::schema::ScpiSettings;

/// Default bound on one reply; a 401-point spectrum is about 6 KB, so this is very generous.
pub const DEFAULT_MAX_REPLY: usize = 4 * 1024 * 1024;

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 8 * 1024;

/// How commands and replies are delimited on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// Appended to every command.
    pub write_termination: Vec<u8>,
    /// Ends every reply; must not be empty. A trailing "\r" before it is stripped as well.
    pub read_termination: Vec<u8>,
    /// Longest reply accepted, terminator not counted.
    pub max_reply: usize,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            write_termination: b"\n".to_vec(),
            read_termination: b"\n".to_vec(),
            max_reply: DEFAULT_MAX_REPLY,
        }
    }
}

impl From<&ScpiSettings> for Framing {
    fn from(s: &ScpiSettings) -> Self {
        Framing::from_terminators(&s.write_termination, &s.read_termination)
    }
}

impl Framing {
    /// Framing from a driver's terminator strings, with the default reply bound.
    pub fn from_terminators(write: &str, read: &str) -> Self {
        Framing {
            write_termination: write.as_bytes().to_vec(),
            read_termination: read.as_bytes().to_vec(),
            max_reply: DEFAULT_MAX_REPLY,
        }
    }
}

/// Why a command could not be sent or a reply not received.
#[derive(Debug, thiserror::Error)]
pub enum ScpiIoError {
    #[error("scpi i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the instrument")]
    Closed,
    #[error("reply longer than {max} bytes without a terminator")]
    ReplyTooLong { max: usize },
    #[error("reply is not valid utf-8: {preview:?}")]
    NotUtf8 { preview: String },
    /// A command (usually a rendered template) contains a line break or the write terminator,
    /// which would make the instrument see a second command.
    #[error("command contains a line terminator: {preview:?}")]
    CommandHasTerminator { preview: String },
    #[error("read termination is empty: replies cannot be framed")]
    EmptyReadTermination,
}

impl ScpiIoError {
    /// Whether the connection can no longer be trusted and must be dropped and reopened.
    ///
    /// An over-long reply counts: unless its terminator was already seen, the rest of it is
    /// still on the way and would be read as the next reply.
    pub fn needs_reconnect(&self) -> bool {
        !matches!(
            self,
            ScpiIoError::NotUtf8 { .. }
                | ScpiIoError::CommandHasTerminator { .. }
                | ScpiIoError::EmptyReadTermination
        )
    }
}

/// One SCPI connection: owns the stream and the bytes read past the last reply.
#[derive(Debug)]
pub struct ScpiConn<S> {
    stream: S,
    framing: Framing,
    buf: BytesMut,
    /// Where the terminator search resumes, so a long reply arriving in small pieces is not
    /// rescanned from the start on every read.
    scanned: usize,
}

impl<S> ScpiConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(stream: S, framing: Framing) -> Self {
        ScpiConn {
            stream,
            framing,
            buf: BytesMut::new(),
            scanned: 0,
        }
    }

    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Send one command followed by the write terminator.
    pub async fn write(&mut self, cmd: &str) -> Result<(), ScpiIoError> {
        let wt = &self.framing.write_termination;
        let bytes = cmd.as_bytes();
        if bytes.iter().any(|b| *b == b'\n' || *b == b'\r')
            || (!wt.is_empty() && memchr::memmem::find(bytes, wt).is_some())
        {
            return Err(ScpiIoError::CommandHasTerminator {
                preview: preview(cmd),
            });
        }
        // One buffer, one write: some serial servers and instruments mis-handle a command split
        // from its terminator across packets.
        let mut out = Vec::with_capacity(bytes.len() + wt.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(wt);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Read one reply, without its terminator and without a trailing "\r".
    ///
    /// Cancel-safe: bytes already read stay buffered. But a caller that times out should still
    /// drop the connection, since the reply it gave up on may yet arrive.
    pub async fn read_reply(&mut self) -> Result<String, ScpiIoError> {
        let term_len = self.framing.read_termination.len();
        if term_len == 0 {
            return Err(ScpiIoError::EmptyReadTermination);
        }
        let max = self.framing.max_reply;
        loop {
            if let Some(pos) =
                memchr::memmem::find(&self.buf[self.scanned..], &self.framing.read_termination)
            {
                let end = self.scanned + pos;
                self.scanned = 0;
                if end > max {
                    // The whole reply is here, so dropping just it keeps the stream in step.
                    let _ = self.buf.split_to(end + term_len);
                    return Err(ScpiIoError::ReplyTooLong { max });
                }
                let mut line = self.buf.split_to(end + term_len);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return String::from_utf8(line.to_vec()).map_err(|e| ScpiIoError::NotUtf8 {
                    preview: preview(&String::from_utf8_lossy(e.as_bytes())),
                });
            }
            // A terminator may straddle two reads: rescan its first bytes next time.
            self.scanned = self.buf.len().saturating_sub(term_len - 1);
            // No terminator in the first max + term_len bytes means the reply is over-long.
            let limit = max.saturating_add(term_len);
            if self.buf.len() >= limit {
                self.discard_buffered();
                return Err(ScpiIoError::ReplyTooLong { max });
            }
            // Never read further than the bound needs, so memory stays near max_reply.
            let want = (limit - self.buf.len()).min(READ_CHUNK);
            self.buf.reserve(want);
            let n = (&mut self.stream)
                .take(want as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n == 0 {
                return Err(ScpiIoError::Closed);
            }
        }
    }

    /// Send a query and read its reply.
    ///
    /// Bytes already buffered are not discarded first: the link actor decides what stale data
    /// means (see [`ScpiConn::discard_buffered`]).
    pub async fn query(&mut self, q: &str) -> Result<String, ScpiIoError> {
        self.write(q).await?;
        self.read_reply().await
    }

    /// Forget anything read but not yet returned as a reply.
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }

    /// How many bytes are read but not yet returned as a reply.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The read buffer's allocated size; lets tests check that memory stays bounded.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream back; buffered bytes are lost.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::duplex;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn query_round_trip_over_duplex() {
        let (a, mut b) = duplex(1024);
        let mut conn = ScpiConn::new(a, Framing::default());
        let peer = tokio::spawn(async move {
            let mut got = vec![0u8; 6];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(b"YOKOGAWA,WT310\r\n").await.unwrap();
            got
        });
        let reply = timeout(T, conn.query("*IDN?")).await.unwrap().unwrap();
        assert_eq!(reply, "YOKOGAWA,WT310");
        assert_eq!(timeout(T, peer).await.unwrap().unwrap(), b"*IDN?\n");
    }

    #[tokio::test]
    async fn embedded_terminators_are_refused() {
        let (a, _b) = duplex(64);
        let mut conn = ScpiConn::new(a, Framing::from_terminators("\r\n", "\r\n"));
        for bad in ["VOLT 1\n*RST", "VOLT 1\r", "\n"] {
            assert!(matches!(
                conn.write(bad).await,
                Err(ScpiIoError::CommandHasTerminator { .. })
            ));
        }
        let mut odd = ScpiConn::new(duplex(64).0, Framing::from_terminators("#", "\n"));
        assert!(matches!(
            odd.write("A#B").await,
            Err(ScpiIoError::CommandHasTerminator { .. })
        ));
    }

    #[tokio::test]
    async fn empty_read_termination_is_an_error_not_a_hang() {
        let (a, _b) = duplex(64);
        let mut conn = ScpiConn::new(a, Framing::from_terminators("\n", ""));
        let r = timeout(T, conn.read_reply()).await.unwrap();
        assert!(matches!(r, Err(ScpiIoError::EmptyReadTermination)));
    }

    #[tokio::test]
    async fn terminator_straddling_reads() {
        let (a, mut b) = duplex(4);
        let mut conn = ScpiConn::new(a, Framing::from_terminators("\r\n", "\r\n"));
        tokio::spawn(async move {
            for chunk in [&b"12"[..], b"3\r", b"\n4", b"56\r", b"\n"] {
                b.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Keep the peer open until the reader is done.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert_eq!(timeout(T, conn.read_reply()).await.unwrap().unwrap(), "123");
        assert_eq!(timeout(T, conn.read_reply()).await.unwrap().unwrap(), "456");
    }

    #[tokio::test]
    async fn reply_of_exactly_max_is_accepted_one_more_is_not() {
        let (a, mut b) = duplex(1024);
        let framing = Framing {
            max_reply: 8,
            ..Framing::default()
        };
        let mut conn = ScpiConn::new(a, framing);
        b.write_all(b"12345678\n123456789\n").await.unwrap();
        assert_eq!(
            timeout(T, conn.read_reply()).await.unwrap().unwrap(),
            "12345678"
        );
        assert!(matches!(
            timeout(T, conn.read_reply()).await.unwrap(),
            Err(ScpiIoError::ReplyTooLong { max: 8 })
        ));
    }

    #[test]
    fn framing_from_driver_settings() {
        let settings = ScpiSettings {
            write_termination: "\r\n".to_string(),
            read_termination: "\r".to_string(),
            ..ScpiSettings::default()
        };
        let f = Framing::from(&settings);
        assert_eq!(f.write_termination, b"\r\n");
        assert_eq!(f.read_termination, b"\r");
        assert_eq!(f.max_reply, DEFAULT_MAX_REPLY);
    }

    #[test]
    fn which_errors_need_a_reconnect() {
        assert!(ScpiIoError::Closed.needs_reconnect());
        assert!(ScpiIoError::ReplyTooLong { max: 1 }.needs_reconnect());
        assert!(ScpiIoError::Io(std::io::ErrorKind::BrokenPipe.into()).needs_reconnect());
        assert!(
            !ScpiIoError::NotUtf8 {
                preview: String::new()
            }
            .needs_reconnect()
        );
        assert!(
            !ScpiIoError::CommandHasTerminator {
                preview: String::new()
            }
            .needs_reconnect()
        );
    }
}
