//! `labgate run`, `labgate results` and `labgate check` as a user runs them: the real binary
//! against the in-process simulated bench on ephemeral ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use labgate::config;
use labgate::sim::bench::{SimBench, SimBenchConfig, start};
use labgate::sim::plant::PlantConfig;

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
        "[paths]\ndrivers = [{:?}]\nrecipes = {:?}\ndata = \"data\"\n\n{text}",
        root.join("drivers").display().to_string(),
        root.join("config/recipes").display().to_string(),
    );
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Run the binary off the test's runtime threads, bounded.
async fn labgate(cfg: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(common::labgate_bin());
    cmd.arg("-c").arg(cfg).args(args);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_show_export_and_exit_codes() {
    let sim = start(SimBenchConfig {
        plant: PlantConfig {
            tau: Duration::from_millis(300),
            ..PlantConfig::default()
        },
        ..SimBenchConfig::ephemeral()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes/lm79-led-lamp.toml");
    let recipe = recipe.to_str().unwrap();
    let fast = [
        "--param",
        "stabilize_interval=0.1",
        "--param",
        "sample_interval=0.05",
        "--param",
        "stabilize_max=0.5",
    ];

    let check = labgate(&cfg, &["check"]).await;
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("ok: 3 recipes"),
        "{}",
        text(&check.stdout)
    );

    let mut args = vec!["run", recipe, "--station", "demo", "--dut", "SN1"];
    args.extend(fast);
    let out = labgate(&cfg, &args).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("stabilize power (stabilize)"), "{stdout}");
    assert!(stdout.contains("    flux = "), "{stdout}");
    // The live display: the current step, the stabilization trend, each value with its verdict.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("    power: ") && l.contains("spread") && l.ends_with("stable")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("    flux = ")
            && l.contains(" lm  [")
            && (l.ends_with("  pass") || l.ends_with("  MARGINAL"))),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("    power vs rated = ") && l.contains(" %  [90 .. 110]")),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: PASS (run 1)"), "{stdout}");

    // A limit that cannot be met: exit 1.
    let mut args = vec![
        "run",
        recipe,
        "--station",
        "demo",
        "--dut",
        "SN2",
        "--param",
        "rated_flux=2000",
    ];
    args.extend(fast);
    let out = labgate(&cfg, &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("FAIL"));

    // A parameter the recipe does not have: nothing runs, exit 2.
    let out = labgate(
        &cfg,
        &[
            "run",
            recipe,
            "--station",
            "demo",
            "--dut",
            "SN3",
            "--param",
            "rated_volts=1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the recipe has no parameter `rated_volts`"),
        "{}",
        text(&out.stderr)
    );

    let list = labgate(&cfg, &["results", "list"]).await;
    let listed = text(&list.stdout);
    assert_eq!(listed.lines().count(), 2, "two runs filed: {listed}");
    assert!(
        listed.contains("fail") && listed.contains("pass"),
        "{listed}"
    );

    let show = labgate(&cfg, &["results", "show", "1"]).await;
    let shown = text(&show.stdout);
    assert!(show.status.success());
    assert!(shown.contains("verdict pass"), "{shown}");
    assert!(shown.contains("    efficacy = "), "{shown}");
    // A computed value shows at seven significant digits (the store and exports keep all).
    let efficacy = shown
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("efficacy = "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no efficacy line in {shown}"));
    let digits = efficacy
        .chars()
        .filter(char::is_ascii_digit)
        .skip_while(|c| *c == '0')
        .count();
    assert!(
        (1..=7).contains(&digits) && efficacy.parse::<f64>().is_ok_and(|v| v > 1.0),
        "{efficacy} in {shown}"
    );

    let csv = labgate(&cfg, &["results", "export", "1", "2", "--format", "csv"]).await;
    let csv = text(&csv.stdout);
    assert!(csv.starts_with("run_id,recipe_name"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("2,") && l.contains(",flux,"))
    );

    let json = labgate(&cfg, &["results", "export", "1"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["run"]["dut_serial"], "SN1");
    assert!(!sim.plant.output_on());
}

/// Ctrl-C during a run: the wait is cut short, cleanup switches the lamp off, the run is filed
/// as aborted and the exit code is 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_aborts_then_cleans_up() {
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = dir.path().join("long.toml");
    std::fs::write(
        &recipe,
        r#"[recipe]
name = "long"
roles = ["source"]

[[steps]]
kind = "act"
name = "on"
role = "source"
action = "output"
args = { on = true }

[[steps]]
kind = "wait"
name = "long wait"
duration = "5min"

[[cleanup]]
kind = "act"
name = "off"
role = "source"
action = "output"
args = { on = false }
"#,
    )
    .unwrap();
    let mut child = Command::new(common::labgate_bin())
        .arg("-c")
        .arg(&cfg)
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--station",
            "demo",
            "--dut",
            "X",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the lamp is on (the wait has started by then).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !sim.plant.output_on() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lamp never came on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            let mut s = String::new();
            use std::io::Read;
            child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            (status, s)
        }),
    )
    .await
    .expect("labgate exits soon after the interrupt")
    .unwrap();
    assert_eq!(out.0.code(), Some(2), "{}", out.1);
    assert!(out.1.contains("verdict: ABORTED"), "{}", out.1);
    assert!(!sim.plant.output_on(), "cleanup switched the lamp off");
}

/// `kill -9` mid-run loses nothing already measured; at the next start the run is marked
/// interrupted (the daemon does that at start-up; here the test does it on the same store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_keeps_every_measurement() {
    use labgate::store::{RunFilter, RunState, RunVerdict, Store};
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = dir.path().join("crash.toml");
    std::fs::write(
        &recipe,
        r#"[recipe]
name = "crash"
roles = ["source", "analyzer"]

[[steps]]
kind = "act"
role = "source"
action = "output"
args = { on = true }

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["voltage", "current"]

[[steps]]
kind = "wait"
name = "long"
duration = "5min"
"#,
    )
    .unwrap();
    let mut child = Command::new(common::labgate_bin())
        .arg("-c")
        .arg(&cfg)
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--station",
            "demo",
            "--dut",
            "K9",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = dir.path().join("data").join(labgate::store::FILE_NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let run = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no measurements filed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !db.exists() {
            continue;
        }
        let Ok(store) = Store::open(&db) else {
            continue;
        };
        let Ok(page) = store.list_runs(&RunFilter::default()).await else {
            continue;
        };
        let Some(r) = page.items.first() else {
            continue;
        };
        let d = store.get_run(r.id).await.unwrap().unwrap();
        if d.measurements.len() == 2 {
            break r.id;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&db).unwrap();
    let d = store.get_run(run).await.unwrap().unwrap();
    assert_eq!(d.run.state, RunState::Running, "nobody finished it");
    let names: Vec<&str> = d.measurements.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["voltage", "current"]);
    assert!(d.measurements.iter().all(|m| m.value.is_some()));
    assert_eq!(store.mark_interrupted().await.unwrap(), vec![run]);
    let d = store.get_run(run).await.unwrap().unwrap();
    assert_eq!(d.run.verdict, Some(RunVerdict::Interrupted));
    assert_eq!(d.measurements.len(), 2);
}
