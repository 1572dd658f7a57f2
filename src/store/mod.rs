//! The results store: runs, steps, measurements and events in one SQLite file in the data
//! directory.
//!
//! **Durability.** Every write call returns only after its transaction has committed to the WAL.
//! With the default [`SyncLevel::Normal`] a committed write survives `kill -9` of the process (the
//! data is in the OS page cache, which SQLite recovers from the WAL at the next open) but a power
//! cut may lose the last commits; that is why the default also forces a full sync of the WAL when
//! a step or a run finishes, bounding a power cut's loss to the step in progress.
//! [`SyncLevel::Full`] syncs every commit (power-safe, slower on slow disks).
//!
//! **Threads.** rusqlite is blocking and a commit can wait on the disk, so no call runs on a
//! tokio worker: one dedicated writer thread owns the only write connection and executes write
//! jobs from a channel in order (SQLite allows one writer anyway, so a pool of writers would only
//! fight over the lock), and reads run on `spawn_blocking` with a small pool of read-only
//! connections, which WAL lets proceed while the writer commits. [`Store`] is a cheap clone.
//!
//! Writes queue on an unbounded channel: each caller awaits its own write, so the queue holds at
//! most one job per concurrent caller.
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
            busy_timeout: Duration::from_secs(5),
            read_pool: 4,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How a write job is wrapped on the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// One transaction around the job.
    Txn,
    /// One transaction, committed with a WAL sync when the options ask for step-end syncs.
    TxnSynced,
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
        std::thread::Builder::new()
            .name("labgate-store".into())
            .spawn(move || {
                // Ends when the last handle (and so the last sender) is dropped.
                for job in rx {
                    // A bug in one job must not take the store down: its transaction rolls back
                    // as the panic unwinds, its caller sees `Closed`, and later jobs still run.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
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
                notify: tokio::sync::broadcast::channel(NOTIFY_CAPACITY).0,
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

    /// Runs `f` in one transaction on the writer thread; returns after the commit.
    async fn write<T, F>(&self, kind: WriteKind, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let raise = kind == WriteKind::TxnSynced
            && self.inner.options.sync == SyncLevel::Normal
            && self.inner.options.sync_at_step_end;
        let job: Job = Box::new(move |conn: &mut Connection| {
            let r = if kind == WriteKind::Single {
                f(conn)
            } else {
                run_write(conn, raise, f)
            };
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

    /// Ends a step; with the default options this also syncs the WAL to disk.
    pub async fn finish_step(
        &self,
        step: StepId,
        status: StepStatus,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let message = message.map(str::to_string);
        self.write(WriteKind::TxnSynced, move |c| {
            db::finish_step(c, step, status, message.as_deref(), db::now_us())
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
