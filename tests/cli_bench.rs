//! The `labgate` binary against a simulated bench started in this test process on ephemeral
//! ports, through a config file in a tempdir: output formats, exit codes and error messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{BOUND, Ports, bench_toml, labgate_bin, start_bench, test_dir};
use labgate::sim::bench::{SimBench, SimBenchConfig};
use labgate::sim::modbus::SimDevice;
use tempfile::TempDir;

/// Run the binary (bounded) with `--config` when given, never inheriting a config from the
/// environment.
async fn labgate(config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(labgate_bin());
    cmd.env_remove("LABGATE_CONFIG")
        .env_remove("LABGATE_LOG")
        .kill_on_drop(true);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(args);
    tokio::time::timeout(BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("labgate {args:?} did not finish"))
        .expect("run labgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got success\nstdout: {}",
        stdout(o)
    );
    stderr(o)
}

/// `name = <number> <unit>` for every line naming `name`; returns the number.
fn value_line(out: &str, name: &str, unit: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("no `{name} = ` line in {out:?}"));
    let rest = line.strip_prefix(&format!("{name} = ")).unwrap();
    let num = if unit.is_empty() {
        rest
    } else {
        rest.strip_suffix(&format!(" {unit}"))
            .unwrap_or_else(|| panic!("`{line}` does not end in the unit {unit}"))
    };
    num.parse()
        .unwrap_or_else(|_| panic!("`{line}`: {num:?} is not a number"))
}

async fn bench_and_config() -> (SimBench, TempDir, PathBuf) {
    let bench = start_bench(SimBenchConfig::ephemeral()).await;
    let dir = test_dir();
    let path = dir.path().join("labgate.toml");
    std::fs::write(&path, bench_toml(&Ports::of(&bench), dir.path())).unwrap();
    (bench, dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_embedded_demo_and_a_good_file() {
    let out = ok(&labgate(None, &["check"]).await);
    assert!(out.starts_with("ok: 5 links, 7 instruments"), "{out}");
    let (_bench, _dir, path) = bench_and_config().await;
    let out = ok(&labgate(Some(&path), &["check"]).await);
    assert!(out.starts_with("ok: 5 links, 7 instruments"), "{out}");
    assert!(out.contains("labgate.toml"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_reports_every_problem_with_its_position() {
    let dir = test_dir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"[paths]
drivers = ["{}"]

[links.a]
protocol = "scpi"
kind = "tcp"
host = "127.0.0.1"
port = "five"

[instruments.x]
driver = "no-such-driver"
link = "a"

[instruments.y]
driver = "yokogawa-wt310e"
link = "nowhere"
"#,
            common::drivers_dir().display()
        ),
    )
    .unwrap();
    for args in [&["check"][..], &["read", "x", "voltage"][..]] {
        let o = labgate(Some(&path), args).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        let file = path.display().to_string();
        assert!(
            err.contains(&format!("{file}:8:8: links.a.port")),
            "port at line 8: {err}"
        );
        assert!(
            err.contains(&format!("{file}:11:10: instruments.x.driver")),
            "driver at line 11: {err}"
        );
        assert!(err.contains("no-such-driver"), "{err}");
        assert!(
            err.contains(&format!("{file}:16:8: instruments.y.link")),
            "link at line 16: {err}"
        );
        assert!(err.contains("nowhere"), "{err}");
        assert!(err.contains("3 problem(s)"), "{err}");
        assert!(stdout(&o).is_empty());
    }
    let missing = dir.path().join("missing.toml");
    let o = labgate(Some(&missing), &["check"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(failed(&o).contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_prints_quantity_value_unit() {
    let (_bench, _dir, path) = bench_and_config().await;
    let c = Some(path.as_path());
    let out = ok(&labgate(c, &["read", "pa1", "voltage"]).await);
    assert_eq!(out.lines().count(), 1, "{out}");
    value_line(&out, "voltage", "V");

    let out = ok(&labgate(c, &["read", "pa1", "voltage", "current", "power_factor"]).await);
    value_line(&out, "voltage", "V");
    value_line(&out, "current", "A");
    assert!(
        out.lines().any(|l| l == "power_factor = <no data: NAN>"),
        "an invalid reading is never a number: {out}"
    );
    let out = ok(&labgate(c, &["read", "tc1", "tc_101", "tc_104"]).await);
    let t = value_line(&out, "tc_101", "degC");
    assert!((10.0..40.0).contains(&t));
    assert!(
        out.lines()
            .any(|l| l.starts_with("tc_104 = <open sensor: ") && l.ends_with("> degC")),
        "{out}"
    );
    let out = ok(&labgate(c, &["read", "chamber1", "temperature"]).await);
    value_line(&out, "temperature", "degC");

    let out = ok(&labgate(c, &["read", "pa1", "voltage", "--json"]).await);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["quantity"], "voltage");
    assert_eq!(v[0]["unit"], "V");
    assert_eq!(v[0]["value"]["type"], "number");

    let err = failed(&labgate(c, &["read", "nosuch", "voltage"]).await);
    assert!(err.contains("no instrument `nosuch`"), "{err}");
    assert!(err.contains("pa1"), "known instruments listed: {err}");
    let err = failed(&labgate(c, &["read", "pa1", "nonsense"]).await);
    assert!(err.contains("unknown quantity `nonsense`"), "{err}");
    assert!(err.contains("voltage"), "known quantities listed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_measure_and_raw_scpi() {
    let (bench, _dir, path) = bench_and_config().await;
    let c = Some(path.as_path());
    let out = ok(&labgate(c, &["act", "src1", "set_voltage", "volts=230"]).await);
    assert_eq!(out.trim(), "ok");
    assert_eq!(bench.plant.source().voltage_v, 230.0);

    let o = labgate(c, &["act", "src1", "set_voltage", "volts=400"]).await;
    let err = failed(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("out of range"), "{err}");
    assert!(err.contains("volts"), "{err}");
    assert_eq!(bench.plant.source().voltage_v, 230.0, "nothing was sent");
    let o = labgate(c, &["act", "src1", "set_voltage", "volts"]).await;
    assert!(failed(&o).contains("not key=value"));
    let err = failed(&labgate(c, &["act", "src1", "explode"]).await);
    assert!(err.contains("unknown action `explode`"), "{err}");

    ok(&labgate(c, &["act", "src1", "output", "on=true"]).await);
    assert!(bench.plant.output_on());

    let out = ok(&labgate(c, &["measure", "sphere1", "spectrum"]).await);
    let flux = value_line(&out, "flux", "lm");
    assert!(flux > 100.0, "{out}");
    value_line(&out, "cct", "K");
    let spd = out
        .lines()
        .find(|l| l.starts_with("spd = ["))
        .expect("spd line");
    assert!(spd.ends_with("] W/nm"), "{spd}");
    assert_eq!(spd.matches(',').count(), 400, "401 values");

    let out = ok(&labgate(c, &["scpi", "pa1", "*IDN?"]).await);
    assert!(out.starts_with("YOKOGAWA,WT310E"), "{out}");
    let out = ok(&labgate(c, &["scpi", "src1", ":SOUR:VOLT:AC 120"]).await);
    assert_eq!(out.trim(), "ok");
    assert_eq!(bench.plant.source().voltage_v, 120.0);
    let out = ok(&labgate(c, &["scpi", "src1", ":SOUR:VOLT:AC?"]).await);
    assert!(out.trim().parse::<f64>().unwrap() == 120.0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_with_a_position_and_an_enum_choice() {
    let (bench, _dir, path) = bench_and_config().await;
    let c = Some(path.as_path());
    let relays = || -> Vec<u16> {
        match bench.modbus_devices.device(3) {
            Some(SimDevice::RelayRack(r)) => {
                (1..=16).filter(|&n| r.relay(n) == Some(true)).collect()
            }
            other => panic!("unit 3 is {other:?}"),
        }
    };
    let out = ok(&labgate(c, &["act", "rack1", "relay_on", "position=5"]).await);
    assert_eq!(out.trim(), "ok");
    ok(&labgate(c, &["act", "rack1", "relay_on", "position=16"]).await);
    assert_eq!(relays(), vec![5u16, 16]);
    let out = ok(&labgate(c, &["read", "rack1", "relay_05", "relay_06"]).await);
    assert_eq!(out, "relay_05 = true\nrelay_06 = false\n");
    ok(&labgate(c, &["act", "rack1", "relay_off", "position=5"]).await);
    assert_eq!(relays(), vec![16u16]);

    let o = labgate(c, &["act", "rack1", "relay_on", "position=17"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = failed(&o);
    for part in ["rack1", "relay_on", "position", "out of range 1..16"] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    assert_eq!(relays(), vec![16u16], "nothing was sent");

    let chamber_mode = || match bench.modbus_devices.device(1) {
        Some(SimDevice::Chamber(ch)) => ch.mode(),
        other => panic!("unit 1 is {other:?}"),
    };
    ok(&labgate(c, &["act", "chamber1", "set_mode", "mode=manual"]).await);
    assert_eq!(chamber_mode(), 54);
    let out = ok(&labgate(c, &["read", "chamber1", "mode"]).await);
    assert_eq!(out.trim(), "mode = 54");
    let err = failed(&labgate(c, &["act", "chamber1", "set_mode", "mode=standby"]).await);
    for part in [
        "chamber1",
        "set_mode",
        "mode",
        "not one of auto, manual, off",
    ] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
    assert_eq!(chamber_mode(), 54, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_read_and_write() {
    let (bench, _dir, path) = bench_and_config().await;
    let c = Some(path.as_path());
    let out = ok(&labgate(
        c,
        &[
            "modbus", "chamber1", "write", "holding", "2782", "31.5", "--type", "f32", "--order",
            "CDAB",
        ],
    )
    .await);
    assert_eq!(out.trim(), "ok");
    match bench.modbus_devices.device(1) {
        Some(SimDevice::Chamber(ch)) => assert_eq!(ch.setpoint(), 31.5),
        other => panic!("unit 1 is {other:?}"),
    }
    let out = ok(&labgate(
        c,
        &[
            "modbus", "chamber1", "read", "holding", "2782", "--type", "f32", "--order", "CDAB",
        ],
    )
    .await);
    assert!(out.starts_with("2782 = 31.5  (raw ["), "{out}");

    // The rack numbers from 1: coil 2 on the command line is protocol address 1.
    ok(&labgate(c, &["modbus", "rack1", "write", "coil", "2", "on"]).await);
    let out = ok(&labgate(c, &["modbus", "rack1", "read", "coil", "1", "3"]).await);
    assert_eq!(out, "1 = 0\n2 = 1\n3 = 0\n");
    let out = ok(&labgate(c, &["read", "rack1", "relay_02"]).await);
    assert_eq!(out.trim(), "relay_02 = true");

    let o = labgate(c, &["modbus", "ctrl1", "write", "holding", "5", "1"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = failed(&o);
    assert!(err.contains("illegal data address"), "{err}");
    assert!(err.contains("ctrl1"), "{err}");
    let err = failed(&labgate(c, &["modbus", "rack1", "write", "input", "1", "5"]).await);
    assert!(err.contains("read-only"), "{err}");
}
