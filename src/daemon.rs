//! `labgate serve`: the long-running daemon.
//!
//! Startup order: validate the config (and with it every driver), open the store, start the links
//! and polls, install the metrics recorder, bind the API, then tell systemd READY=1. A reload
//! (SIGHUP) loads and validates the new config whole before touching anything: a bad one is
//! refused with a logged error and the running one stays; running runs keep the config version
//! they started with. At start, runs a crash left unfinished are marked interrupted. SIGTERM or
//! Ctrl-C: new runs are refused (503), running ones are aborted and their cleanup awaited
//! (bounded by [`RUN_STOP_TIMEOUT`]), the API stops gracefully, the store is closed, exit 0.
//!
//! [`Live`] is everything one config version runs (bench, gateway, polls); the API reads it
//! through [`crate::api::AppState`], which a reload swaps atomically. The router is built from a
//! `Live` and an optional store without binding anything, so tests can serve it on an
//! ephemeral port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::{self, Bench};
use crate::diag::Diagnostics;
use crate::gateway::Gateway;
use crate::poll::{self, Latest};
use crate::sim::bench::{SimBench, SimBenchConfig};
use crate::store::{self, Store};

/// The API's port when neither `--listen` nor `api.listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// How long in-flight API requests get to finish after SIGTERM; below systemd's default
/// TimeoutStopSec (90 s) with room to spare.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long aborted runs get for their cleanup (a source switched off, a chamber set back) at
/// SIGTERM. With [`SHUTDOWN_GRACE`] it stays inside the unit's TimeoutStopSec (60 s).
pub const RUN_STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(Diagnostics),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {0}: it is not a loopback address and the config sets no api.token"
    )]
    Unprotected(SocketAddr),
    #[error("`{0}` is not an address:port (e.g. 127.0.0.1:8470)")]
    BadListen(String),
    #[error("results store: {0}")]
    Store(#[from] store::StoreError),
    #[error("demo simulators: {0}")]
    Sim(std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// What `labgate serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Config file; `None` runs the embedded demo with its simulators in-process.
    pub config: Option<PathBuf>,
    /// Overrides `api.listen`.
    pub listen: Option<SocketAddr>,
}

/// Everything one config version runs. Dropping it stops the polls; the links end when the last
/// handle (held by the gateway and in-flight requests) is gone.
#[derive(Debug)]
pub struct Live {
    pub bench: Bench,
    pub gateway: Gateway,
    pub latest: Latest,
    polls: Vec<JoinHandle<()>>,
}

impl Live {
    /// Start the links and polls of a validated bench. Must run inside a tokio runtime.
    pub fn start(bench: Bench) -> Live {
        let gateway = Gateway::start(&bench);
        let latest = Latest::default();
        let polls = bench
            .polls
            .iter()
            .filter_map(|p| {
                let inst = gateway.instrument(&p.instrument)?.clone();
                Some(poll::spawn(
                    inst,
                    p.quantities.clone(),
                    p.interval,
                    latest.clone(),
                ))
            })
            .collect();
        Live {
            bench,
            gateway,
            latest,
            polls,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for p in &self.polls {
            p.abort();
        }
    }
}

/// Load and validate a config: the file, or the embedded demo.
pub fn load_bench(path: Option<&std::path::Path>) -> Result<Bench, Diagnostics> {
    match path {
        Some(p) => config::load(p),
        None => config::demo(),
    }
}

/// The address to serve on: `--listen`, else `api.listen`, else [`DEFAULT_LISTEN`]; refused when
/// not loopback and the config has no token.
pub fn listen_addr(opts: &ServeOptions, bench: &Bench) -> Result<SocketAddr, DaemonError> {
    let addr = match (opts.listen, &bench.api.listen) {
        (Some(a), _) => a,
        (None, Some(s)) => s.parse().map_err(|_| DaemonError::BadListen(s.clone()))?,
        (None, None) => DEFAULT_LISTEN.parse().expect("default address parses"),
    };
    if !addr.ip().is_loopback() && bench.api.token.is_none() {
        return Err(DaemonError::Unprotected(addr));
    }
    Ok(addr)
}

fn notify(state: &[NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(message = "sd_notify failed", error = %e);
    }
}

/// Run the daemon until SIGTERM or Ctrl-C. Exit code 0 on a clean stop, 1 on a startup failure.
pub async fn run(opts: ServeOptions) -> ExitCode {
    match serve(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::Config(d)) => {
            tracing::error!(message = "configuration refused", problems = d.0.len());
            eprintln!("{d}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(message = "cannot start", error = %e);
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(opts: ServeOptions) -> Result<(), DaemonError> {
    let bench = load_bench(opts.config.as_deref()).map_err(DaemonError::Config)?;
    for w in bench.warnings.warnings() {
        tracing::warn!(message = "config", warning = %w);
    }
    let addr = listen_addr(&opts, &bench)?;

    // The README's first command: with no config the demo's simulators run in this process.
    let _sim: Option<SimBench> = if opts.config.is_none() {
        match crate::sim::bench::start(SimBenchConfig::default()).await {
            Ok(b) => {
                tracing::info!(message = "demo simulators started", pa = %b.power_analyzer, modbus = %b.modbus);
                Some(b)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // `labgate sim` may already be serving the demo ports: use it.
                tracing::warn!(message = "demo simulators not started; using what listens on the demo ports", error = %e);
                None
            }
            Err(e) => return Err(DaemonError::Sim(e)),
        }
    } else {
        None
    };

    let data = bench.paths.data.clone();
    // Store::open creates the directory and migrates; blocking work off the runtime threads.
    let store = tokio::task::spawn_blocking(move || Store::open(store::path_in(&data)))
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
    tracing::info!(message = "store open", path = %store.path().display());
    // Before any run starts: a run still marked running was cut off by a crash.
    let interrupted = store.mark_interrupted().await?;
    if !interrupted.is_empty() {
        let ids: Vec<String> = interrupted.iter().map(|r| r.to_string()).collect();
        tracing::warn!(message = "runs left unfinished by the previous process marked interrupted", runs = %ids.join(","));
    }

    let metrics = crate::metrics::install();
    let upkeep = metrics.clone().map(crate::metrics::spawn_upkeep);

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let source = opts.config.clone();
    let live = Live::start(bench);
    tracing::info!(
        message = "serving",
        listen = %bound,
        config = %live.bench.source.display(),
        instruments = live.gateway.instruments.len(),
        polls = live.bench.polls.len()
    );
    let state = AppState::new(live, Some(store), metrics, bound.ip().is_loopback());
    let app = api::router(state.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    notify(&[NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        tokio::spawn(async move {
            // Ping at half the period, as sd_watchdog_enabled(3) advises (never a zero period,
            // which tokio refuses).
            let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(1)));
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        })
    });

    signals(&state, source.as_deref(), &bound).await;

    notify(&[NotifyState::Stopping]);
    tracing::info!(message = "stopping");
    // Runs first: their event streams end with their verdicts, which lets the server's graceful
    // shutdown finish those connections.
    let left = state.runs().shutdown(RUN_STOP_TIMEOUT).await;
    if left > 0 {
        tracing::error!(
            message = "runs did not finish their cleanup in time",
            runs = left
        );
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(message = "api server ended with an error", error = %e),
        Ok(Err(e)) => tracing::warn!(message = "api server task failed", error = %e),
        Err(_) => tracing::warn!(message = "api requests still running at shutdown; dropped"),
    }
    for t in [watchdog, upkeep].into_iter().flatten() {
        t.abort();
    }
    // Events queued without waiting and a step end's shared sync may still be pending.
    if let Some(store) = state.store()
        && let Err(e) = store.flush().await
    {
        tracing::error!(message = "cannot flush the results store", error = %e);
    }
    drop(state);
    tracing::info!(message = "stopped");
    Ok(())
}

/// Wait for a stop signal, handling SIGHUP reloads meanwhile.
async fn signals(state: &AppState, config: Option<&std::path::Path>, bound: &SocketAddr) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            tracing::warn!(message = "cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                notify(&[NotifyState::Reloading]);
                if let Err(e) = reload(state, config, bound).await {
                    tracing::error!(message = "reload refused; the running configuration stays", error = %e);
                }
                notify(&[NotifyState::Ready]);
            }
        }
    }
}

/// Load and validate the config again and swap it in whole.
pub async fn reload(
    state: &AppState,
    config: Option<&std::path::Path>,
    bound: &SocketAddr,
) -> Result<(), DaemonError> {
    let path = config.map(|p| p.to_path_buf());
    let bench = tokio::task::spawn_blocking(move || load_bench(path.as_deref()))
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))?
        .map_err(DaemonError::Config)?;
    if !bound.ip().is_loopback() && bench.api.token.is_none() {
        return Err(DaemonError::Unprotected(*bound));
    }
    let live = Live::start(bench);
    tracing::info!(
        message = "configuration reloaded",
        config = %live.bench.source.display(),
        instruments = live.gateway.instruments.len()
    );
    state.replace(live);
    Ok(())
}
