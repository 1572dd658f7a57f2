//! Opening the byte stream under a link: a TCP socket or a serial port.
//!
//! Everything above this file sees one boxed `AsyncRead + AsyncWrite` stream, so SCPI and Modbus
//! run unchanged over TCP, a real serial port or a pseudo-terminal.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_serial::SerialPortBuilderExt;

use crate::config::schema::{FlowControl, Parity, Transport};

/// Object-safe union of the stream traits.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A connected stream. tokio-modbus wants `Debug` on its transport; a boxed trait object has none.
pub struct Stream {
    inner: Box<dyn ByteStream>,
    peer: String,
}

impl Stream {
    pub fn new(inner: Box<dyn ByteStream>, peer: String) -> Self {
        Stream { inner, peer }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stream({})", self.peer)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Human-readable endpoint, for messages: `127.0.0.1:5025` or `/dev/ttyUSB0 9600 8N1`.
pub fn describe(t: &Transport) -> String {
    let hostport = |host: &str, port: u16| {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    match t {
        Transport::Tcp { host, port } => hostport(host, *port),
        Transport::SerialServer { host, port, baud } => {
            format!("{} (serial {baud} baud)", hostport(host, *port))
        }
        Transport::Serial {
            device,
            baud,
            data_bits,
            parity,
            stop_bits,
            ..
        } => {
            let p = match parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            };
            format!("{} {baud} {data_bits}{p}{stop_bits}", device.display())
        }
        Transport::Usbtmc { device } => format!("usbtmc {}", device.display()),
        Transport::Prologix { host, port } => format!("prologix {}", hostport(host, *port)),
        Transport::PrologixSerial { device, .. } => format!("prologix {}", device.display()),
        Transport::Vxi11 {
            host,
            device,
            portmap_port,
        } => {
            if *portmap_port == crate::config::schema::DEFAULT_PORTMAP_PORT {
                format!("vxi11 {host}/{device}")
            } else {
                format!("vxi11 {host}/{device} (portmapper port {portmap_port})")
            }
        }
        Transport::Hislip { host, port, device } => {
            format!("hislip {}/{device}", hostport(host, *port))
        }
    }
}

/// Open the byte stream of a stream transport (and of Prologix, whose adapter is reached over
/// one). Timeouts are the caller's business.
pub async fn open(t: &Transport) -> io::Result<Stream> {
    match t {
        Transport::Tcp { host, port }
        | Transport::SerialServer { host, port, .. }
        | Transport::Prologix { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            // SCPI and Modbus are request/response with small frames: Nagle only adds latency.
            stream.set_nodelay(true)?;
            Ok(Stream::new(Box::new(stream), describe(t)))
        }
        Transport::Serial {
            device,
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control,
        } => {
            let port = open_serial(
                device,
                *baud,
                *data_bits,
                *parity,
                *stop_bits,
                *flow_control,
            )?;
            Ok(Stream::new(Box::new(port), describe(t)))
        }
        Transport::PrologixSerial { device, baud } => {
            let port = open_serial(device, *baud, 8, Parity::None, 1, FlowControl::None)?;
            Ok(Stream::new(Box::new(port), describe(t)))
        }
        Transport::Usbtmc { .. } | Transport::Vxi11 { .. } | Transport::Hislip { .. } => {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is a message transport, not a byte stream", describe(t)),
            ))
        }
    }
}

fn open_serial(
    device: &std::path::Path,
    baud: u32,
    data_bits: u8,
    parity: Parity,
    stop_bits: u8,
    flow_control: FlowControl,
) -> io::Result<tokio_serial::SerialStream> {
    let path = device.to_string_lossy().into_owned();
    let builder = tokio_serial::new(path, baud)
        .data_bits(match data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        });
    let mut port = builder.open_native_async().map_err(serial_to_io)?;
    // Another process writing to the same port would corrupt frames; pseudo-terminals may
    // refuse TIOCEXCL, which is harmless.
    let _ = port.set_exclusive(true);
    // A serial line has no connection to drop: bytes a device sent after the previous
    // session gave up on it (a late reply) are still queued. They are no reply to
    // anything this session will ask.
    let _ = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input);
    Ok(port)
}

/// Whether the transport ends in a serial line, directly or behind a device server: a late
/// reply can still arrive after the connection is dropped, and stale bytes can wait in the
/// line's buffers when a new one is opened.
pub fn is_serial_line(t: &Transport) -> bool {
    matches!(
        t,
        Transport::Serial { .. }
            | Transport::SerialServer { .. }
            | Transport::PrologixSerial { .. }
    )
}

/// The serial baud rate behind the transport, if it has one that sets frame timing.
pub fn serial_baud(t: &Transport) -> Option<u32> {
    match t {
        Transport::Serial { baud, .. } | Transport::SerialServer { baud, .. } => Some(*baud),
        _ => None,
    }
}

/// How long a fresh device-server connection must stay quiet before it counts as clean.
pub const STALE_QUIET: Duration = Duration::from_millis(30);
/// Upper bound on draining stale bytes, so a device that never stops talking cannot block
/// connecting (its babble then fails the first request and the link reconnects).
pub const STALE_MAX: Duration = Duration::from_millis(300);

/// Read and throw away whatever arrives on a fresh connection until it has been quiet for
/// [`STALE_QUIET`] (at most [`STALE_MAX`]): the serial-line equivalent of flushing the input
/// buffer when a port is reopened. Returns the number of bytes discarded.
pub async fn drain_stale(stream: &mut Stream) -> usize {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + STALE_MAX;
    let mut buf = [0u8; 1024];
    let mut dropped = 0;
    loop {
        let quiet_until = (tokio::time::Instant::now() + STALE_QUIET).min(deadline);
        match tokio::time::timeout_at(quiet_until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            // Quiet, closed or failed: the request that follows will find out which.
            _ => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    if dropped > 0 {
        tracing::debug!(peer = %stream.peer, dropped, "discarded stale bytes on a new connection");
    }
    dropped
}

fn serial_to_io(e: tokio_serial::Error) -> io::Error {
    let kind = match e.kind {
        tokio_serial::ErrorKind::NoDevice => io::ErrorKind::NotFound,
        tokio_serial::ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
        tokio_serial::ErrorKind::Io(k) => k,
        tokio_serial::ErrorKind::Unknown => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.description)
}

/// Modbus RTU inter-frame silence t3.5 for a baud rate (Modbus over Serial Line V1.02 §2.5.1.1):
/// 3.5 character times of 11 bits, fixed at 1.75 ms above 19200 baud.
pub fn t35(baud: u32) -> Duration {
    if baud == 0 || baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * 11.0 / baud as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t35_follows_the_serial_line_spec() {
        // 9600 baud: 3.5 * 11 / 9600 = 4.0104 ms
        let t = t35(9600);
        assert!((t.as_secs_f64() - 0.0040104).abs() < 1e-6, "{t:?}");
        assert_eq!(t35(115_200), std::time::Duration::from_micros(1750));
        assert_eq!(t35(19_200).as_micros(), 2005);
    }
}
