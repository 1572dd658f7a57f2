//! `labgate run` with an operator on its stdin (the real binary, stdin piped): a `confirm` step
//! answered yes, answered no, left unanswered until its timeout, and stdin closed; and
//! `labgate check` / `labgate run` reporting every problem of a broken recipe at once with
//! file:line:col before anything is touched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use labgate::config;
use labgate::sim::bench::{SimBench, SimBenchConfig, start};

mod common;

/// A config for the simulated bench whose recipes directory is `recipes` (under `dir`).
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
        "[paths]\ndrivers = [{:?}]\nrecipes = \"recipes\"\ndata = \"data\"\n\n{text}",
        root.join("drivers").display().to_string(),
    );
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Run the binary with `input` on stdin; `None` keeps stdin open and silent until the process
/// ends (an operator who never answers). Bounded.
async fn labgate(cfg: &Path, args: &[&str], input: Option<&'static str>) -> Output {
    let mut cmd = Command::new(common::labgate_bin());
    cmd.arg("-c")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let keep = match input {
                Some(text) => {
                    stdin.write_all(text.as_bytes()).unwrap();
                    drop(stdin);
                    None
                }
                None => Some(stdin),
            };
            let out = child.wait_with_output().unwrap();
            drop(keep);
            out
        }),
    )
    .await
    .expect("labgate finishes in time")
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const CONFIRM: &str = r#"[recipe]
name = "confirm"
roles = ["source"]

[[steps]]
kind = "confirm"
name = "insert lamp"
prompt = "insert lamp 2"
timeout = "TIMEOUT"

[[steps]]
kind = "act"
name = "lamp on"
role = "source"
action = "output"
args = { on = true }

[[cleanup]]
kind = "act"
name = "lamp off"
role = "source"
action = "output"
args = { on = false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_is_answered_on_stdin_or_times_out() {
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = dir.path().join("confirm.toml");
    std::fs::write(&recipe, CONFIRM.replace("TIMEOUT", "20s")).unwrap();
    let r = recipe.to_str().unwrap();
    let run = ["run", r, "--station", "demo", "--dut", "C1"];

    let out = labgate(&cfg, &run, Some("y\n")).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("? insert lamp 2 [y = go on / n = fail the step]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("lamp on (act)"),
        "the run went on: {stdout}"
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");

    // "n": the step fails (on_fail = continue), the run is a fail: exit 1.
    let out = labgate(&cfg, &run, Some("n\n")).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");

    // Nobody at the terminal (stdin closed): nobody can confirm, the step fails.
    let out = labgate(&cfg, &run, Some("")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // An operator who never answers: the step's timeout is an error, cleanup runs, exit 2.
    std::fs::write(&recipe, CONFIRM.replace("TIMEOUT", "300ms")).unwrap();
    let out = labgate(&cfg, &run, None).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("lamp on (act)"), "{stdout}");
    assert!(stdout.contains("lamp off (act)"), "cleanup ran: {stdout}");
    assert!(stdout.contains("verdict: ERROR"), "{stdout}");
    assert!(!sim.plant.output_on());

    let list = labgate(&cfg, &["results", "list", "--verdict", "error"], Some("")).await;
    assert_eq!(
        text(&list.stdout).lines().count(),
        1,
        "{}",
        text(&list.stdout)
    );
}

const BROKEN: &str = r#"[recipe]
name = "broken"
roles = ["source", "analyzer", "sphere"]

[parameters.rated_power]
unit = "W"
default = 9.5

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["power", "curent"]
limits.power = { max = 300, unit = "mA" }

[[steps]]
kind = "compute"
output = "efficacy"
expr = "flux / power"
unit = "lm/W"

[[steps]]
kind = "check"
expr = "100 * power / rated_power"
unit = "%"
limit = { max = 110 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_report_every_problem_with_positions() {
    let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path());
    let recipe = dir.path().join("recipes/broken.toml");
    std::fs::write(&recipe, BROKEN).unwrap();
    let shown = recipe.display().to_string();
    let expected = [
        format!(
            "{shown}:12:24: steps[0].quantities[1]: driver `yokogawa-wt310e` has no quantity `curent` (did you mean `current`?)"
        ),
        format!(
            "{shown}:13:36: steps[0].limits.power.unit: unit mismatch: the limit is in mA but the value is in W"
        ),
        format!(
            "{shown}:18:8: steps[1].expr: `flux / power`: unknown variable `flux` (known: power, rated_power)"
        ),
        format!(
            "{shown}:23:8: steps[2].expr: `100 * power / rated_power`: the expression is a plain ratio"
        ),
    ];

    let out = labgate(&cfg, &["check"], Some("")).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for line in &expected {
        assert!(stderr.contains(line.as_str()), "missing {line}\n{stderr}");
    }
    assert!(
        stderr.contains("error: 4 problem(s) in the recipes"),
        "{stderr}"
    );

    let r = recipe.to_str().unwrap();
    let out = labgate(
        &cfg,
        &["run", r, "--station", "demo", "--dut", "B1"],
        Some(""),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in &expected {
        assert!(stderr.contains(line.as_str()), "missing {line}\n{stderr}");
    }
    assert!(
        stderr.contains("4 problem(s) in the recipe; nothing was run"),
        "{stderr}"
    );
    let list = labgate(&cfg, &["results", "list"], Some("")).await;
    assert_eq!(text(&list.stdout).trim(), "", "no run was filed");
}
