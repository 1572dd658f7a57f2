//! The results store: runs, steps, measurements and events in one SQLite file in the data
//! directory.
//!
//! **Durability.** Every write call returns only after its transaction has committed to the WAL.
//! With the default [`SyncLevel::Normal`] a committed write survives `kill -9` of the process (the
//! data is in the OS page cache, which SQLite recovers from the WAL at the next open) but a power
//! cut may lose the last commits; that is why the default also syncs the WAL when a step or a run
//! finishes, bounding a power cut's loss to the step in progress. Step ends that follow each
//! other within [`StoreOptions::step_sync_interval`] (50 ms) share one sync, taken at most that
//! long after the first of them (group commit): a recipe of fast steps would otherwise pay one
//! disk flush per step. Run ends always sync before returning.
//! [`SyncLevel::Full`] syncs every commit (power-safe, slower on slow disks).
//!
//! **Threads.** rusqlite is blocking and a commit can wait on the disk, so no call runs on a
//! tokio worker: one dedicated writer thread owns the only write connection and executes write
//! jobs from a channel in order (SQLite allows one writer anyway, so a pool of writers would only
//! fight over the lock), and reads run on `spawn_blocking` with a small pool of read-only
//! connections, which WAL lets proceed while the writer commits. [`Store`] is a cheap clone.
//!
//! Writes queue on an unbounded channel: each caller awaits its own write, so the queue holds at
//! most one job per concurrent caller, plus the events a run queued without waiting
//! ([`Store::queue_event`]) since its last awaited write. Queued events are written in the next
//! write's transaction (one commit for both), or alone after a few milliseconds.
//!
//! A crash leaves runs marked running: the daemon calls [`Store::mark_interrupted`] once at
//! start-up, before starting any run (a CLI that only reads must not call it).

mod db;
mod export;
pub mod migrate;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::ffi::ErrorCode;

pub use db::{DEFAULT_PAGE, EVENTS_BATCH, MAX_PAGE};
pub use export::{CSV_HEADER, export_csv, export_json, write_csv};
pub use model::*;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the results directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open results store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "results store {path} has schema version {found}, newer than this labgate supports \
         ({supported}); use a newer labgate or another data directory"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("results store {path}: migration to schema version {version} failed: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("results store {path} is corrupt ({op}): {detail}")]
    Corrupt {
        path: PathBuf,
        op: &'static str,
        detail: String,
    },
    #[error("results store: {op} failed: {source}")]
    Sqlite {
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("results store: {op}: bad json: {source}")]
    Json {
        op: &'static str,
        source: serde_json::Error,
    },
    #[error("results export failed: {detail}")]
    Export { detail: String },
    #[error("run {run} not found")]
    RunNotFound { run: RunId },
    #[error("cannot {op}: run {run} is already finished")]
    RunFinished { run: RunId, op: &'static str },
    #[error("step {step} not found")]
    StepNotFound { step: StepId },
    #[error("step {step} is already finished")]
    StepFinished { step: StepId },
    #[error("measurement {name:?} rejected: {reason}")]
    InvalidMeasurement { name: String, reason: String },
    #[error("bad page cursor {cursor:?}")]
    BadCursor { cursor: String },
    #[error("cannot start the writer thread for results store {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("results store {path} is closed (its writer thread stopped)")]
    Closed { path: PathBuf },
}

/// How hard a commit is pushed to the disk; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncLevel {
    /// Survives a process crash; a power cut may lose the latest commits.
    #[default]
    Normal,
    /// Every commit is synced: survives a power cut too.
    Full,
}

impl SyncLevel {
    fn pragma(self) -> &'static str {
        match self {
            SyncLevel::Normal => "NORMAL",
            SyncLevel::Full => "FULL",
        }
    }
}

/// Tuning for [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub sync: SyncLevel,
    /// With `SyncLevel::Normal`: sync the WAL when a step or run finishes.
    pub sync_at_step_end: bool,
    /// With `sync_at_step_end`: step ends closer together than this share one sync (group
    /// commit), taken at the latest this long after the first unsynced step end. Zero syncs
    /// every step end before `finish_step` returns. Run ends always sync at once.
    pub step_sync_interval: Duration,
    /// How long a connection waits for another one's lock (e.g. a CLI reading) before failing.
    pub busy_timeout: Duration,
    /// Read connections kept open for reuse.
    pub read_pool: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncLevel::Normal,
            sync_at_step_end: true,
            step_sync_interval: DEFAULT_STEP_SYNC_INTERVAL,
            busy_timeout: Duration::from_secs(5),
            read_pool: 4,
        }
    }
}

/// Default [`StoreOptions::step_sync_interval`]: a power cut loses at most this much of finished
/// steps, while a recipe of fast steps does not pay one disk flush (about 1 ms on a virtual
/// disk) per step.
pub const DEFAULT_STEP_SYNC_INTERVAL: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce(&mut Connection, &mut WriterState) + Send>;

/// What the writer thread remembers between jobs: when the WAL was last synced and whether
/// a step end is still waiting for a sync.
struct WriterState {
    wal: PathBuf,
    last_sync: std::time::Instant,
    /// Set while a committed step end is not yet synced: the deadline for its sync.
    pending_sync: Option<std::time::Instant>,
    /// Events from [`Store::queue_event`] not yet written: (run, kind, payload, time in µs).
    events: Vec<(RunId, String, serde_json::Value, i64)>,
    /// When queued events are written on their own if no other write takes them along first.
    events_due: Option<std::time::Instant>,
    notify: tokio::sync::broadcast::Sender<RunId>,
}

/// How long queued events may wait for another write to share its commit. Short enough for a
/// live view; long enough to span an instrument request between two writes of a run.
const EVENT_FLUSH_DELAY: Duration = Duration::from_millis(5);

impl WriterState {
    /// Writes the queued events inside the caller's transaction, behind a savepoint so that a
    /// bad event cannot fail the write it rides along with. Returns whether they are in (then
    /// they count once the transaction commits: see [`WriterState::events_committed`]).
    fn write_events(&mut self, conn: &Connection) -> bool {
        if self.events.is_empty() {
            return false;
        }
        let r = conn
            .execute_batch("SAVEPOINT queued_events")
            .map_err(|source| StoreError::Sqlite {
                op: "add queued events",
                source,
            });
        let r = r.and_then(|_| {
            for (run, kind, payload, at) in &self.events {
                db::add_event(conn, *run, kind, payload, *at)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                let _ = conn.execute_batch("RELEASE queued_events");
                true
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK TO queued_events; RELEASE queued_events");
                tracing::warn!(error = %e, dropped = self.events.len(), "cannot store run events");
                self.events.clear();
                self.events_due = None;
                false
            }
        }
    }

    /// The transaction that carried the queued events committed: tell their subscribers.
    fn events_committed(&mut self) {
        let mut runs: Vec<RunId> = self.events.drain(..).map(|e| e.0).collect();
        runs.dedup();
        for run in runs {
            // No subscribers is the normal case, not an error.
            let _ = self.notify.send(run);
        }
        self.events_due = None;
    }

    /// Queued events that no other write took along: written in a transaction of their own.
    fn flush_events(&mut self, conn: &mut Connection) {
        let mut carried = false;
        let r = run_write(conn, false, |c| {
            carried = self.write_events(c);
            Ok(())
        });
        match r {
            Ok(()) if carried => self.events_committed(),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, dropped = self.events.len(), "cannot store run events");
                self.events.clear();
                self.events_due = None;
            }
        }
    }

    /// Flush the WAL file (SQLite wrote the committed frames to it; NORMAL only leaves the
    /// flush to checkpoints). Any descriptor of the file flushes the same inode.
    fn sync_wal(&mut self) {
        let r = std::fs::File::open(&self.wal).and_then(|f| f.sync_data());
        match r {
            Ok(()) => {}
            // No WAL file: everything is in the database file, synced by the checkpoint.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(wal = %self.wal.display(), error = %e, "cannot sync the results store's write-ahead log")
            }
        }
        self.last_sync = std::time::Instant::now();
        self.pending_sync = None;
    }
}

/// How a write job is wrapped on the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// One transaction around the job.
    Txn,
    /// One transaction, committed with a WAL sync when the options ask for step-end syncs.
    TxnSynced,
    /// Like `TxnSynced`, but the sync may be shared with nearby step ends
    /// ([`StoreOptions::step_sync_interval`]).
    StepEnd,
    /// The job's only change is one statement, atomic on its own: skipping BEGIN/COMMIT saves
    /// two statements on the hottest path (`add_measurement`).
    Single,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    writer: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    /// Bounds concurrent reads (so blocking threads and open connections) to the pool size.
    read_permits: tokio::sync::Semaphore,
    /// Ids of runs that just got new events, sent after the commit.
    notify: tokio::sync::broadcast::Sender<RunId>,
}

/// A cloneable handle on the results store; see the module documentation.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn open_connection(path: &Path, options: &StoreOptions) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(options.busy_timeout).map_err(open_err)?;
    // journal_mode is the first statement that reads the file, so a file that is not a database
    // fails here, named by its path.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            op: "enable write-ahead log",
            detail: format!("journal mode stays {mode:?}"),
        });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
        options.sync.pragma()
    ))
    .map_err(open_err)?;
    Ok(conn)
}

/// Notices a slow subscriber may fall behind by before it sees `Lagged` (then it should re-read
/// every run it follows).
const NOTIFY_CAPACITY: usize = 1024;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "results.db";

/// Where the store lives in a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

impl Store {
    /// Opens (creating directory and file if needed) and migrates the store with default options.
    ///
    /// Blocks briefly on file I/O: call it at start-up or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = open_connection(&path, &options)?;
        migrate::migrate(&mut conn, &path)?;
        // Cheap, and keeps the planner's statistics fresh enough to pick the right index.
        conn.execute_batch("PRAGMA optimize = 0x10002")
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let notify = tokio::sync::broadcast::channel(NOTIFY_CAPACITY).0;
        let mut state = WriterState {
            wal: PathBuf::from(wal),
            last_sync: std::time::Instant::now(),
            pending_sync: None,
            events: Vec::new(),
            events_due: None,
            notify: notify.clone(),
        };
        std::thread::Builder::new()
            .name("labgate-store".into())
            .spawn(move || {
                loop {
                    // Due first, even when jobs keep coming.
                    let now = std::time::Instant::now();
                    if state.events_due.is_some_and(|d| d <= now) {
                        state.flush_events(&mut conn);
                    }
                    if state.pending_sync.is_some_and(|d| d <= now) {
                        state.sync_wal();
                    }
                    // A step end waiting for its shared sync, or queued events, bound the wait
                    // for the next job.
                    let due = match (state.pending_sync, state.events_due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let job = match due {
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                        Some(deadline) => {
                            let left =
                                deadline.saturating_duration_since(std::time::Instant::now());
                            match rx.recv_timeout(left) {
                                Ok(j) => j,
                                // Whatever is due is done at the top of the loop.
                                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    };
                    // A bug in one job must not take the store down: its transaction rolls back
                    // as the panic unwinds, its caller sees `Closed`, and later jobs still run.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&mut conn, &mut state)
                    }));
                }
                // Ends when the last handle (and so the last sender) is dropped.
                if !state.events.is_empty() {
                    state.flush_events(&mut conn);
                }
                if state.pending_sync.is_some() {
                    state.sync_wal();
                }
                let _ = conn.execute_batch("PRAGMA optimize");
            })
            .map_err(|source| StoreError::Spawn {
                path: path.clone(),
                source,
            })?;
        let permits = options.read_pool.max(1);
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                options,
                writer: tx,
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(permits),
                notify,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Tells which run got new events, after they are committed, so an event stream need not
    /// poll. Subscribe first, then read the backlog with [`Store::events_since`], then read again
    /// from the last seq on each notice for your run: a notice may cover several events, and
    /// duplicates are harmless because reads resume from a seq.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunId> {
        self.inner.notify.subscribe()
    }

    fn notify(&self, run: RunId) {
        // No subscribers is the normal case, not an error.
        let _ = self.inner.notify.send(run);
    }

    /// Names the file in errors that mean the file itself is damaged.
    fn classify(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Sqlite { op, source }
                if matches!(
                    source.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                ) =>
            {
                StoreError::Corrupt {
                    path: self.inner.path.clone(),
                    op,
                    detail: source.to_string(),
                }
            }
            e => e,
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.inner.path.clone(),
        }
    }

    /// Writes every queued event and syncs the WAL; returns once all earlier writes are
    /// durable. Call it before the process exits: the writer thread would finish its queue when
    /// the last handle drops, but nothing waits for that thread.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(WriteKind::TxnSynced, |_| Ok(())).await
    }

    /// Runs `f` in one transaction on the writer thread; returns after the commit.
    async fn write<T, F>(&self, kind: WriteKind, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let options = &self.inner.options;
        let syncs = matches!(kind, WriteKind::TxnSynced | WriteKind::StepEnd)
            && options.sync == SyncLevel::Normal
            && options.sync_at_step_end;
        let interval = options.step_sync_interval;
        let job: Job = Box::new(move |conn: &mut Connection, state: &mut WriterState| {
            let now = std::time::Instant::now();
            // A step end shares the sync when one happened recently; it then happens at the
            // latest `interval` after this commit.
            let shared = syncs
                && kind == WriteKind::StepEnd
                && now.duration_since(state.last_sync) < interval;
            let raise = syncs && !shared;
            // Queued events ride along in this write's transaction (one commit instead of one
            // each), ahead of its own statements so their order holds.
            let mut carried = false;
            let r = if kind == WriteKind::Single && state.events.is_empty() {
                f(conn)
            } else {
                run_write(conn, raise, |c| {
                    carried = state.write_events(c);
                    f(c)
                })
            };
            if carried && r.is_ok() {
                state.events_committed();
            }
            // Otherwise they stay queued (the rollback took them too) and go on their own.
            if r.is_ok() {
                if raise {
                    // The FULL commit synced the WAL and with it every earlier commit.
                    state.last_sync = now;
                    state.pending_sync = None;
                } else if shared && state.pending_sync.is_none() {
                    state.pending_sync = Some(now + interval);
                }
            }
            let _ = tx.send(r);
        });
        self.inner.writer.send(job).map_err(|_| self.closed())?;
        match rx.await {
            Ok(r) => r.map_err(|e| self.classify(e)),
            Err(_) => Err(self.closed()),
        }
    }

    /// Runs `f` on a pooled read connection inside one read transaction (a consistent snapshot).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| self.closed())?;
        let inner = self.inner.clone();
        let r = tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut p| p.pop());
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let c = open_connection(&inner.path, &inner.options)?;
                    c.execute_batch("PRAGMA query_only = ON")
                        .map_err(|source| StoreError::Open {
                            path: inner.path.clone(),
                            source,
                        })?;
                    c
                }
            };
            let r = run_read(&mut conn, f);
            if let Ok(mut pool) = inner.readers.lock()
                && pool.len() < inner.options.read_pool
            {
                pool.push(conn);
            }
            r
        })
        .await;
        match r {
            Ok(r) => r.map_err(|e| self.classify(e)),
            Err(_) => Err(self.closed()),
        }
    }

    // -- writes ---------------------------------------------------------------------------------

    /// Starts a run (state running, start time now) and writes its `run_started` event (seq 1).
    pub async fn create_run(&self, run: NewRun) -> Result<RunId, StoreError> {
        let id = self
            .write(WriteKind::Txn, move |c| {
                db::create_run(c, &run, db::now_us())
            })
            .await?;
        self.notify(id);
        Ok(id)
    }

    /// Starts step number `index` (the recipe's numbering) of a running run.
    pub async fn start_step(
        &self,
        run: RunId,
        index: i64,
        name: &str,
        kind: &str,
    ) -> Result<StepId, StoreError> {
        let (name, kind) = (name.to_string(), kind.to_string());
        self.write(WriteKind::Single, move |c| {
            db::start_step(c, run, index, &name, &kind, db::now_us())
        })
        .await
    }

    /// Ends a step; with the default options its commit reaches the disk within
    /// [`StoreOptions::step_sync_interval`] (at once when no step ended shortly before).
    pub async fn finish_step(
        &self,
        step: StepId,
        status: StepStatus,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let message = message.map(str::to_string);
        self.write(WriteKind::StepEnd, move |c| {
            db::finish_step(c, step, status, message.as_deref(), db::now_us())
        })
        .await
    }

    /// Whether `m` can be stored faithfully (a finite value or an invalid marker, a name, finite
    /// limits): the check every measurement write makes, for a caller that stores later.
    pub fn check_measurement(m: &NewMeasurement) -> Result<(), StoreError> {
        db::validate_measurement(m)
    }

    /// Ends a step and stores its measurements with it, in one transaction (all or none): a
    /// step's results durable at its boundary, for one commit instead of one per measurement
    /// plus one for the end. Syncs like [`Store::finish_step`].
    pub async fn finish_step_with(
        &self,
        step: StepId,
        status: StepStatus,
        message: Option<&str>,
        measurements: Vec<NewMeasurement>,
    ) -> Result<Vec<MeasurementId>, StoreError> {
        for m in &measurements {
            db::validate_measurement(m)?;
        }
        let message = message.map(str::to_string);
        self.write(WriteKind::StepEnd, move |c| {
            let ids = measurements
                .iter()
                .map(|m| db::add_measurement(c, m))
                .collect::<Result<Vec<_>, _>>()?;
            db::finish_step(c, step, status, message.as_deref(), db::now_us())?;
            Ok(ids)
        })
        .await
    }

    /// Stores one measurement; committed (durable against a process crash) when this returns.
    pub async fn add_measurement(&self, m: NewMeasurement) -> Result<MeasurementId, StoreError> {
        db::validate_measurement(&m)?;
        self.write(WriteKind::Single, move |c| db::add_measurement(c, &m))
            .await
    }

    /// Stores several measurements in one transaction (all or none), e.g. a whole spectrum.
    pub async fn add_measurements(
        &self,
        ms: Vec<NewMeasurement>,
    ) -> Result<Vec<MeasurementId>, StoreError> {
        for m in &ms {
            db::validate_measurement(m)?;
        }
        self.write(WriteKind::Txn, move |c| {
            ms.iter().map(|m| db::add_measurement(c, m)).collect()
        })
        .await
    }

    /// Appends an event to a run's stream and returns its sequence number.
    pub async fn add_event(
        &self,
        run: RunId,
        kind: &str,
        payload: serde_json::Value,
    ) -> Result<i64, StoreError> {
        let kind = kind.to_string();
        let seq = self
            .write(WriteKind::Txn, move |c| {
                db::add_event(c, run, &kind, &payload, db::now_us())
            })
            .await?;
        self.notify(run);
        Ok(seq)
    }

    /// Like [`Store::add_event`] without waiting for the commit: the event is queued on the
    /// writer, so it commits no later than any write made after this call (in that write's
    /// transaction, or on its own within a few milliseconds), and subscribers are told once it
    /// has. For an event log that must not slow its writer down (a run's step events): sharing
    /// commits halves a recipe step's commits. A failed append is logged, not returned. Errs
    /// only when the store is closed.
    pub fn queue_event(
        &self,
        run: RunId,
        kind: &str,
        payload: serde_json::Value,
    ) -> Result<(), StoreError> {
        let kind = kind.to_string();
        let at = db::now_us();
        let job: Job = Box::new(move |_: &mut Connection, state: &mut WriterState| {
            state.events.push((run, kind, payload, at));
            if state.events_due.is_none() {
                state.events_due = Some(std::time::Instant::now() + EVENT_FLUSH_DELAY);
            }
        });
        self.inner.writer.send(job).map_err(|_| self.closed())
    }

    /// Ends a running run with its verdict and writes its `run_finished` event.
    pub async fn finish_run(&self, run: RunId, verdict: RunVerdict) -> Result<(), StoreError> {
        self.write(WriteKind::TxnSynced, move |c| {
            db::finish_run(c, run, verdict, db::now_us())
        })
        .await?;
        self.notify(run);
        Ok(())
    }

    /// Marks every run still running as interrupted (end time: its last activity), closes its
    /// open steps and writes a `run_interrupted` event. Call once at daemon start-up.
    pub async fn mark_interrupted(&self) -> Result<Vec<RunId>, StoreError> {
        let runs = self
            .write(WriteKind::TxnSynced, move |c| {
                db::mark_interrupted(c, db::now_us())
            })
            .await?;
        for &run in &runs {
            self.notify(run);
        }
        Ok(runs)
    }

    // -- reads ----------------------------------------------------------------------------------

    /// Runs matching `filter`, newest first, one page at a time (keyset paging: stable while new
    /// runs are added).
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Page<RunSummary>, StoreError> {
        let filter = filter.clone();
        self.read(move |c| db::list_runs(c, &filter)).await
    }

    /// A run with its steps (by index) and measurements (in the order taken).
    pub async fn get_run(&self, run: RunId) -> Result<Option<RunDetail>, StoreError> {
        self.read(move |c| db::get_run(c, run)).await
    }

    /// Events of `run` with seq > `after_seq`, in order, at most [`EVENTS_BATCH`] per call:
    /// call again from the last seq returned until it returns nothing.
    pub async fn events_since(&self, run: RunId, after_seq: i64) -> Result<Vec<Event>, StoreError> {
        self.read(move |c| db::events_since(c, run, after_seq))
            .await
    }

    /// Measurements across runs (e.g. a trend of one quantity), newest first.
    ///
    /// Fast (about a millisecond at 1,000,000 measurements) when `name` or `dut` is set, or with a
    /// time range; `recipe` alone sorts every measurement of that recipe (~130 ms for 100,000):
    /// for per-recipe listings page [`Store::list_runs`] instead.
    pub async fn measurements(
        &self,
        filter: &MeasurementFilter,
    ) -> Result<Page<MeasurementRow>, StoreError> {
        let filter = filter.clone();
        self.read(move |c| db::measurements(c, &filter)).await
    }
}

fn run_write<T>(
    conn: &mut Connection,
    full_sync: bool,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sqlite = |op| move |source| StoreError::Sqlite { op, source };
    if full_sync {
        // In WAL mode a FULL commit syncs the WAL, which makes every earlier commit durable too.
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(sqlite("raise sync level"))?;
    }
    // IMMEDIATE takes the write lock up front, so a reader holding a snapshot cannot make this
    // transaction fail half-way with SQLITE_BUSY.
    let r = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite("begin write"))
        .and_then(|tx| {
            let v = f(&tx)?;
            tx.commit().map_err(sqlite("commit"))?;
            Ok(v)
        });
    if full_sync {
        let restored = conn
            .execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(sqlite("restore sync level"));
        if let (Ok(_), Err(e)) = (&r, restored) {
            return Err(e);
        }
    }
    r
}

fn run_read<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
        .map_err(|source| StoreError::Sqlite {
            op: "begin read",
            source,
        })?;
    // Dropping the read transaction rolls it back, which is all a reader needs.
    f(&tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_run() -> NewRun {
        NewRun {
            recipe_name: "r".into(),
            recipe_version: "1".into(),
            recipe_hash: "h".into(),
            dut_serial: "SN".into(),
            station: "b".into(),
            operator: "o".into(),
            parameters: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn queued_events_commit_in_order_before_later_writes_and_notify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(path_in(dir.path())).unwrap();
        let run = store.create_run(new_run()).await.unwrap();
        let mut sub = store.subscribe();
        for i in 0..50 {
            store
                .queue_event(run, "tick", serde_json::json!({ "i": i }))
                .unwrap();
        }
        // An awaited write queued after them returns only once they are committed.
        let step = store.start_step(run, 0, "s", "act").await.unwrap();
        store
            .finish_step(step, StepStatus::Pass, None)
            .await
            .unwrap();
        let events = store.events_since(run, 1).await.unwrap();
        let ticks: Vec<i64> = events
            .iter()
            .filter(|e| e.kind == "tick")
            .map(|e| e.payload["i"].as_i64().unwrap())
            .collect();
        assert_eq!(ticks, (0..50).collect::<Vec<_>>());
        let seen = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, run);
    }

    /// What a process does just before it exits: queue, flush, and the events are in the file
    /// when a second connection (the next process) opens it.
    #[tokio::test]
    async fn flush_writes_queued_events_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let store = Store::open(&path).unwrap();
        let run = store.create_run(new_run()).await.unwrap();
        for i in 0..20 {
            store
                .queue_event(run, "tick", serde_json::json!({ "i": i }))
                .unwrap();
        }
        store.flush().await.unwrap();
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row(
                "SELECT count(*) FROM events WHERE run_id = ?1 AND kind = 'tick'",
                [run.0],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 20);
        drop(store);
    }

    #[tokio::test]
    async fn a_queued_event_alone_is_written_soon_and_survives_a_failing_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(path_in(dir.path())).unwrap();
        let run = store.create_run(new_run()).await.unwrap();
        let mut sub = store.subscribe();
        store
            .queue_event(run, "alone", serde_json::json!({}))
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("written without another write")
            .unwrap();
        assert_eq!(seen, run);
        assert_eq!(store.events_since(run, 1).await.unwrap()[0].kind, "alone");
        // A write that fails rolls back the events it carried; they are written on their own.
        store
            .queue_event(run, "before-failure", serde_json::json!({}))
            .unwrap();
        let err = store
            .finish_step(StepId(9999), StepStatus::Pass, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StepNotFound { .. }), "{err}");
        let kinds = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let evs = store.events_since(run, 2).await.unwrap();
                if !evs.is_empty() {
                    break evs.into_iter().map(|e| e.kind).collect::<Vec<_>>();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(kinds, ["before-failure"]);
    }

    #[tokio::test]
    async fn a_step_end_files_its_measurements_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(path_in(dir.path())).unwrap();
        let run = store.create_run(new_run()).await.unwrap();
        let step = store.start_step(run, 0, "m", "measure").await.unwrap();
        let m = |name: &str| NewMeasurement {
            step_id: step,
            name: name.into(),
            value: Some(1.5),
            invalid: None,
            unit: "W".into(),
            limits: Limits::default(),
            verdict: None,
            taken_at: std::time::SystemTime::now(),
            raw: None,
        };
        let ids = store
            .finish_step_with(step, StepStatus::Pass, None, vec![m("a"), m("b")])
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
        // The step is finished now: a second end fails and files nothing.
        let err = store
            .finish_step_with(step, StepStatus::Pass, None, vec![m("c")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StepFinished { .. }), "{err}");
        let d = store.get_run(run).await.unwrap().unwrap();
        let names: Vec<&str> = d.measurements.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(d.steps[0].ended_at.is_some());
        let nan = NewMeasurement {
            value: Some(f64::NAN),
            ..m("nan")
        };
        assert!(Store::check_measurement(&nan).is_err());
    }

    /// Step ends in quick succession share syncs; every one is committed and readable at once,
    /// and the store closes (final sync) without losing any.
    #[tokio::test]
    async fn shared_step_syncs_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let store = Store::open(&path).unwrap();
        let run = store.create_run(new_run()).await.unwrap();
        for i in 0..100 {
            let step = store.start_step(run, i, "s", "act").await.unwrap();
            store
                .finish_step(step, StepStatus::Pass, None)
                .await
                .unwrap();
        }
        let d = store.get_run(run).await.unwrap().unwrap();
        assert_eq!(d.steps.len(), 100);
        assert!(d.steps.iter().all(|s| s.ended_at.is_some()));
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.get_run(run).await.unwrap().unwrap().steps.len(), 100);
    }
}
