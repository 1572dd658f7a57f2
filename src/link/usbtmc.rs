//! USB-TMC through the Linux `usbtmc` kernel driver's character device (`/dev/usbtmcN`).
//!
//! The kernel does the USBTMC framing: one `write()` is one device-dependent message with EOM
//! set on its last transfer, one `read()` returns one reply, and both give up with `ETIMEDOUT`
//! after the driver's timeout, which we set per request with `USBTMC_IOCTL_SET_TIMEOUT`.
//! Recovery sends `USBTMC_IOCTL_CLEAR` (INITIATE_CLEAR / CHECK_CLEAR_STATUS and a bulk-in
//! flush), so a reply the previous session gave up on is not read as the next one.
//!
//! The usbtmc driver's `poll()` reports only service requests, not replies, so reads on a real
//! node block (in `spawn_blocking`) under the kernel's timeout. A path that is not a usbtmc node
//! (the ioctls fail with `ENOTTY`: a pseudo-terminal in tests, a vendor's compatible device) is
//! accepted too: then we bound each read ourselves with `poll()`, and since such a node has no
//! message boundaries, a reply ends at the driver's read terminator.
//!
//! Access: the node is root-only by default; `systemd/99-labgate-usbtmc.rules` gives the
//! daemon's group read/write access.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::message::{MessageError, MessageIo, ReadSpec};

// linux/usb/tmc.h: USBTMC_IOC_NR 91.
const USBTMC_IOCTL_CLEAR: libc::c_ulong = 0x5b02; // _IO(91, 2)
const USBTMC_IOCTL_SET_TIMEOUT: libc::c_ulong = 0x4004_5b0a; // _IOW(91, 10, __u32)

/// The kernel driver refuses timeouts under 100 ms (EINVAL).
const MIN_KERNEL_TIMEOUT_MS: u32 = 100;

/// An open usbtmc node.
pub struct Usbtmc {
    file: Arc<File>,
    path: PathBuf,
    /// The node answers the usbtmc ioctls: the kernel frames messages and bounds reads.
    kernel: bool,
    /// The timeout last set in the kernel driver, so it is set only when it changes.
    kernel_timeout_ms: Option<u32>,
    /// Not a usbtmc node: bytes read past the last reply's terminator (the node is a stream).
    pending: Vec<u8>,
}

impl Usbtmc {
    /// Open the node. `timeout` is the link's default request timeout.
    pub async fn open(path: &Path, timeout: Duration) -> io::Result<Usbtmc> {
        let p = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&p)
        })
        .await
        .map_err(io::Error::other)??;
        let mut dev = Usbtmc {
            file: Arc::new(file),
            path: path.to_path_buf(),
            kernel: false,
            kernel_timeout_ms: None,
            pending: Vec::new(),
        };
        match dev.set_kernel_timeout(timeout) {
            Ok(()) => dev.kernel = true,
            // Not a usbtmc node: we bound reads ourselves.
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
                tracing::debug!(path = %path.display(), "not a usbtmc node; using poll() timeouts");
            }
            Err(e) => return Err(e),
        }
        Ok(dev)
    }

    /// Whether the node is a real usbtmc device (the ioctls work).
    pub fn is_kernel_device(&self) -> bool {
        self.kernel
    }

    fn set_kernel_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(MIN_KERNEL_TIMEOUT_MS);
        if self.kernel_timeout_ms == Some(ms) {
            return Ok(());
        }
        // SAFETY: the fd is open for the lifetime of `self.file`; the ioctl reads one u32 from
        // a pointer to a live local.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                USBTMC_IOCTL_SET_TIMEOUT as _,
                &ms as *const u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.kernel_timeout_ms = Some(ms);
        Ok(())
    }
}

fn map_io(e: io::Error, timeout: Duration) -> MessageError {
    match e.raw_os_error() {
        Some(libc::ETIMEDOUT) => MessageError::Timeout(timeout),
        // The device was unplugged.
        Some(libc::ENODEV) | Some(libc::EIO) | Some(libc::EPIPE) => MessageError::Closed,
        _ => MessageError::Io(e),
    }
}

/// Wait until `fd` is readable, at most until `deadline`. `Ok(false)` on timeout.
fn poll_readable(fd: i32, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(false);
        }
        if pfd.revents & libc::POLLIN != 0 {
            return Ok(true);
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
    }
}

/// One read() on a usbtmc node is one reply.
fn read_message(file: &File, max: usize, timeout: Duration) -> Result<Vec<u8>, MessageError> {
    // One byte more than allowed tells an over-long reply from one that fits.
    let mut buf = vec![0u8; max.saturating_add(1).min(64 * 1024 * 1024)];
    let n = (&*file).read(&mut buf).map_err(|e| map_io(e, timeout))?;
    if n > max {
        return Err(MessageError::TooLong { max });
    }
    buf.truncate(n);
    Ok(buf)
}

/// A node without message boundaries: a reply ends at the first terminator; what follows stays
/// in `pending` for the next read.
fn read_framed(
    file: &File,
    pending: &mut Vec<u8>,
    terminator: &[u8],
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, MessageError> {
    if terminator.is_empty() {
        return Err(MessageError::Unsupported(
            "a node that is not a usbtmc device needs a read termination".into(),
        ));
    }
    let deadline = Instant::now() + timeout;
    let fd = file.as_raw_fd();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = memchr::memmem::find(pending, terminator) {
            let rest = pending.split_off(pos + terminator.len());
            return Ok(std::mem::replace(pending, rest));
        }
        if pending.len() > max {
            pending.clear();
            return Err(MessageError::TooLong { max });
        }
        if !poll_readable(fd, deadline).map_err(|e| map_io(e, timeout))? {
            return Err(MessageError::Timeout(timeout));
        }
        let n = (&*file).read(&mut chunk).map_err(|e| map_io(e, timeout))?;
        if n == 0 {
            return Err(MessageError::Closed);
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

impl MessageIo for Usbtmc {
    fn write_msg<'a>(&'a mut self, msg: &'a [u8]) -> BoxFuture<'a, Result<(), MessageError>> {
        Box::pin(async move {
            let file = self.file.clone();
            let data = msg.to_vec();
            let timeout = self.kernel_timeout_ms.map_or(Duration::from_secs(1), |ms| {
                Duration::from_millis(ms.into())
            });
            tokio::task::spawn_blocking(move || {
                // One write() is one message: the kernel sets EOM on its last transfer.
                let n = (&*file).write(&data)?;
                if n != data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short write: {n} of {} bytes", data.len()),
                    ));
                }
                Ok(())
            })
            .await
            .map_err(|e| MessageError::Io(io::Error::other(e)))?
            .map_err(|e| map_io(e, timeout))
        })
    }

    fn read_msg<'a>(
        &'a mut self,
        spec: ReadSpec<'a>,
    ) -> BoxFuture<'a, Result<Vec<u8>, MessageError>> {
        Box::pin(async move {
            if self.kernel {
                self.set_kernel_timeout(spec.timeout)?;
            }
            let file = self.file.clone();
            let kernel = self.kernel;
            let max = spec.max;
            let terminator = spec.terminator.to_vec();
            let timeout = spec.timeout;
            let mut pending = std::mem::take(&mut self.pending);
            let (result, rest) = tokio::task::spawn_blocking(move || {
                let r = if kernel {
                    read_message(&file, max, timeout)
                } else {
                    read_framed(&file, &mut pending, &terminator, max, timeout)
                };
                (r, pending)
            })
            .await
            .map_err(|e| MessageError::Io(io::Error::other(e)))?;
            self.pending = rest;
            result
        })
    }

    fn clear(&mut self) -> BoxFuture<'_, Result<(), MessageError>> {
        self.pending.clear();
        Box::pin(async move {
            let file = self.file.clone();
            let kernel = self.kernel;
            tokio::task::spawn_blocking(move || {
                let fd = file.as_raw_fd();
                // SAFETY: `fd` stays open while `file` lives; neither call takes a pointer.
                let rc = if kernel {
                    unsafe { libc::ioctl(fd, USBTMC_IOCTL_CLEAR as _) }
                } else {
                    // No device clear without the driver: drop what is queued for reading.
                    unsafe { libc::tcflush(fd, libc::TCIFLUSH) }
                };
                if rc < 0 && kernel {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .await
            .map_err(|e| MessageError::Io(io::Error::other(e)))?
            .map_err(MessageError::Io)
        })
    }

    fn peer_info(&self) -> Option<String> {
        Some(format!(
            "{} ({})",
            self.path.display(),
            if self.kernel {
                "usbtmc"
            } else {
                "not a usbtmc node"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl numbers from linux/usb/tmc.h, rebuilt from the _IO/_IOW encoding.
    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        const IOC_WRITE: libc::c_ulong = 1;
        let io = |nr: libc::c_ulong| (91 << 8) | nr;
        let iow =
            |nr: libc::c_ulong, size: libc::c_ulong| (IOC_WRITE << 30) | (size << 16) | io(nr);
        assert_eq!(USBTMC_IOCTL_CLEAR, io(2));
        assert_eq!(USBTMC_IOCTL_SET_TIMEOUT, iow(10, 4));
    }
}
