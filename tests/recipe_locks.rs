//! Instrument ownership across processes: two real `labgate run` processes on one data directory
//! contend for the simulated AC source. The second is refused naming the holder (or waits with
//! `--queue`), and the lock goes when its holder dies, even by `kill -9`. And a run of the engine
//! in this process with the data directory's locks (as the daemon runs them) refuses the binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use labgate::config;
use labgate::gateway::Gateway;
use labgate::recipe::{self, Progress, RunSpec, StationView, locks::Locks};
use labgate::sim::bench::{SimBench, SimBenchConfig, start};
use labgate::store::{self, RunVerdict, Store};
use tokio_util::sync::CancellationToken;

mod common;

fn write_config(sim: &SimBench, dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = config::DEMO_CONFIG
        .replace(
            "port = 15025",
            &format!("port = {}", sim.power_analyzer.port()),
        )
        .replace("port = 15026", &format!("port = {}", sim.ac_source.port()))
        .replace("port = 15027", &format!("port = {}", sim.sphere.port()))
        .replace("port = 15028", &format!("port = {}", sim.logger.port()))
        .replace("port = 15502", &format!("port = {}", sim.modbus.port()));
    let text = format!(
        "[paths]\ndrivers = [{:?}]\nrecipes = {:?}\ndata = {:?}\n\n{text}",
        root.join("drivers").display().to_string(),
        dir.join("recipes").display().to_string(),
        dir.join("data").display().to_string(),
    );
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Holds the source for `hold` seconds (a `wait` step), so a second run can find it held.
fn write_recipe(dir: &Path) -> PathBuf {
    let text = r#"
[recipe]
name = "hold-source"
version = "1"
roles = ["source"]

[parameters.hold]
unit = "s"
default = 60.0

[[steps]]
kind = "act"
name = "set voltage"
role = "source"
action = "set_voltage"
args = { volts = 230.0 }

[[steps]]
kind = "wait"
name = "hold"
duration = "hold"
"#;
    let path = dir.join("recipes/hold-source.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn labgate(cfg: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::labgate_bin());
    cmd.arg("-c").arg(cfg).args(args);
    cmd
}

/// Run to completion off the runtime's threads, bounded.
async fn output(mut cmd: Command) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("labgate finishes in time")
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `labgate run` whose stdout lines arrive on a channel.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn spawn(mut cmd: Command) -> Holder {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    /// Blocks (bounded) until a stdout line contains `needle`; returns that line.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    fn kill_9(&mut self) {
        // SAFETY: plain FFI call on a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 failed");
        let status = self.child.wait().unwrap();
        assert!(!status.success());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_is_refused_naming_the_holder_until_it_dies() {
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = write_recipe(dir.path());
    let recipe = recipe.to_str().unwrap();
    let run = |dut: &'static str, extra: &[&str]| {
        let mut args = vec!["run", recipe, "--station", "demo", "--dut", dut];
        args.extend(extra);
        labgate(&cfg, &args)
    };

    let mut first = Holder::spawn(run("SN-A", &[]));
    // Past `set voltage`: the run has its id and holds the source.
    first.wait_line("(wait)");
    let pid = first.child.id();

    let out = output(run("SN-B", &["--param", "hold=0"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("instrument `src1` is in use by run 1 (`labgate run` of recipe `hold-source` for DUT SN-A on station `demo`)")
            && stderr.contains(&format!("(pid {pid})")),
        "{stderr}"
    );
    assert!(
        !text(&out.stdout).contains("run 2"),
        "a refused run files nothing: {}",
        text(&out.stdout)
    );

    // A queued one waits in line, then runs once the holder is killed without warning.
    let queued = Holder::spawn(run("SN-C", &["--param", "hold=0", "--queue"]));
    let line = queued.wait_line("waiting for `src1`");
    assert!(line.contains("run 1 ("), "{line}");
    first.kill_9();
    let verdict = queued.wait_line("verdict:");
    assert!(verdict.contains("PASS"), "{verdict}");

    // And the lock is free again after a normal exit too.
    let out = output(run("SN-D", &["--param", "hold=0"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_run_with_the_data_locks_refuses_the_binary_naming_its_run() {
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe_path = write_recipe(dir.path());
    let bench = config::load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    let station = StationView::of(&bench, "demo").unwrap();
    let (recipe, params) =
        recipe::load_and_validate(&recipe_path, &station, &Default::default()).unwrap();
    let spec = RunSpec {
        recipe,
        station,
        params,
        dut: "SN-DAEMON".into(),
        operator: String::new(),
    };
    let store = Store::open(store::path_in(&bench.paths.data)).unwrap();
    let gw = Gateway::start_only(&bench, |id| id == "src1");
    let locks = Locks::in_dir(Locks::dir_in(&bench.paths.data)).unwrap();
    let abort = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let hooks = recipe::Hooks {
        progress: Some(tx),
        abort: abort.clone(),
        locks: Some(locks),
        ..recipe::Hooks::default()
    };
    let instruments = gw.instruments.clone();
    let task =
        tokio::spawn(async move { recipe::run_with(&spec, &instruments, &store, hooks).await });
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(p) = rx.recv().await {
            if matches!(&p, Progress::StepStarted { name, .. } if name == "hold") {
                break;
            }
        }
    })
    .await
    .expect("the engine run reaches its wait");

    let recipe_arg = recipe_path.to_str().unwrap();
    let args = [
        "run",
        recipe_arg,
        "--station",
        "demo",
        "--dut",
        "SN-CLI",
        "--param",
        "hold=0",
    ];
    let out = output(labgate(&cfg, &args)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "instrument `src1` is in use by run 1 (recipe `hold-source` for DUT SN-DAEMON on station `demo`) (pid {})",
        std::process::id()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    abort.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.verdict, RunVerdict::Aborted);
    let out = output(labgate(&cfg, &args)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
