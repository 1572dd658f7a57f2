//! `labgate run`: run a recipe on a station without the daemon, with a live progress display.
//!
//! Everything is validated before any instrument is touched; exit 0 on pass, 1 on fail, 2 on
//! error, abort (Ctrl-C, then cleanup runs) or a recipe that does not validate.
//!
//! The run's instruments are locked in `<data>/locks` before any is connected (see
//! [`crate::recipe::locks`]), so the daemon and other `labgate run`s on the same data directory
//! refuse each other naming the holder; `--queue` waits instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Bench;
use crate::gateway::Gateway;
use crate::recipe::locks::{Guard, Locks};
use crate::recipe::{self, Progress, RunSpec, StationView};
use crate::store::{self, RunVerdict, Store, Verdict};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// The station (from the config) whose instruments play the recipe's roles.
    #[arg(long)]
    pub station: String,
    /// Serial number of the device under test.
    #[arg(long)]
    pub dut: String,
    /// Override a parameter: `--param rated_voltage=230` (in the parameter's unit).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    #[arg(long, default_value = "")]
    pub operator: String,
    /// When an instrument is in use by another run (this or another process on the same data
    /// directory), wait for it instead of giving up.
    #[arg(long)]
    pub queue: bool,
}

const EXIT_FAIL: u8 = 1;
const EXIT_ERROR: u8 = 2;

pub async fn run(bench: Bench, args: RunArgs) -> ExitCode {
    let station = match StationView::of(&bench, &args.station) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let mut overrides = BTreeMap::new();
    for p in &args.params {
        let Some((k, v)) = p.split_once('=') else {
            eprintln!("error: --param `{p}` is not NAME=VALUE");
            return ExitCode::from(EXIT_ERROR);
        };
        let Ok(x) = v.trim().parse::<f64>() else {
            eprintln!("error: --param {p}: `{}` is not a number", v.trim());
            return ExitCode::from(EXIT_ERROR);
        };
        overrides.insert(k.trim().to_string(), x);
    }
    let (recipe, params) = match recipe::load_and_validate(&args.recipe, &station, &overrides) {
        Ok(x) => x,
        Err(d) => return invalid(&d),
    };
    let path = store::path_in(&bench.paths.data);
    let store = match tokio::task::spawn_blocking(move || Store::open(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
        Err(e) => {
            eprintln!("error: cannot open the results store: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let mut ids: Vec<String> = recipe
        .meta
        .roles
        .iter()
        .filter_map(|r| station.roles.get(r).map(|(id, _)| id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    let abort = CancellationToken::new();
    let on_signal = abort.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborting: finishing the current request, then cleanup");
            on_signal.cancel();
        }
    });
    // Taken before the gateway connects, so a refused run touches no instrument.
    let holder = format!(
        "`labgate run` of recipe `{}` for DUT {} on station `{}`",
        recipe.meta.name, args.dut, station.name
    );
    let guard = match take_locks(&bench, &ids, &holder, args.queue, &abort).await {
        Ok(g) => Arc::new(g),
        Err(code) => return code,
    };
    let gw = Gateway::start_only(&bench, |id| ids.iter().any(|i| i == id));
    let spec = RunSpec {
        recipe,
        station,
        params,
        dut: args.dut.clone(),
        operator: args.operator.clone(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let held = guard.clone();
    let printer = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if let Progress::RunStarted { run, .. } = &p {
                held.set_holder(&format!("run {run} ({holder})"));
            }
            print_progress(&p);
        }
    });
    let (confirm_tx, confirm_rx) = mpsc::channel(1);
    tokio::spawn(answer_prompts(confirm_rx));
    let hooks = recipe::Hooks {
        progress: Some(tx),
        abort,
        confirm: Some(confirm_tx),
        // Already held (`guard`), across processes.
        locks: None,
        queue: false,
    };
    let result = recipe::run_with(&spec, &gw.instruments, &store, hooks).await;
    let _ = printer.await;
    drop(guard);
    // The process exits right after: what the run queued must be on disk first.
    if let Err(e) = store.flush().await {
        eprintln!("error: cannot flush the results store: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    match result {
        Ok(o) => {
            println!(
                "verdict: {} (run {})",
                o.verdict.as_str().to_uppercase(),
                o.run
            );
            match o.verdict {
                RunVerdict::Pass => ExitCode::SUCCESS,
                RunVerdict::Fail => ExitCode::from(EXIT_FAIL),
                _ => ExitCode::from(EXIT_ERROR),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Take the run's instruments in `<data>/locks`, shared with the daemon and other `labgate run`s
/// on the same data directory; refused (or, with `queue`, waiting) when one is held.
async fn take_locks(
    bench: &Bench,
    ids: &[String],
    holder: &str,
    queue: bool,
    abort: &CancellationToken,
) -> Result<Guard, ExitCode> {
    let dir = Locks::dir_in(&bench.paths.data);
    let locks = Locks::in_dir(&dir).map_err(|e| {
        eprintln!(
            "error: cannot create the lock directory {}: {e}",
            dir.display()
        );
        ExitCode::from(EXIT_ERROR)
    })?;
    match locks.try_acquire(ids, holder) {
        Ok(g) => Ok(g),
        Err(busy) if queue => {
            print_progress(&Progress::Queued {
                instrument: busy.instrument,
                holder: busy.holder,
            });
            locks.acquire(ids, holder, abort).await.map_err(|busy| {
                eprintln!("error: gave up waiting: {busy}");
                ExitCode::from(EXIT_ERROR)
            })
        }
        Err(busy) => {
            eprintln!("error: {busy}; nothing was run (--queue waits for it)");
            Err(ExitCode::from(EXIT_ERROR))
        }
    }
}

/// Ask the operator on the terminal. Lines come from a plain thread: a blocking stdin read
/// would keep a tokio blocking-pool thread (and so the process) alive after the run.
async fn answer_prompts(mut rx: mpsc::Receiver<recipe::ConfirmRequest>) {
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = String::new();
            while std::io::stdin().read_line(&mut buf).is_ok_and(|n| n > 0) {
                if line_tx.send(std::mem::take(&mut buf)).is_err() {
                    break;
                }
            }
        });
    while let Some(req) = rx.recv().await {
        println!("? {} [y = go on / n = fail the step]", req.prompt);
        let yes = match lines.recv().await {
            Some(l) => matches!(l.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
            // No terminal input at all: nobody can confirm.
            None => false,
        };
        let _ = req.reply.send(yes);
    }
}

fn invalid(d: &crate::diag::Diagnostics) -> ExitCode {
    eprintln!("{d}");
    eprintln!(
        "error: {} problem(s) in the recipe; nothing was run",
        d.errors().count()
    );
    ExitCode::from(EXIT_ERROR)
}

fn num(v: f64) -> String {
    crate::instrument::args::format_float((v * 1e6).round() / 1e6)
}

fn unit(u: &str) -> String {
    if u.is_empty() {
        String::new()
    } else {
        format!(" {u}")
    }
}

/// One line per event, so the display works in a log file as well as a terminal.
pub fn progress_line(p: &Progress) -> String {
    match p {
        Progress::Queued { instrument, holder } => {
            format!("waiting for `{instrument}`, in use by {holder}")
        }
        Progress::RunStarted { run, recipe } => format!("run {run}: {recipe}"),
        Progress::StepStarted { index, name, kind } => format!("[{index}] {name} ({kind})"),
        Progress::Stabilizing {
            quantity,
            unit: u,
            last,
            spread,
            band,
            stable,
            ..
        } => {
            let vals: Vec<String> = last.iter().map(|v| num(*v)).collect();
            format!(
                "    {quantity}: {}{}  spread {} (band {}){}",
                vals.join(" "),
                unit(u),
                num(*spread),
                num(*band),
                if *stable { "  stable" } else { "  settling" }
            )
        }
        Progress::Waiting {
            readings,
            holds,
            held,
            ..
        } => {
            let vals: Vec<String> = readings
                .iter()
                .map(|(q, v, u)| format!("{q} = {}{}", num(*v), unit(u)))
                .collect();
            let state = if *holds {
                format!("holds for {:.1} s", held.as_secs_f64())
            } else {
                "waiting".to_string()
            };
            format!("    {}  {state}", vals.join(", "))
        }
        Progress::Measured {
            name,
            value,
            unit: u,
            limits,
            verdict,
        } => {
            let shown = value.map_or("invalid".to_string(), num);
            let range = if limits.min.is_some() || limits.max.is_some() {
                format!(
                    "  [{} .. {}]",
                    limits.min.map_or(String::new(), num),
                    limits.max.map_or(String::new(), num)
                )
            } else {
                String::new()
            };
            let v = match verdict {
                Some(Verdict::Pass) => "  pass",
                Some(Verdict::Marginal) => "  MARGINAL",
                Some(Verdict::Fail) => "  FAIL",
                None => "",
            };
            format!("    {name} = {shown}{}{range}{v}", unit(u))
        }
        Progress::StepFinished {
            index,
            status,
            message,
            ..
        } => match message {
            Some(m) => format!("[{index}] {status}: {m}"),
            None => format!("[{index}] {status}"),
        },
        Progress::Confirm { prompt, .. } => format!("    waiting for the operator: {prompt}"),
        Progress::CleanupStarted => "cleanup".to_string(),
        Progress::RunFinished { run, verdict } => format!("run {run} finished: {verdict}"),
    }
}

fn print_progress(p: &Progress) {
    println!("{}", progress_line(p));
}
