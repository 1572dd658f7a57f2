//! The recipe engine against the in-process simulated bench (real loopback TCP, ephemeral ports,
//! a lamp with a short warm-up): every step kind, limit verdicts, on_fail, errors, abort, and
//! cleanup after each of them; the LM-79 example recipe to a pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use labgate::config::{self, Bench};
use labgate::diag::Source;
use labgate::gateway::Gateway;
use labgate::recipe::{self, Progress, RunOutcome, RunSpec, StationView, load};
use labgate::sim::bench::{SimBench, SimBenchConfig, start};
use labgate::sim::plant::PlantConfig;
use labgate::store::{RunDetail, RunVerdict, StepStatus, Store, Verdict};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Env {
    sim: SimBench,
    bench: Bench,
    gw: Gateway,
    store: Store,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let sim = start(SimBenchConfig {
        plant: PlantConfig {
            tau: Duration::from_millis(300),
            ..PlantConfig::default()
        },
        ..SimBenchConfig::ephemeral()
    })
    .await
    .expect("sim bench starts");
    let dir = tempfile::tempdir().unwrap();
    let drivers = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers");
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
        drivers.display().to_string()
    );
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, text).unwrap();
    let bench = config::load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    let gw = Gateway::start(&bench);
    let store = Store::open(dir.path().join("results.db")).unwrap();
    Env {
        sim,
        bench,
        gw,
        store,
        dir,
    }
}

struct Ran {
    outcome: RunOutcome,
    progress: Vec<Progress>,
    detail: RunDetail,
}

impl Ran {
    fn value(&self, name: &str) -> f64 {
        self.measurement(name)
            .value
            .unwrap_or_else(|| panic!("{name} has no value"))
    }

    fn measurement(&self, name: &str) -> &labgate::store::Measurement {
        self.detail
            .measurements
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self
                    .detail
                    .measurements
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect();
                panic!("no measurement {name}; have {names:?}")
            })
    }

    fn step(&self, name: &str) -> &labgate::store::Step {
        self.detail
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }
}

fn spec(env: &Env, path: &Path, text: &str, overrides: &[(&str, f64)]) -> RunSpec {
    let source = Source::new(path, text);
    let recipe = load::parse(&source).unwrap_or_else(|d| panic!("{d}"));
    let station = StationView::of(&env.bench, "demo").unwrap();
    let overrides: BTreeMap<String, f64> =
        overrides.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let params = recipe::validate(&recipe, &station, &overrides).unwrap_or_else(|d| panic!("{d}"));
    RunSpec {
        recipe,
        station,
        params,
        dut: "SN-TEST".into(),
        operator: "test".into(),
    }
}

async fn run_spec(env: &Env, spec: &RunSpec, abort: CancellationToken) -> Ran {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        recipe::run(spec, &env.gw.instruments, &env.store, Some(tx), abort),
    )
    .await
    .expect("the run ends in time")
    .expect("the run is filed");
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    let detail = env.store.get_run(outcome.run).await.unwrap().unwrap();
    Ran {
        outcome,
        progress,
        detail,
    }
}

async fn run_text(env: &Env, text: &str) -> Ran {
    let s = spec(env, &env.dir.path().join("r.toml"), text, &[]);
    run_spec(env, &s, CancellationToken::new()).await
}

const HEAD: &str = r#"[recipe]
name = "t"
version = "1"
roles = ["source", "analyzer", "sphere"]

[parameters.rated_voltage]
unit = "V"
default = 230.0

[[steps]]
kind = "act"
name = "set voltage"
role = "source"
action = "set_voltage"
args = { volts = "rated_voltage" }

[[steps]]
kind = "act"
name = "on"
role = "source"
action = "output"
args = { on = true }
"#;

const CLEANUP: &str = r#"
[[cleanup]]
kind = "act"
name = "off"
role = "source"
action = "output"
args = { on = false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm79_example_runs_to_a_pass() {
    let env = env().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes/lm79-led-lamp.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = spec(
        &env,
        &path,
        &text,
        &[
            ("stabilize_interval", 0.1),
            ("sample_interval", 0.05),
            ("stabilize_max", 0.5),
        ],
    );
    let ran = run_spec(&env, &s, CancellationToken::new()).await;
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:#?}",
        ran.detail.steps
    );
    for q in [
        "voltage",
        "current",
        "power",
        "power_factor",
        "current_thd",
        "flux",
        "cct",
        "duv",
        "ra",
        "r9",
        "efficacy",
        "power vs rated",
    ] {
        let m = ran.measurement(q);
        assert_ne!(m.verdict, Some(Verdict::Fail), "{q}: {m:?}");
    }
    let efficacy = ran.value("flux") / ran.value("power");
    assert!((ran.value("efficacy") - efficacy).abs() < 1e-9);
    assert_eq!(ran.measurement("efficacy").unit, "lm/W");
    // Limits from parameters: 0.9 * rated_flux.
    assert_eq!(ran.measurement("flux").limits.min, Some(0.9 * 806.0));
    // 100 mA written as a limit, stored in the reading's unit (A).
    assert_eq!(ran.measurement("current").limits.max, Some(0.1));
    assert!(
        ran.progress
            .iter()
            .any(|p| matches!(p, Progress::Stabilizing { stable: true, .. }))
    );
    assert!(!env.sim.plant.output_on(), "cleanup switched the lamp off");
    assert_eq!(ran.detail.run.recipe_name, "lm79-led-lamp");
    assert_eq!(ran.detail.run.dut_serial, "SN-TEST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_kinds_sweep_names_and_computed_values() {
    let env = env().await;
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "wait_until"
name = "output is on"
role = "source"
quantities = ["output"]
condition = "output > 0.5"
interval = "20ms"
hold = "40ms"
max_duration = "5s"

[[steps]]
kind = "wait"
duration = 0.05

[[steps]]
kind = "stabilize"
name = "warm"
role = "analyzer"
quantities = ["power"]
interval = "50ms"
within_pct = 2.0
max_duration = "5s"

[[steps]]
kind = "measure"
name = "max power"
role = "analyzer"
quantities = ["power"]
samples = 3
interval = "10ms"
aggregate = "stddev"

[[steps]]
kind = "sweep"
name = "volts"
var = "volts"
unit = "V"
values = [198.0, 242.0]

[[steps.steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = {{ volts = "volts" }}

[[steps.steps]]
kind = "measure"
role = "analyzer"
quantities = ["voltage", "power"]
limits.voltage = {{ nominal = "volts", tolerance_pct = 2 }}

[[steps]]
kind = "compute"
output = "delta"
expr = "power_242v - power_198v"
unit = "W"

[[steps]]
kind = "check"
name = "voltage span"
expr = "voltage_242v - voltage_198v"
unit = "V"
limit = {{ nominal = 44, tolerance = 2 }}
{CLEANUP}"#
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:#?}",
        ran.detail.steps
    );
    let delta = ran.value("power@242V") - ran.value("power@198V");
    assert!((ran.value("delta") - delta).abs() < 1e-9);
    assert!((ran.value("voltage@198V") - 198.0).abs() < 2.0);
    assert_eq!(ran.measurement("voltage@242V").limits.nominal, Some(242.0));
    assert_eq!(ran.measurement("voltage span").verdict, Some(Verdict::Pass));
    // A standard deviation of three samples is small but is not the power itself.
    assert!(ran.value("power") < 1.0, "{}", ran.value("power"));
    let kinds: Vec<&str> = ran.detail.steps.iter().map(|s| s.kind.as_str()).collect();
    for k in [
        "act",
        "wait_until",
        "wait",
        "stabilize",
        "measure",
        "sweep",
        "compute",
        "check",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(ran.step("measure 2@198V").status == Some(StepStatus::Pass));
    assert!(!env.sim.plant.output_on());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_limits_continue_or_stop_and_marginal_passes() {
    let env = env().await;
    let body = |on_fail: &str| {
        format!(
            r#"{HEAD}
[[steps]]
kind = "wait"
duration = "100ms"

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power"]
on_fail = "{on_fail}"
limits.power = {{ max = 1.0 }}

[[steps]]
kind = "measure"
name = "voltage"
role = "analyzer"
quantities = ["voltage"]
{CLEANUP}"#
        )
    };
    let ran = run_text(&env, &body("continue")).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Fail);
    assert_eq!(ran.measurement("power").verdict, Some(Verdict::Fail));
    assert_eq!(ran.step("power").status, Some(StepStatus::Fail));
    assert!(ran.value("voltage") > 200.0, "later steps ran");
    assert_eq!(ran.step("off").status, Some(StepStatus::Pass));
    assert!(!env.sim.plant.output_on());

    let ran = run_text(&env, &body("stop")).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Fail);
    assert!(
        ran.detail.steps.iter().all(|s| s.name != "voltage"),
        "no step after a stop"
    );
    assert_eq!(ran.step("off").status, Some(StepStatus::Pass));
    assert!(!env.sim.plant.output_on());

    let marginal = format!(
        r#"{HEAD}
[[steps]]
kind = "wait"
duration = "100ms"

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power", "voltage"]
limits.power = {{ min = 0, max = 10, marginal = 1.0 }}
limits.voltage = {{ min = 0.2, unit = "kV" }}
{CLEANUP}"#
    );
    let ran = run_text(&env, &marginal).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Pass);
    assert_eq!(ran.measurement("power").verdict, Some(Verdict::Marginal));
    assert_eq!(ran.measurement("voltage").limits.min, Some(200.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instrument_error_stops_the_run_and_cleanup_still_runs() {
    let env = env().await;
    // 10 x the measured voltage is far above the source's 300 V: refused when the step runs.
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "wait"
duration = "50ms"

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power", "voltage"]

[[steps]]
kind = "act"
name = "too high"
role = "source"
action = "set_voltage"
args = {{ volts = "voltage * 10" }}

[[steps]]
kind = "measure"
name = "never"
role = "analyzer"
quantities = ["voltage"]
{CLEANUP}"#
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
    let step = ran.step("too high");
    assert_eq!(step.status, Some(StepStatus::Error));
    assert!(
        step.message
            .as_deref()
            .unwrap_or("")
            .contains("out of range"),
        "{step:?}"
    );
    assert!(ran.detail.steps.iter().all(|s| s.name != "never"));
    assert!(ran.value("power") > 1.0, "measured before the error: kept");
    assert_eq!(ran.step("off").status, Some(StepStatus::Pass));
    assert!(!env.sim.plant.output_on());
}

/// An int argument that depends on a measurement is checked when the step runs: a fraction
/// stops the run instead of being rounded to another rack position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measured_fraction_for_an_int_argument_is_an_error_not_a_rounding() {
    let env = env().await;
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "wait"
duration = "50ms"

[[steps]]
kind = "measure"
name = "voltage"
role = "analyzer"
quantities = ["voltage"]

[[steps]]
kind = "act"
name = "pick position"
role = "rack"
action = "relay_on"
args = {{ position = "voltage / 7" }}
{CLEANUP}"#
    )
    .replace(
        r#"roles = ["source", "analyzer", "sphere"]"#,
        r#"roles = ["source", "analyzer", "rack"]"#,
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
    let step = ran.step("pick position");
    assert_eq!(step.status, Some(StepStatus::Error));
    let message = step.message.as_deref().unwrap_or("");
    assert!(
        message.contains("argument position") && message.contains("not a whole number"),
        "{step:?}"
    );
    assert_eq!(ran.step("off").status, Some(StepStatus::Pass));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cuts_a_wait_short_and_runs_cleanup() {
    let env = env().await;
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power"]

[[steps]]
kind = "wait"
name = "long"
duration = "60s"
{CLEANUP}"#
    );
    let s = spec(&env, &env.dir.path().join("r.toml"), &text, &[]);
    let abort = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let token = abort.clone();
    let store = env.store.clone();
    let instruments = env.gw.instruments.clone();
    let task =
        tokio::spawn(async move { recipe::run(&s, &instruments, &store, Some(tx), token).await });
    // Abort once the long wait has started.
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = rx.recv().await {
            if let Progress::StepStarted { name, .. } = &p
                && name == "long"
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("the wait starts");
    assert!(started);
    abort.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("abort takes effect well before the 60 s wait ends")
        .unwrap()
        .unwrap();
    assert_eq!(outcome.verdict, RunVerdict::Aborted);
    let detail = env.store.get_run(outcome.run).await.unwrap().unwrap();
    let step = |n: &str| detail.steps.iter().find(|s| s.name == n).unwrap();
    assert_eq!(step("long").status, Some(StepStatus::Aborted));
    assert_eq!(step("off").status, Some(StepStatus::Pass));
    assert!(detail.measurements.iter().any(|m| m.name == "power"));
    assert!(!env.sim.plant.output_on(), "cleanup ran after the abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stabilize_gives_up_at_its_limit_and_a_step_timeout_is_an_error() {
    let env = env().await;
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "stabilize"
name = "never stable"
role = "analyzer"
quantities = ["power"]
interval = "30ms"
within = 0.0
max_duration = "300ms"
on_fail = "stop"
{CLEANUP}"#
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Fail);
    let step = ran.step("never stable");
    assert_eq!(step.status, Some(StepStatus::Fail));
    assert!(
        step.message.as_deref().unwrap().contains("not stable"),
        "{step:?}"
    );
    assert!(
        ran.progress
            .iter()
            .any(|p| matches!(p, Progress::Stabilizing { stable: false, .. }))
    );

    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "wait"
name = "slow"
duration = "10s"
timeout = "100ms"
{CLEANUP}"#
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
    assert!(
        ran.step("slow")
            .message
            .as_deref()
            .unwrap()
            .contains("timed out"),
        "{:?}",
        ran.step("slow")
    );
    assert!(!env.sim.plant.output_on());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_retries_until_its_steps_pass() {
    let env = env().await;
    // Try 1 reads the 100 V setpoint (fails), then programs 230 V; try 2 passes.
    let group = |tries: u32, fix: f64, on_fail: &str| {
        format!(
            r#"[recipe]
name = "g"
roles = ["source"]

[[steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = {{ volts = 100 }}

[[steps]]
kind = "group"
name = "settle setpoint"
tries = {tries}
retry_delay = "10ms"
on_fail = "{on_fail}"

[[steps.steps]]
kind = "measure"
name = "read setpoint"
role = "source"
quantities = ["voltage_setpoint"]
limits.voltage_setpoint = {{ min = 229 }}

[[steps.steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = {{ volts = {fix} }}

[[steps]]
kind = "wait"
name = "after"
duration = "1ms"
"#
        )
    };
    let ran = run_text(&env, &group(3, 230.0, "continue")).await;
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:#?}",
        ran.detail.steps
    );
    let reads: Vec<_> = ran
        .detail
        .measurements
        .iter()
        .filter(|m| m.name == "voltage_setpoint")
        .collect();
    assert_eq!(reads.len(), 2, "both tries are stored: {reads:?}");
    assert_eq!(reads[0].verdict, Some(Verdict::Fail));
    assert_eq!(reads[1].verdict, Some(Verdict::Pass));
    assert_eq!(ran.step("settle setpoint").status, Some(StepStatus::Pass));

    // At the last try the group fails; its on_fail decides: continue with the next step...
    let ran = run_text(&env, &group(2, 100.0, "continue")).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Fail);
    let step = ran.step("settle setpoint");
    assert_eq!(step.status, Some(StepStatus::Fail));
    assert_eq!(step.message.as_deref(), Some("still failing after 2 tries"));
    assert_eq!(ran.step("after").status, Some(StepStatus::Pass));

    // ...or stop the run there (every try's measurements stay stored).
    let ran = run_text(&env, &group(2, 100.0, "stop")).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Fail);
    assert_eq!(ran.step("settle setpoint").status, Some(StepStatus::Fail));
    assert!(
        ran.detail.steps.iter().all(|s| s.name != "after"),
        "stopped"
    );
    let fails = ran
        .detail
        .measurements
        .iter()
        .filter(|m| m.name == "voltage_setpoint" && m.verdict == Some(Verdict::Fail))
        .count();
    assert_eq!(fails, 2, "both tries stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_waits_for_the_operator() {
    let env = env().await;
    let text = r#"[recipe]
name = "c"
roles = ["source"]

[[steps]]
kind = "confirm"
name = "insert lamp"
prompt = "insert lamp 2"
timeout = "10s"

[[steps]]
kind = "act"
name = "on"
role = "source"
action = "output"
args = { on = true }
"#;
    for (answer, verdict) in [(true, RunVerdict::Pass), (false, RunVerdict::Fail)] {
        let s = spec(&env, &env.dir.path().join("c.toml"), text, &[]);
        let (tx, mut rx) = mpsc::channel::<recipe::ConfirmRequest>(1);
        let operator = tokio::spawn(async move {
            let req = rx.recv().await.expect("asked");
            assert_eq!(req.prompt, "insert lamp 2");
            req.reply.send(answer).unwrap();
        });
        let hooks = recipe::Hooks {
            confirm: Some(tx),
            ..recipe::Hooks::default()
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            recipe::run_with(&s, &env.gw.instruments, &env.store, hooks),
        )
        .await
        .unwrap()
        .unwrap();
        operator.await.unwrap();
        assert_eq!(outcome.verdict, verdict);
    }
    // Nobody to ask: an error, not a silent pass.
    let ran = run_text(&env, text).await;
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
    assert!(ran.detail.steps.iter().all(|s| s.name != "on"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_held_instruments_is_refused_naming_the_holder() {
    let env = env().await;
    let long = r#"[recipe]
name = "long"
roles = ["source"]

[[steps]]
kind = "wait"
name = "long"
duration = "60s"
"#;
    let locks = recipe::locks::Locks::new();
    let first = spec(&env, &env.dir.path().join("long.toml"), long, &[]);
    let abort = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hooks = recipe::Hooks {
        progress: Some(tx),
        abort: abort.clone(),
        locks: Some(locks.clone()),
        ..recipe::Hooks::default()
    };
    let (store, instruments) = (env.store.clone(), env.gw.instruments.clone());
    let task =
        tokio::spawn(async move { recipe::run_with(&first, &instruments, &store, hooks).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = rx.recv().await {
            if matches!(p, Progress::StepStarted { .. }) {
                break;
            }
        }
    })
    .await
    .unwrap();

    let second = spec(&env, &env.dir.path().join("long.toml"), long, &[]);
    let hooks = recipe::Hooks {
        locks: Some(locks.clone()),
        ..recipe::Hooks::default()
    };
    let err = recipe::run_with(&second, &env.gw.instruments, &env.store, hooks)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "instrument `src1` is in use by recipe `long` for DUT SN-TEST on station `demo`"
    );
    // Asked to queue, a third run waits for the first to end, then runs.
    let short = long.replace("duration = \"60s\"", "duration = \"10ms\"");
    let third = spec(&env, &env.dir.path().join("short.toml"), &short, &[]);
    let (qtx, mut qrx) = mpsc::unbounded_channel();
    let hooks = recipe::Hooks {
        progress: Some(qtx),
        locks: Some(locks.clone()),
        queue: true,
        ..recipe::Hooks::default()
    };
    let (store, instruments) = (env.store.clone(), env.gw.instruments.clone());
    let queued =
        tokio::spawn(async move { recipe::run_with(&third, &instruments, &store, hooks).await });
    let first_event = tokio::time::timeout(Duration::from_secs(10), qrx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first_event, Progress::Queued { instrument, .. } if instrument == "src1"),
        "{first_event:?}"
    );
    abort.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.verdict, RunVerdict::Aborted);
    let after = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued run starts once the first ends")
        .unwrap()
        .unwrap();
    assert_eq!(after.verdict, RunVerdict::Pass);
    assert!(after.run > outcome.run);
    assert_eq!(locks.holder("src1"), None, "released when the runs ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_retried_and_ranges_sweep() {
    let env = env().await;
    let text = r#"[recipe]
name = "r"
roles = ["source"]

[[steps]]
kind = "sweep"
name = "range"
var = "v"
unit = "V"
range = { from = 100, to = 130, step = 15 }

[[steps.steps]]
kind = "act"
name = "set"
role = "source"
action = "set_voltage"
args = { volts = "v" }

[[steps.steps]]
kind = "measure"
name = "read"
role = "source"
quantities = ["voltage_setpoint"]
limits.voltage_setpoint = { nominal = "v", tolerance = 0.01 }

[[steps]]
kind = "wait"
name = "slow"
duration = "10s"
timeout = "50ms"
retries = 2
retry_delay = "10ms"
"#;
    let ran = run_text(&env, text).await;
    let names: Vec<&str> = ran
        .detail
        .measurements
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "voltage_setpoint@100V",
            "voltage_setpoint@115V",
            "voltage_setpoint@130V"
        ]
    );
    assert!(
        ran.detail
            .measurements
            .iter()
            .all(|m| m.verdict == Some(Verdict::Pass))
    );
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
    let slow = ran.step("slow");
    assert_eq!(
        slow.message.as_deref(),
        Some("step `slow` timed out after 50ms (after 3 tries)")
    );
    let mut retries = 0;
    let mut seq = 0;
    loop {
        let events = env.store.events_since(ran.outcome.run, seq).await.unwrap();
        let Some(last) = events.last() else { break };
        seq = last.seq;
        retries += events.iter().filter(|e| e.kind == "retry").count();
    }
    assert_eq!(retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voltage_sweep_example_runs_to_a_pass() {
    let env = env().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes/voltage-sweep.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = spec(
        &env,
        &path,
        &text,
        &[("stabilize_interval", 0.1), ("settle", 0.05)],
    );
    let ran = run_spec(&env, &s, CancellationToken::new()).await;
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:#?}",
        ran.detail.steps
    );
    for v in ["198V", "220V", "242V"] {
        let m = ran.measurement(&format!("voltage@{v}"));
        assert_eq!(m.verdict, Some(Verdict::Pass), "{m:?}");
        assert!(ran.value(&format!("flux@{v}")) > 700.0);
    }
    assert_eq!(
        ran.measurement("flux change over the range").verdict,
        Some(Verdict::Pass)
    );
    assert!(!env.sim.plant.output_on());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermal_example_runs_to_a_pass() {
    let env = env().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes/thermal.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // A setpoint at the simulated chamber's ambient, so the chamber is there at once.
    let s = spec(
        &env,
        &path,
        &text,
        &[("chamber_setpoint", 23.2), ("interval", 0.1), ("hold", 0.2)],
    );
    let ran = run_spec(&env, &s, CancellationToken::new()).await;
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:#?}",
        ran.detail.steps
    );
    let rise = ran.value("case_rise");
    assert!((rise - (ran.value("tc_101") - ran.value("tc_102"))).abs() < 1e-9);
    assert!(
        rise > 10.0,
        "the lit lamp's case is warmer than the air: {rise}"
    );
    assert_eq!(ran.measurement("tc_101").unit, "degC");
    assert!(!env.sim.plant.output_on());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cleanup_step_is_recorded_and_the_rest_of_cleanup_runs() {
    let env = env().await;
    let text = format!(
        r#"{HEAD}
[[cleanup]]
kind = "wait"
name = "stuck"
duration = "10s"
timeout = "20ms"
{CLEANUP}"#
    );
    let ran = run_text(&env, &text).await;
    assert_eq!(ran.step("stuck").status, Some(StepStatus::Error));
    assert_eq!(ran.step("off").status, Some(StepStatus::Pass));
    assert!(!env.sim.plant.output_on());
    // The steps passed, but the bench was not put back cleanly.
    assert_eq!(ran.outcome.verdict, RunVerdict::Error);
}

/// Values in different prefixes are converted while the run runs, never used raw: an argument
/// from a parameter in kV, computed values declared in mA and %, limits from an expression in kV
/// and limits written in V on a value stored in mV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_are_converted_while_the_run_runs() {
    let env = env().await;
    let text = r#"[recipe]
name = "units"
roles = ["source", "analyzer"]

[parameters.rated_kv]
unit = "kV"
default = 0.23

[parameters.rated_power_mw]
unit = "mW"
default = 9500.0

[[steps]]
kind = "act"
name = "set voltage"
role = "source"
action = "set_voltage"
args = { volts = "rated_kv" }

[[steps]]
kind = "act"
name = "on"
role = "source"
action = "output"
args = { on = true }

[[steps]]
kind = "wait"
duration = "100ms"

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["voltage", "current", "power"]
limits.voltage = { max = "rated_kv * 1.02" }

[[steps]]
kind = "compute"
output = "current_ma"
expr = "current"
unit = "mA"

[[steps]]
kind = "compute"
output = "twice_ma"
expr = "current_ma + current"
unit = "mA"

[[steps]]
kind = "compute"
output = "voltage_mv"
expr = "voltage"
unit = "mV"
limit = { min = 220, max = 240, unit = "V" }

[[steps]]
kind = "measure"
name = "current again"
role = "analyzer"
quantities = ["current"]
limits.current = { min = "current_ma * 0.5", max = "current_ma * 1.5" }

[[steps]]
kind = "check"
name = "voltage band"
expr = "voltage"
unit = "V"
limit = { nominal = "rated_kv", tolerance_ppm = 50000, marginal_pct = 10 }

[[steps]]
kind = "check"
name = "power vs rated"
expr = "power / rated_power_mw"
unit = "%"
limit = { nominal = 100, tolerance = 50 }

[[cleanup]]
kind = "act"
name = "off"
role = "source"
action = "output"
args = { on = false }
"#;
    let ran = run_text(&env, text).await;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    let v = ran.value("voltage");
    assert!(
        (v - 230.0).abs() < 5.0,
        "0.23 kV was sent as 230 V, got {v}"
    );
    let m = ran.measurement("voltage");
    assert_eq!(m.unit, "V");
    assert!(close(m.limits.max.unwrap(), 234.6), "{:?}", m.limits);
    let i = ran.value("current");
    assert_eq!(ran.measurement("current").unit, "A");
    assert!(i > 0.0);
    assert!(close(ran.value("current_ma"), 1000.0 * i));
    // Limits from another measurement in mA, on a reading in A.
    let again = ran
        .detail
        .measurements
        .iter()
        .rfind(|m| m.name == "current")
        .unwrap();
    assert!(
        close(again.limits.max.unwrap(), 1.5 * i),
        "{:?}",
        again.limits
    );
    assert!(
        close(again.limits.min.unwrap(), 0.5 * i),
        "{:?}",
        again.limits
    );
    assert_eq!(ran.measurement("current_ma").unit, "mA");
    assert!(close(ran.value("twice_ma"), 2000.0 * i), "mA + A converted");
    let mv = ran.measurement("voltage_mv");
    assert!(close(mv.value.unwrap(), 1000.0 * v));
    assert!(close(mv.limits.min.unwrap(), 220_000.0), "{:?}", mv.limits);
    assert_eq!(mv.verdict, Some(Verdict::Pass));
    // Nominal from a parameter in kV, +/- 50000 ppm, marginal band 10 % of the span.
    let band = ran.measurement("voltage band").limits;
    assert!(close(band.nominal.unwrap(), 230.0), "{band:?}");
    assert!(
        close(band.min.unwrap(), 218.5) && close(band.max.unwrap(), 241.5),
        "{band:?}"
    );
    assert!(close(band.marginal_min.unwrap(), 220.8), "{band:?}");
    assert!(close(band.marginal_max.unwrap(), 239.2), "{band:?}");
    let pct = ran.measurement("power vs rated");
    assert_eq!(pct.unit, "%");
    assert!(close(pct.value.unwrap(), 100.0 * ran.value("power") / 9.5));
    assert_eq!(
        ran.outcome.verdict,
        RunVerdict::Pass,
        "{:?}",
        ran.detail.steps
    );
}
