//! Pseudo-terminals, so a simulated instrument can sit behind a device path that labgate opens
//! with `tokio_serial::new(path, baud).open_native_async()` exactly as it would a real port.
//!
//! Linux makes the master side of a pty fail with `EIO` whenever no process has the slave side
//! open: before the client first opens the path, and between a client closing and reopening it.
//! A simulator would see that as its device being unplugged. So the slave end that
//! `SerialStream::pair()` opens is kept open by a small background task until the master is
//! closed (the kept slave is never read, so every byte still reaches the client).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio_serial::{SerialPort, SerialStream};

/// How often the keeper task checks whether the master has gone.
const KEEPER_POLL: Duration = Duration::from_millis(500);

/// Open a pseudo-terminal in raw mode (no echo, no line editing). Returns the simulator's side
/// (the master) and the device path a client opens. Must be called inside a tokio runtime.
pub fn open_pty() -> io::Result<(SerialStream, PathBuf)> {
    let (master, slave) = SerialStream::pair().map_err(io::Error::from)?;
    let path = slave
        .name()
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("pseudo-terminal has no device path"))?;
    tokio::spawn(hold_open(slave));
    Ok((master, path))
}

/// Keep the slave open until the master hangs up, then close it so the pty is freed.
async fn hold_open(slave: SerialStream) {
    let fd = slave.as_raw_fd();
    let mut tick = tokio::time::interval(KEEPER_POLL);
    loop {
        tick.tick().await;
        if peer_hung_up(fd) {
            break;
        }
    }
    drop(slave);
}

/// Whether the fd reports hang-up or error, without reading (the data belongs to the client).
fn peer_hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, the count is 1, the timeout
    // is 0 (no blocking), and `fd` is owned by the caller's live `SerialStream`.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}
