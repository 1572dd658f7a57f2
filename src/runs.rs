//! The daemon's runs: starts recipes on request, keeps what a running run needs from the outside
//! (its abort token, its pending operator prompt) and stops them all at shutdown.
//!
//! A run is validated whole (recipe from the configured recipes directory, station, parameter
//! overrides) before anything is spawned, and [`RunManager::start`] returns only once the engine
//! has filed the run (so the API can answer 201 with its id), has been put in line behind another
//! run (queued), or has been refused because an instrument is held. The engine itself persists
//! every event of the run in the store with a per-run sequence; live subscribers follow the store
//! ([`crate::store::Store::subscribe`]), so a reconnecting client replays from the same log the
//! live stream came from and cannot miss anything.
//!
//! A run keeps the [`Live`] (gateway) it started with: a reload swaps the daemon's config but not
//! the instruments under a running recipe. Its abort token is a child of the manager's shutdown
//! token, so [`RunManager::shutdown`] aborts every run at once and then waits for their cleanup.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::daemon::Live;
use crate::diag::Diagnostics;
use crate::recipe::{self, ConfirmRequest, EngineError, Hooks, Progress, RunSpec, StationView};
use crate::store::{RunId, Store, StoreError};

/// Longest DUT serial or operator name accepted: they are stored and shown, not parsed.
pub const MAX_FIELD_LEN: usize = 128;

/// What a client asks for.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Recipe name: the file stem of a `*.toml` in the recipes directory.
    pub recipe: String,
    pub station: String,
    pub dut: String,
    pub operator: String,
    /// Parameter overrides, in the parameter's unit.
    pub params: BTreeMap<String, f64>,
    /// Wait in line when an instrument is held instead of being refused.
    pub queue: bool,
}

/// How a start request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Filed and running.
    Running { run: RunId },
    /// Waiting for `instrument`, held by `holder`; the run is filed when it is free.
    Queued {
        ticket: u64,
        instrument: String,
        holder: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the daemon is shutting down and accepts no new runs")]
    ShuttingDown,
    #[error("no results store is open")]
    NoStore,
    #[error("`{0}` is not a recipe name (letters, digits, `-`, `_` and `.` only, no path)")]
    BadName(String),
    #[error("no recipe `{name}` in {dir} (known: {known})")]
    UnknownRecipe {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error("{0}")]
    Station(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("recipe `{name}` does not validate ({} problem(s))", .diags.errors().count())]
    Invalid { name: String, diags: Diagnostics },
    #[error(transparent)]
    Busy(#[from] recipe::locks::Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the run task ended before the run was filed")]
    Lost,
}

/// Why an abort or a confirmation could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("run {0} is not running in this daemon")]
    NotRunning(RunId),
    #[error("run {0} is not waiting for the operator")]
    NoPrompt(RunId),
}

/// An operator prompt a run waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub step: String,
    pub prompt: String,
    pub since: SystemTime,
}

struct Pending {
    prompt: Prompt,
    reply: oneshot::Sender<bool>,
}

/// A run of this daemon, from the request until its verdict is filed.
struct Active {
    run: Option<RunId>,
    recipe: String,
    station: String,
    abort: CancellationToken,
    /// Set while the run waits for an instrument.
    waiting_for: Option<(String, String)>,
    prompt: Option<Pending>,
}

/// A queued or running run, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub ticket: u64,
    pub run: Option<RunId>,
    pub recipe: String,
    pub station: String,
    /// (instrument, holder) while queued.
    pub waiting_for: Option<(String, String)>,
}

struct Inner {
    store: Option<Store>,
    locks: recipe::locks::Locks,
    shutdown: CancellationToken,
    accepting: AtomicBool,
    next_ticket: AtomicU64,
    active: Mutex<BTreeMap<u64, Active>>,
    /// Signalled whenever a run leaves `active`.
    ended: Notify,
}

/// Owns the runs of one daemon; a cheap clone.
#[derive(Clone)]
pub struct RunManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RunManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunManager")
            .field("active", &self.active_count())
            .finish_non_exhaustive()
    }
}

/// Whether `name` may be joined to the recipes directory: one plain file stem, never a path.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FIELD_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..")
}

/// The recipe files of `dir` by name (file stem), sorted.
pub fn recipe_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            safe_name(&stem).then_some((stem, p))
        })
        .collect();
    files.sort();
    files
}

/// The file of recipe `name` in `dir`, refusing anything that is not a plain name.
pub fn recipe_path(dir: &Path, name: &str) -> Result<PathBuf, StartError> {
    if !safe_name(name) {
        return Err(StartError::BadName(name.to_string()));
    }
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        let known: Vec<String> = recipe_files(dir).into_iter().map(|(n, _)| n).collect();
        return Err(StartError::UnknownRecipe {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    Ok(path)
}

fn check_field(what: &str, v: &str, required: bool) -> Result<(), StartError> {
    if required && v.trim().is_empty() {
        return Err(StartError::BadRequest(format!(
            "`{what}` must not be empty"
        )));
    }
    if v.len() > MAX_FIELD_LEN {
        return Err(StartError::BadRequest(format!(
            "`{what}` is longer than {MAX_FIELD_LEN} bytes"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(StartError::BadRequest(format!(
            "`{what}` must not contain control characters"
        )));
    }
    Ok(())
}

impl RunManager {
    /// A manager filing runs in `store` (`None`: every start is refused).
    pub fn new(store: Option<Store>) -> RunManager {
        // Instrument locks live next to the store (`<data>/locks`), so a `labgate run` on the
        // same data directory and the daemon refuse each other.
        let locks = store
            .as_ref()
            .and_then(|s| s.path().parent())
            .map(|data| {
                let dir = recipe::locks::Locks::dir_in(data);
                recipe::locks::Locks::in_dir(&dir).unwrap_or_else(|e| {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot create the lock directory; instrument ownership holds within the daemon only");
                    recipe::locks::Locks::new()
                })
            })
            .unwrap_or_default();
        RunManager {
            inner: Arc::new(Inner {
                store,
                locks,
                shutdown: CancellationToken::new(),
                accepting: AtomicBool::new(true),
                next_ticket: AtomicU64::new(1),
                active: Mutex::new(BTreeMap::new()),
                ended: Notify::new(),
            }),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Active>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
    }

    /// Queued and running runs.
    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    /// Runs filed and not finished yet (queued ones excluded).
    pub fn running_count(&self) -> usize {
        self.active().values().filter(|a| a.run.is_some()).count()
    }

    pub fn list_active(&self) -> Vec<ActiveRun> {
        self.active()
            .iter()
            .map(|(t, a)| ActiveRun {
                ticket: *t,
                run: a.run,
                recipe: a.recipe.clone(),
                station: a.station.clone(),
                waiting_for: a.waiting_for.clone(),
            })
            .collect()
    }

    /// Whether `run` is running in this daemon (it may have been filed by an earlier process).
    pub fn is_running(&self, run: RunId) -> bool {
        self.active().values().any(|a| a.run == Some(run))
    }

    /// Validate and start a run; see the module documentation.
    pub async fn start(&self, live: Arc<Live>, req: StartRequest) -> Result<Started, StartError> {
        if !self.accepting() {
            return Err(StartError::ShuttingDown);
        }
        let store = self.inner.store.clone().ok_or(StartError::NoStore)?;
        check_field("dut", &req.dut, true)?;
        check_field("operator", &req.operator, false)?;
        check_field("station", &req.station, true)?;
        let path = recipe_path(&live.bench.paths.recipes, &req.recipe)?;
        let station = StationView::of(&live.bench, &req.station).map_err(StartError::Station)?;
        let overrides = req.params.clone();
        let name = req.recipe.clone();
        // Reading and validating touches the filesystem: off the runtime threads.
        let (recipe, params) = tokio::task::spawn_blocking({
            let station = station.clone();
            move || recipe::load_and_validate(&path, &station, &overrides)
        })
        .await
        .map_err(|_| StartError::Lost)?
        .map_err(|diags| StartError::Invalid { name, diags })?;
        let spec = RunSpec {
            recipe,
            station,
            params,
            dut: req.dut.clone(),
            operator: req.operator.clone(),
        };
        let abort = self.inner.shutdown.child_token();
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        self.active().insert(
            ticket,
            Active {
                run: None,
                recipe: spec.recipe.meta.name.clone(),
                station: spec.station.name.clone(),
                abort: abort.clone(),
                waiting_for: None,
                prompt: None,
            },
        );
        // A shutdown between the check above and the insert must still see this run.
        if !self.accepting() {
            self.active().remove(&ticket);
            self.inner.ended.notify_waiters();
            return Err(StartError::ShuttingDown);
        }
        let (first_tx, first_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            this.drive(ticket, live, store, spec, abort, req.queue, first_tx)
                .await;
        });
        first_rx.await.unwrap_or(Err(StartError::Lost))
    }

    /// The run task: the engine plus what it tells the outside.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        self,
        ticket: u64,
        live: Arc<Live>,
        store: Store,
        spec: RunSpec,
        abort: CancellationToken,
        queue: bool,
        first: oneshot::Sender<Result<Started, StartError>>,
    ) {
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let (ctx, mut crx) = mpsc::channel::<ConfirmRequest>(1);
        let hooks = Hooks {
            progress: Some(ptx),
            abort,
            confirm: Some(ctx),
            locks: Some(self.inner.locks.clone()),
            queue,
        };
        let recipe_name = spec.recipe.meta.name.clone();
        let mut first = Some(first);
        let mut steps: HashMap<i64, (&'static str, Instant)> = HashMap::new();
        let engine = recipe::run_with(&spec, &live.gateway.instruments, &store, hooks);
        tokio::pin!(engine);
        let result = loop {
            tokio::select! {
                biased;
                Some(p) = prx.recv() => self.progress(ticket, &recipe_name, p, &mut first, &mut steps),
                Some(c) = crx.recv() => self.set_prompt(ticket, c),
                r = &mut engine => break r,
            }
        };
        while let Ok(p) = prx.try_recv() {
            self.progress(ticket, &recipe_name, p, &mut first, &mut steps);
        }
        match result {
            Ok(outcome) => {
                crate::metrics::run_finished(&recipe_name, outcome.verdict);
                tracing::info!(message = "run finished", run = %outcome.run, recipe = %recipe_name, verdict = %outcome.verdict);
            }
            Err(e) => {
                let e = match e {
                    EngineError::Busy(b) => StartError::Busy(b),
                    EngineError::Store(s) => StartError::Store(s),
                    other => StartError::BadRequest(other.to_string()),
                };
                match first.take() {
                    Some(f) => {
                        let _ = f.send(Err(e));
                    }
                    // A queued request given up (withdrawn, or the daemon stops): nothing ran.
                    None if matches!(e, StartError::Busy(_)) => {
                        tracing::info!(message = "queued run withdrawn before it started", recipe = %recipe_name)
                    }
                    None => {
                        tracing::error!(message = "run failed", recipe = %recipe_name, error = %e)
                    }
                }
            }
        }
        // Ended before it was filed without an error: nothing to point the client at.
        if let Some(f) = first.take() {
            let _ = f.send(Err(StartError::Lost));
        }
        self.active().remove(&ticket);
        self.inner.ended.notify_waiters();
    }

    fn progress(
        &self,
        ticket: u64,
        recipe: &str,
        p: Progress,
        first: &mut Option<oneshot::Sender<Result<Started, StartError>>>,
        steps: &mut HashMap<i64, (&'static str, Instant)>,
    ) {
        match p {
            Progress::Queued { instrument, holder } => {
                if let Some(a) = self.active().get_mut(&ticket) {
                    a.waiting_for = Some((instrument.clone(), holder.clone()));
                }
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(Started::Queued {
                        ticket,
                        instrument,
                        holder,
                    }));
                }
            }
            Progress::RunStarted { run, .. } => {
                if let Some(a) = self.active().get_mut(&ticket) {
                    a.run = Some(run);
                    a.waiting_for = None;
                }
                tracing::info!(message = "run started", run = %run, recipe = %recipe);
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(Started::Running { run }));
                }
            }
            Progress::StepStarted { index, kind, .. } => {
                steps.insert(index, (kind, Instant::now()));
            }
            Progress::StepFinished { index, .. } => {
                if let Some((kind, at)) = steps.remove(&index) {
                    crate::metrics::step_finished(recipe, kind, at.elapsed());
                }
                // A prompt belongs to its step: once the step is over nobody can answer it.
                if let Some(a) = self.active().get_mut(&ticket) {
                    a.prompt = None;
                }
            }
            _ => {}
        }
    }

    fn set_prompt(&self, ticket: u64, c: ConfirmRequest) {
        if let Some(a) = self.active().get_mut(&ticket) {
            a.prompt = Some(Pending {
                prompt: Prompt {
                    step: c.step,
                    prompt: c.prompt,
                    since: SystemTime::now(),
                },
                reply: c.reply,
            });
        }
    }

    /// Abort a running or queued run: it stops at the next request boundary, then cleans up.
    pub fn abort(&self, run: RunId) -> Result<(), ControlError> {
        let active = self.active();
        let a = active
            .values()
            .find(|a| a.run == Some(run))
            .ok_or(ControlError::NotRunning(run))?;
        a.abort.cancel();
        Ok(())
    }

    /// Give up waiting in line: the request ends without a run being filed.
    pub fn cancel_ticket(&self, ticket: u64) -> bool {
        match self.active().get(&ticket) {
            Some(a) => {
                a.abort.cancel();
                true
            }
            None => false,
        }
    }

    /// The prompt `run` waits on, if any.
    pub fn prompt(&self, run: RunId) -> Result<Option<Prompt>, ControlError> {
        let active = self.active();
        let a = active
            .values()
            .find(|a| a.run == Some(run))
            .ok_or(ControlError::NotRunning(run))?;
        Ok(a.prompt.as_ref().map(|p| p.prompt.clone()))
    }

    /// Answer the pending prompt of `run`: `true` goes on, `false` fails the step.
    pub fn confirm(&self, run: RunId, ok: bool) -> Result<Prompt, ControlError> {
        let mut active = self.active();
        let a = active
            .values_mut()
            .find(|a| a.run == Some(run))
            .ok_or(ControlError::NotRunning(run))?;
        let p = a.prompt.take().ok_or(ControlError::NoPrompt(run))?;
        // The engine may have given up on the prompt (abort) a moment ago: still answered.
        let _ = p.reply.send(ok);
        Ok(p.prompt)
    }

    /// Stop accepting runs, abort every run, and wait (at most `timeout`) for their cleanup and
    /// verdicts. Returns how many were still going at the deadline.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let n = self.active_count();
        if n > 0 {
            tracing::info!(message = "aborting runs for shutdown", runs = n);
        }
        self.inner.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.inner.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let left = self.active_count();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                let left = self.active_count();
                tracing::warn!(
                    message = "runs still cleaning up at the stop timeout",
                    runs = left
                );
                return left;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_recipes_dir() {
        assert!(safe_name("lm79-led-lamp"));
        assert!(safe_name("thermal_v2.1"));
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "a..b",
            "x\0",
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}
