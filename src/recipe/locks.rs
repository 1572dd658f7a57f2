//! Instrument ownership: an instrument belongs to one run at a time.
//!
//! A second run that needs a held instrument is refused with a message naming the holder, before
//! it touches anything, or, if it asks to, waits in line until the instruments are free.
//! Background polls do not take locks: they keep reading between a run's
//! requests (the link task serializes them).
//!
//! **Across processes.** [`Locks::new`] only sees the runs of its own process. [`Locks::in_dir`]
//! also takes an advisory `flock` on `<dir>/<instrument>.lock` per instrument and writes the
//! holder's description (its text and pid) into the file, so the daemon and a `labgate run` on
//! the same data directory refuse each other with the holder's name. The kernel drops a flock
//! when its file is closed, including when the process dies by `kill -9`, so a crashed holder
//! never leaves a stale lock; the text left in the file is only ever read while the lock is held.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instrument `{instrument}` is in use by {holder}")]
pub struct Busy {
    pub instrument: String,
    pub holder: String,
}

/// How often a queued run looks again at instruments held by another process (a release in
/// this process wakes it at once).
const POLL_OTHER_PROCESSES: Duration = Duration::from_millis(200);

/// The instruments held by runs, shared by everything that starts runs in one process (and, with
/// [`Locks::in_dir`], by every process using the same lock directory).
#[derive(Debug, Clone, Default)]
pub struct Locks {
    held: Arc<Mutex<BTreeMap<String, String>>>,
    released: Arc<tokio::sync::Notify>,
    dir: Option<Arc<PathBuf>>,
}

/// Releases its instruments when dropped.
#[derive(Debug)]
pub struct Guard {
    locks: Locks,
    ids: Vec<String>,
    /// Open (and flocked) lock files, one per instrument, when the locks have a directory.
    files: Vec<File>,
}

impl Locks {
    /// Ownership within this process only.
    pub fn new() -> Locks {
        Locks::default()
    }

    /// Ownership shared with every process that uses `dir` (by convention `<data>/locks`).
    /// Creates the directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> std::io::Result<Locks> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Locks {
            dir: Some(Arc::new(dir)),
            ..Locks::default()
        })
    }

    /// The lock directory inside a data directory.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join("locks")
    }

    /// The directory shared with other processes, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref().map(PathBuf::as_path)
    }

    /// Take every instrument in `ids` for `holder`, or none of them.
    pub fn try_acquire(&self, ids: &[String], holder: &str) -> Result<Guard, Busy> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, h)) = ids.iter().find_map(|id| held.get(id).map(|h| (id, h))) {
            return Err(Busy {
                instrument: id.clone(),
                holder: h.clone(),
            });
        }
        // Under the map's mutex, so two runs of this process never race for the same file.
        let files = match &self.dir {
            Some(dir) => lock_files(dir, ids, holder)?,
            None => Vec::new(),
        };
        for id in ids {
            held.insert(id.clone(), holder.to_string());
        }
        Ok(Guard {
            locks: self.clone(),
            ids: ids.to_vec(),
            files,
        })
    }

    /// Take every instrument in `ids`, waiting for their holders to finish. Gives up with the
    /// current holder when `give_up` is cancelled first.
    pub async fn acquire(
        &self,
        ids: &[String],
        holder: &str,
        give_up: &tokio_util::sync::CancellationToken,
    ) -> Result<Guard, Busy> {
        loop {
            // Registered before trying, so a release between the try and the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let busy = match self.try_acquire(ids, holder) {
                Ok(g) => return Ok(g),
                Err(b) => b,
            };
            // Another process cannot wake us: look again now and then.
            let poll = async {
                match &self.dir {
                    Some(_) => tokio::time::sleep(POLL_OTHER_PROCESSES).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut released => {}
                _ = poll => {}
                _ = give_up.cancelled() => return Err(busy),
            }
        }
    }

    /// Who holds `id` in this process, if anyone. (Holders in other processes are named by the
    /// [`Busy`] that refuses a run.)
    pub fn holder(&self, id: &str) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(id).cloned()
    }
}

impl Guard {
    /// Describe the holder anew, e.g. once the run has an id.
    pub fn set_holder(&self, holder: &str) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            held.insert(id.clone(), holder.to_string());
        }
        drop(held);
        self.describe_to_other_processes(holder);
    }

    /// Describe the holder anew for other processes only (they cannot ask this one which run
    /// it is); runs of this process keep seeing the description given at acquisition.
    pub fn describe_to_other_processes(&self, holder: &str) {
        for f in &self.files {
            // Only a description for others' messages: a failed rewrite leaves the old one.
            let _ = describe(f, holder);
        }
    }
}

/// A file name for an instrument id: ids come from the config and may hold any character.
fn file_name(id: &str) -> String {
    let mut s = String::with_capacity(id.len() + 5);
    for (i, b) in id.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(".lock");
    s
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain FFI call on a file descriptor that `f` keeps open for the call's duration.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn describe(mut f: &File, holder: &str) -> std::io::Result<()> {
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{holder} (pid {})", std::process::id())
}

/// Lock every id's file or none (files already locked are closed again, which unlocks them).
fn lock_files(dir: &Path, ids: &[String], holder: &str) -> Result<Vec<File>, Busy> {
    let mut files = Vec::with_capacity(ids.len());
    for id in ids {
        let path = dir.join(file_name(id));
        let unusable = |e: std::io::Error| Busy {
            instrument: id.clone(),
            holder: format!(
                "an unknown holder (cannot use lock file {}: {e})",
                path.display()
            ),
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(unusable)?;
        match flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(Busy {
                    instrument: id.clone(),
                    holder: read_holder(&f),
                });
            }
            Err(e) => return Err(unusable(e)),
        }
        describe(&f, holder).map_err(unusable)?;
        files.push(f);
    }
    Ok(files)
}

/// The description another process wrote into its lock file.
fn read_holder(mut f: &File) -> String {
    // The holder writes its description right after taking the lock: give it a moment.
    for _ in 0..5 {
        let mut text = String::new();
        if f.rewind().is_ok() && f.read_to_string(&mut text).is_ok() {
            let text = text.trim();
            if !text.is_empty() {
                return text.to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    "another process".to_string()
}

impl Drop for Guard {
    fn drop(&mut self) {
        for f in &self.files {
            // Stale text would only confuse someone reading the file by hand.
            let _ = f.set_len(0);
        }
        // Closing the files releases the flocks.
        self.files.clear();
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_nothing_and_released_on_drop() {
        let locks = Locks::new();
        let a = locks
            .try_acquire(&["pa1".into(), "src1".into()], "run 1")
            .unwrap();
        let err = locks
            .try_acquire(&["sphere1".into(), "src1".into()], "run 2")
            .unwrap_err();
        assert_eq!(err.to_string(), "instrument `src1` is in use by run 1");
        assert_eq!(locks.holder("sphere1"), None, "nothing taken on refusal");
        drop(a);
        assert!(locks.try_acquire(&["src1".into()], "run 2").is_ok());
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("pa1"), "pa1.lock");
        assert_eq!(file_name("a.b-c_d"), "a.b-c_d.lock");
        assert_eq!(file_name("../x"), "%2E.%2Fx.lock");
        assert_eq!(file_name("a b/é"), "a%20b%2F%C3%A9.lock");
    }

    /// Two `Locks` on one directory stand for two processes: flocks on separate open files
    /// exclude each other even within one process.
    #[test]
    fn a_shared_directory_excludes_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Locks::in_dir(dir.path().join("locks")).unwrap();
        let cli = Locks::in_dir(dir.path().join("locks")).unwrap();
        let g = daemon
            .try_acquire(&["pa1".into(), "src1".into()], "run 7")
            .unwrap();
        let err = cli
            .try_acquire(&["sphere1".into(), "src1".into()], "run 8")
            .unwrap_err();
        assert_eq!(err.instrument, "src1");
        assert_eq!(
            err.holder,
            format!("run 7 (pid {})", std::process::id()),
            "{err}"
        );
        // Nothing kept on refusal: sphere1 is still free for the first one.
        let g2 = daemon.try_acquire(&["sphere1".into()], "run 9").unwrap();
        g.describe_to_other_processes("run 7 for others");
        let err = cli.try_acquire(&["pa1".into()], "run 8").unwrap_err();
        assert!(err.holder.starts_with("run 7 for others"), "{err}");
        assert_eq!(daemon.holder("pa1").as_deref(), Some("run 7"));
        g.set_holder("run 7 renamed");
        let err = cli.try_acquire(&["pa1".into()], "run 8").unwrap_err();
        assert!(err.holder.starts_with("run 7 renamed"), "{err}");
        assert_eq!(daemon.holder("pa1").as_deref(), Some("run 7 renamed"));
        drop(g);
        drop(g2);
        assert!(
            cli.try_acquire(&["sphere1".into(), "src1".into()], "run 8")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_queued_run_sees_another_process_release() {
        let dir = tempfile::tempdir().unwrap();
        let a = Locks::in_dir(dir.path()).unwrap();
        let b = Locks::in_dir(dir.path()).unwrap();
        let g = a.try_acquire(&["src1".into()], "run 1").unwrap();
        let give_up = tokio_util::sync::CancellationToken::new();
        let waiter = tokio::spawn(async move {
            b.acquire(&["src1".into()], "run 2", &give_up)
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait while held");
        drop(g);
        let r = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by polling within the bound")
            .unwrap();
        assert!(r.is_ok());
    }
}
