//! Opening the byte stream under a link: a TCP socket or a serial port.
//!
//! Everything above this file sees one boxed `AsyncRead + AsyncWrite` stream, so SCPI and Modbus
//! run unchanged over TCP, a real serial port or a pseudo-terminal.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    match t {
        Transport::Tcp { host, port } => {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
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
    }
}

/// Open the transport. Timeouts are the caller's business.
pub async fn open(t: &Transport) -> io::Result<Stream> {
    match t {
        Transport::Tcp { host, port } => {
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
            let path = device.to_string_lossy().into_owned();
            let builder = tokio_serial::new(path, *baud)
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
                .stop_bits(if *stop_bits == 2 {
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
            Ok(Stream::new(Box::new(port), describe(t)))
        }
    }
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
pub fn t35(baud: u32) -> std::time::Duration {
    if baud == 0 || baud > 19_200 {
        std::time::Duration::from_micros(1750)
    } else {
        std::time::Duration::from_secs_f64(3.5 * 11.0 / baud as f64)
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
