//! The seam for message-based instrument connections: USB-TMC, Prologix GPIB, VXI-11, HiSLIP.
//!
//! A raw socket or serial line carries SCPI as a byte stream, and a reply ends where the
//! driver's read terminator is ([`crate::scpi::session::ScpiConn`]). The connections here carry
//! *messages* instead: one write is one complete message (its last byte flagged END/EOI), one read
//! returns one complete reply, and the device can be cleared out of band. The link actor drives
//! both through the same SCPI path (see `Actor::run_scpi` in `link/mod.rs`); for a message device
//! it:
//!
//! - appends the driver's write terminator to each command and hands the bytes to
//!   [`MessageIo::write_msg`] (the same bytes a socket would carry, so a driver works unchanged;
//!   instruments ignore a trailing newline before END);
//! - calls [`MessageIo::read_msg`] with the reply bound and the driver's read terminator (only
//!   transports that must frame replies themselves, like Prologix, look at it), then strips that
//!   terminator and a trailing `\r` from the reply;
//! - before each exchange calls [`MessageIo::select`] with the instrument's bus address (the
//!   GPIB address of `address = N` instruments on a Prologix link; `None` elsewhere);
//! - maps [`MessageError`] to [`super::LinkError`] (`Timeout` to `LinkError::Timeout`, `TooLong`
//!   and `Protocol` to `Mismatch`, the rest to `Io`) with the usual reconnect rule: every failure
//!   except one for which [`MessageError::keeps_connection`] is true drops the connection, and
//!   reopening after a failure runs [`MessageIo::clear`] so the device forgets a half-sent
//!   reply;
//! - still wraps every call in its own `tokio::time::timeout` (the `timeout` passed in plus
//!   [`PROBE_GRACE`]), so an implementation that forgets a bound cannot hang the link.
//!
//! How to add a kind: implement [`MessageIo`] for the protocol's client and return it from
//! [`open`] for its `Transport` variant, as `vxi11.rs` and `hislip.rs` do for
//! [`crate::vxi11`] and [`crate::hislip`]; config keys and `labgate check` diagnostics live in
//! `config`.
//!
//! The futures are boxed so the actor can hold a `Box<dyn MessageIo>` without caring which kind.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::schema::Transport;

/// Extra time the actor allows beyond the request timeout before it gives up on a message call
/// itself: room for an implementation to probe its adapter after a timeout (Prologix `++ver`).
pub const PROBE_GRACE: Duration = Duration::from_secs(2);

/// How one reply is read.
#[derive(Debug, Clone, Copy)]
pub struct ReadSpec<'a> {
    /// The request's timeout; implementations with a device-side timeout (the usbtmc driver,
    /// VXI-11 `io_timeout`) set it from this, and must return [`MessageError::Timeout`] once it
    /// has passed.
    pub timeout: Duration,
    /// Longest reply accepted.
    pub max: usize,
    /// The driver's read terminator. A true message transport ends a reply at END and ignores
    /// this; a transport that relays a byte stream (Prologix) ends the reply here.
    pub terminator: &'a [u8],
}

/// Why a message exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the device")]
    Closed,
    /// No reply in time, and nothing more specific is known.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("reply longer than {max} bytes")]
    TooLong { max: usize },
    /// A bus adapter answered its own liveness check but the instrument behind it did not.
    #[error("no instrument listening at GPIB address {address}")]
    NotListening { address: u8 },
    /// The bus adapter itself does not answer.
    #[error("{adapter} adapter not answering")]
    AdapterSilent { adapter: &'static str },
    /// The protocol said no: an RPC or HiSLIP error code, an unexpected message.
    #[error("{0}")]
    Protocol(String),
    /// This transport cannot do what was asked (e.g. a GPIB address on USB-TMC).
    #[error("{0}")]
    Unsupported(String),
}

impl MessageError {
    /// Whether the link can stay connected after this error. Only a request the transport
    /// refused before sending anything qualifies; everything else may leave a reply in flight.
    pub fn keeps_connection(&self) -> bool {
        matches!(self, MessageError::Unsupported(_))
    }
}

/// One open message-based connection. Every call is made by the link task alone, one at a time.
pub trait MessageIo: Send {
    /// Send one complete message; the transport marks its last byte END/EOI.
    fn write_msg<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Result<(), MessageError>>;

    /// Read one complete reply.
    fn read_msg<'a>(
        &'a mut self,
        spec: ReadSpec<'a>,
    ) -> BoxFuture<'a, Result<Vec<u8>, MessageError>>;

    /// Device clear (USBTMC INITIATE_CLEAR, VXI-11 device_clear, HiSLIP AsyncDeviceClear,
    /// GPIB SDC): the device drops pending input and output. Best effort on recovery.
    fn clear(&mut self) -> BoxFuture<'_, Result<(), MessageError>>;

    /// Address the following exchanges to the instrument at `address` on a shared bus. A
    /// transport without addresses accepts `None` and refuses `Some`.
    fn select(&mut self, address: Option<u8>) -> BoxFuture<'_, Result<(), MessageError>> {
        Box::pin(async move {
            match address {
                None => Ok(()),
                Some(a) => Err(MessageError::Unsupported(format!(
                    "this link kind has no bus addresses (address {a})"
                ))),
            }
        })
    }

    /// What the transport knows about the far end after opening (an adapter's version line);
    /// shown as the link's identity when no instrument identity applies.
    fn peer_info(&self) -> Option<String> {
        None
    }
}

/// Whether a transport carries messages (rather than a byte stream).
pub fn is_message_transport(t: &Transport) -> bool {
    matches!(
        t,
        Transport::Usbtmc { .. }
            | Transport::Prologix { .. }
            | Transport::PrologixSerial { .. }
            | Transport::Vxi11 { .. }
            | Transport::Hislip { .. }
    )
}

/// Whether instruments on this transport are told apart by a bus address (`address = N`).
pub fn is_addressed_transport(t: &Transport) -> bool {
    matches!(
        t,
        Transport::Prologix { .. } | Transport::PrologixSerial { .. }
    )
}

/// Open a message transport. `Err((message, permanent))` like the actor's other openers:
/// `permanent` when retrying soon will not help (permission denied, a server of another kind).
pub async fn open(t: &Transport, timeout: Duration) -> Result<Box<dyn MessageIo>, (String, bool)> {
    let io_err = |e: std::io::Error| {
        let permanent = e.kind() == std::io::ErrorKind::PermissionDenied;
        (
            format!("cannot open {}: {e}", super::transport::describe(t)),
            permanent,
        )
    };
    match t {
        Transport::Usbtmc { device } => super::usbtmc::Usbtmc::open(device, timeout)
            .await
            .map(|d| Box::new(d) as Box<dyn MessageIo>)
            .map_err(io_err),
        Transport::Prologix { .. } | Transport::PrologixSerial { .. } => {
            let stream = super::transport::open(t).await.map_err(io_err)?;
            super::prologix::Prologix::start(stream, timeout)
                .await
                .map(|d| Box::new(d) as Box<dyn MessageIo>)
                .map_err(|e| (e.to_string(), false))
        }
        Transport::Vxi11 {
            host,
            device,
            portmap_port,
        } => super::vxi11::open(host, *portmap_port, device, timeout)
            .await
            .map(|d| Box::new(d) as Box<dyn MessageIo>),
        Transport::Hislip { host, port, device } => {
            super::hislip::open(host, *port, device, timeout)
                .await
                .map(|d| Box::new(d) as Box<dyn MessageIo>)
        }
        Transport::Tcp { .. } | Transport::Serial { .. } | Transport::SerialServer { .. } => {
            Err(("not a message transport".into(), true))
        }
    }
}
