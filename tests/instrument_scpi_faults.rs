//! The SCPI fault matrix through the gateway against the simulated power analyzer: a delayed,
//! dropping, silent or babbling instrument, over loopback TCP and over a pseudo-terminal. Each
//! fault gives a typed error within its bound, never a hang, a panic or a misattributed reply,
//! and the link recovers once the instrument behaves.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    BOUND, Ports, Switch, bench_toml, load_config, start_bench, test_dir, wait_connected,
};
use labgate::gateway::Gateway;
use labgate::instrument::{Instrument, InstrumentError};
use labgate::link::{LinkError, LinkState, ScpiStep};
use labgate::reading::{Reading, Value};
use labgate::sim::bench::{BenchFaults, SimBench, SimBenchConfig};
use labgate::sim::fault::Faults;
use tempfile::TempDir;

fn analyzer_faults(faults: Faults) -> SimBenchConfig {
    SimBenchConfig {
        faults: BenchFaults {
            power_analyzer: faults,
            ..BenchFaults::default()
        },
        ..SimBenchConfig::ephemeral()
    }
}

fn link_error(e: &InstrumentError) -> &LinkError {
    e.link_error()
        .unwrap_or_else(|| panic!("expected a link error, got {e:?}"))
}

fn number(r: &[Reading]) -> f64 {
    match r[0].value {
        Value::Number(v) => v,
        ref other => panic!("not a number: {other:?}"),
    }
}

/// Read the voltage, retrying (bounded) only while the link is down or the connection just
/// broke: any other error, a parse error from a misattributed reply above all, fails the test.
/// Returns the volts and how many attempts failed.
async fn voltage_after_recovery(inst: &Instrument) -> (f64, usize) {
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut failed = 0;
    loop {
        match tokio::time::timeout(BOUND, inst.read(&["voltage"]))
            .await
            .expect("a read is bounded")
        {
            Ok(r) => return (number(&r), failed),
            Err(e) => {
                assert!(
                    matches!(
                        e.link_error(),
                        Some(LinkError::Down { .. } | LinkError::Io { .. })
                    ),
                    "only a down link or a broken connection may fail here: {e:?}"
                );
                failed += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
}

/// After the switch: a link may still hold a connection to the faulty analyzer, which the next
/// request finds out (and drops); the one after that connects to the healthy one.
async fn settle_on_healthy(inst: &Instrument) {
    let _ = tokio::time::timeout(BOUND, inst.read(&["voltage"]))
        .await
        .expect("a read is bounded");
}

/// The extra link `pa_noid` (identity check skipped, so a misbehaving analyzer still gets
/// connected and the query itself fails) on `port`.
fn noid_link(port: u16) -> String {
    format!(
        "[links.pa_noid]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         backoff_initial = \"50ms\"\nbackoff_max = \"300ms\"\n\n\
         [instruments.pa_noid]\ndriver = \"yokogawa-wt310e\"\nlink = \"pa_noid\"\nskip_identity = true\n"
    )
}

/// A healthy bench, one whose analyzer misbehaves, and a switch in front of the two analyzers
/// (starting on the faulty one) that `pa1` and `pa_noid` connect through.
struct Case {
    _healthy: SimBench,
    _faulty: SimBench,
    switch: Switch,
    gw: Gateway,
    _dir: TempDir,
}

async fn tcp_case(faults: Faults) -> Case {
    let healthy = start_bench(SimBenchConfig::ephemeral()).await;
    let faulty = start_bench(analyzer_faults(faults)).await;
    let switch = Switch::start(vec![faulty.power_analyzer, healthy.power_analyzer]).await;
    let dir = test_dir();
    let ports = Ports {
        power_analyzer: switch.port(),
        ..Ports::of(&healthy)
    };
    let mut text = bench_toml(&ports, dir.path());
    text.push_str(&noid_link(switch.port()));
    let gw = Gateway::start(&load_config(dir.path(), &text));
    Case {
        _healthy: healthy,
        _faulty: faulty,
        switch,
        gw,
        _dir: dir,
    }
}

fn query(text: &str, timeout: Duration) -> Vec<ScpiStep> {
    vec![ScpiStep::Query {
        text: text.into(),
        timeout,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_delay_beyond_the_timeout() {
    let c = tcp_case(Faults {
        delay: Some(Duration::from_millis(700)),
        ..Faults::default()
    })
    .await;
    let pa = &c.gw.instruments["pa1"];
    let link = &c.gw.links["pa_link"];
    // The driver's 2 s timeout covers a 700 ms delay.
    let (v, _) = voltage_after_recovery(pa).await;
    assert!(v.abs() < 1.0, "source off: {v}");

    let e = link
        .scpi(query("*IDN?", Duration::from_millis(200)))
        .await
        .unwrap_err();
    match &e {
        LinkError::Timeout {
            request, timeout, ..
        } => {
            assert_eq!(request, "*IDN?");
            assert_eq!(*timeout, Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("*IDN?"), "{e}");
    // The identity reply arrives late on the old connection; the next read must not see it.
    let (v, _) = voltage_after_recovery(pa).await;
    assert!(v.abs() < 1.0);
    assert!(link.status().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_drop_after_n_requests() {
    // Init (14 lines) and *IDN? take 15 requests of each connection: two reads fit before the
    // analyzer hangs up.
    let c = tcp_case(Faults {
        drop_after: Some(17),
        ..Faults::default()
    })
    .await;
    let pa = &c.gw.instruments["pa1"];
    let mut failures = 0;
    for _ in 0..8 {
        let (v, failed) = voltage_after_recovery(pa).await;
        assert!(v.abs() < 1.0);
        failures += failed;
    }
    let s = c.gw.links["pa_link"].status();
    assert!(failures >= 1);
    assert!(s.reconnects >= 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_silent_instrument() {
    let c = tcp_case(Faults {
        silent: true,
        ..Faults::default()
    })
    .await;
    // With the identity check, the link never gets connected: the read says why.
    let e = tokio::time::timeout(BOUND, c.gw.instruments["pa1"].read(&["voltage"]))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Down { .. }), "{e:?}");
    assert!(e.to_string().contains("no reply"), "{e}");
    // Without it, the query times out, naming it.
    let e = tokio::time::timeout(BOUND, c.gw.instruments["pa_noid"].read(&["voltage"]))
        .await
        .expect("bounded")
        .unwrap_err();
    match link_error(&e) {
        LinkError::Timeout { request, .. } => {
            assert_eq!(request, ":NUMeric:NORMal:VALue? 1")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    c.switch.select(1);
    settle_on_healthy(&c.gw.instruments["pa_noid"]).await;
    voltage_after_recovery(&c.gw.instruments["pa1"]).await;
    voltage_after_recovery(&c.gw.instruments["pa_noid"]).await;
    let s = wait_connected(&c.gw.links["pa_link"]).await;
    assert!(s.identity.unwrap().contains("YOKOGAWA"));
    assert!(c.gw.links["pa_noid"].status().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_garbage_replies() {
    let c = tcp_case(Faults {
        garbage: true,
        ..Faults::default()
    })
    .await;
    let e = tokio::time::timeout(BOUND, c.gw.instruments["pa1"].read(&["voltage"]))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Down { .. }), "{e:?}");
    assert!(e.to_string().contains("identity"), "{e}");
    for _ in 0..3 {
        let e = tokio::time::timeout(BOUND, c.gw.instruments["pa_noid"].read(&["voltage"]))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(
            matches!(
                link_error(&e),
                LinkError::Mismatch { .. } | LinkError::Down { .. }
            ),
            "{e:?}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(c.gw.links["pa_noid"].status().requests_failed >= 3);

    c.switch.select(1);
    settle_on_healthy(&c.gw.instruments["pa_noid"]).await;
    voltage_after_recovery(&c.gw.instruments["pa_noid"]).await;
    voltage_after_recovery(&c.gw.instruments["pa1"]).await;
    assert_eq!(c.gw.links["pa_link"].status().state, LinkState::Connected);
}

// --- over a pseudo-terminal ---------------------------------------------------------------

/// A bench serving its instruments on pseudo-terminals too, and a gateway whose analyzer link
/// is a serial port on the analyzer's pty (one client per pty: a tty has one reader).
async fn pty_case(faults: Faults, skip_identity: bool) -> (SimBench, Gateway, TempDir) {
    let bench = start_bench(SimBenchConfig {
        pty: true,
        ..analyzer_faults(faults)
    })
    .await;
    let dir = test_dir();
    let text = pty_toml(&bench, dir.path(), skip_identity);
    let gw = Gateway::start(&load_config(dir.path(), &text));
    (bench, gw, dir)
}

fn pty_toml(bench: &SimBench, dir: &Path, skip_identity: bool) -> String {
    let ptys = bench.ptys.as_ref().expect("bench serves ptys");
    format!(
        r#"[paths]
drivers = ["{drivers}"]
data = "{data}"

[links.pa_pty]
protocol = "scpi"
kind = "serial"
device = "{pa}"
baud = 115200
backoff_initial = "50ms"
backoff_max = "300ms"

[links.src_pty]
protocol = "scpi"
kind = "serial"
device = "{src}"
baud = 115200

[instruments.pa1]
driver = "yokogawa-wt310e"
link = "pa_pty"
skip_identity = {skip_identity}

[instruments.src1]
driver = "chroma-61500"
link = "src_pty"
"#,
        drivers = common::drivers_dir().display(),
        data = dir.join("data").display(),
        pa = ptys.power_analyzer.display(),
        src = ptys.ac_source.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_instruments_read_and_act() {
    let (bench, gw, _dir) = pty_case(Faults::default(), false).await;
    let pa = &gw.instruments["pa1"];
    let src = &gw.instruments["src1"];
    let s = wait_connected(&gw.links["pa_pty"]).await;
    assert!(s.identity.unwrap().contains("WT310"));
    assert!(s.endpoint.contains("115200"), "{}", s.endpoint);
    let mut volts = std::collections::BTreeMap::new();
    volts.insert("volts".to_string(), "230".to_string());
    src.act("set_voltage", &volts).await.unwrap();
    let mut on = std::collections::BTreeMap::new();
    on.insert("on".to_string(), "true".to_string());
    src.act("output", &on).await.unwrap();
    assert!(bench.plant.output_on());
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let r = pa.read(&["voltage", "current", "power"]).await.unwrap();
        let v = match r[0].value {
            Value::Number(v) => v,
            ref o => panic!("{o:?}"),
        };
        if v > 200.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "voltage {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_delay_beyond_the_timeout() {
    let (_bench, gw, _dir) = pty_case(
        Faults {
            delay: Some(Duration::from_millis(500)),
            ..Faults::default()
        },
        false,
    )
    .await;
    let pa = &gw.instruments["pa1"];
    voltage_after_recovery(pa).await;
    let e = gw.links["pa_pty"]
        .scpi(query("*IDN?", Duration::from_millis(150)))
        .await
        .unwrap_err();
    assert!(matches!(e, LinkError::Timeout { .. }), "{e:?}");
    // A pty keeps unread bytes across a reopen: the late identity reply must not become the
    // answer to the next query.
    let (v, _) = voltage_after_recovery(pa).await;
    assert!(v.abs() < 1.0, "{v}");
    let (v, _) = voltage_after_recovery(pa).await;
    assert!(v.abs() < 1.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_drop_silent_garbage() {
    // A pty cannot hang up towards the client: after a "drop" the analyzer just serves again.
    let (_bench, gw, _dir) = pty_case(
        Faults {
            drop_after: Some(17),
            ..Faults::default()
        },
        false,
    )
    .await;
    for _ in 0..5 {
        let (v, _) = voltage_after_recovery(&gw.instruments["pa1"]).await;
        assert!(v.abs() < 1.0);
    }
    drop(gw);

    let (_bench, gw, _dir) = pty_case(
        Faults {
            silent: true,
            ..Faults::default()
        },
        true,
    )
    .await;
    let e = tokio::time::timeout(BOUND, gw.instruments["pa1"].read(&["voltage"]))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Timeout { .. }), "{e:?}");
    drop(gw);

    let (_bench, gw, _dir) = pty_case(
        Faults {
            garbage: true,
            ..Faults::default()
        },
        true,
    )
    .await;
    for _ in 0..2 {
        let e = tokio::time::timeout(BOUND, gw.instruments["pa1"].read(&["voltage"]))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(
            matches!(
                link_error(&e),
                LinkError::Mismatch { .. } | LinkError::Down { .. }
            ),
            "{e:?}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}
