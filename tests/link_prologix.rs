//! Prologix GPIB adapters end to end: config -> gateway -> instruments at GPIB addresses on one
//! prologix link -> the simulated adapter (src/sim/prologix.rs) -> the simulated instruments.
//! GPIB-Ethernet over loopback TCP, GPIB-USB over a real pseudo-terminal.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{BOUND, load_config, start_bench, test_dir, until_ok, wait_connected};
use labgate::gateway::Gateway;
use labgate::reading::{Reading, Value};
use labgate::sim::bench::{GPIB_ADDRESSES, SimBench, SimBenchConfig};
use labgate::sim::plant::{Plant, PlantConfig};
use labgate::sim::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
use labgate::sim::prologix::{self, Bus, PrologixStats};

fn number(r: &[Reading]) -> f64 {
    match r[0].value {
        Value::Number(v) => v,
        ref other => panic!("{} is not a number: {other:?}", r[0].quantity),
    }
}

fn config(dir: &Path, link: &str, instruments: &str) -> String {
    format!(
        r#"[paths]
drivers = ["{repo}"]
data = "{data}"

[links.gpib]
protocol = "scpi"
{link}
timeout = "600ms"
backoff_initial = "50ms"
backoff_max = "300ms"

{instruments}
"#,
        repo = common::drivers_dir().display(),
        data = dir.join("data").display(),
    )
}

async fn bench_with_adapter() -> SimBench {
    start_bench(SimBenchConfig {
        prologix_port: Some(0),
        plant: common::quick_plant(),
        ..SimBenchConfig::ephemeral()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpib_instruments_share_one_adapter_and_addresses_switch_only_on_change() {
    let bench = bench_with_adapter().await;
    let port = bench.prologix.unwrap().port();
    let [pa_addr, src_addr, ..] = GPIB_ADDRESSES;
    let dir = test_dir();
    let text = config(
        dir.path(),
        &format!("kind = \"prologix\"\nhost = \"127.0.0.1\"\nport = {port}"),
        &format!(
            "[instruments.pa1]\ndriver = \"yokogawa-wt310e\"\nlink = \"gpib\"\naddress = {pa_addr}\n\n\
             [instruments.src1]\ndriver = \"chroma-61500\"\nlink = \"gpib\"\naddress = {src_addr}\n"
        ),
    );
    let gw = Gateway::start(&load_config(dir.path(), &text));
    let status = wait_connected(&gw.links["gpib"]).await;
    assert!(
        status
            .identity
            .as_deref()
            .unwrap_or("")
            .contains("Prologix"),
        "the adapter's ++ver is the link identity: {status:?}"
    );
    let pa = gw.instrument("pa1").unwrap();
    let src = gw.instrument("src1").unwrap();

    // Writes with a `+` in the data (escaped on the wire) reach the right instrument.
    tokio::time::timeout(BOUND, src.scpi_raw(":SOUR:VOLT:AC +1.2E+02"))
        .await
        .unwrap()
        .unwrap();
    let v = tokio::time::timeout(BOUND, src.read(&["voltage_setpoint"]))
        .await
        .unwrap()
        .unwrap();
    assert!((number(&v) - 120.0).abs() < 1e-6, "{v:?}");
    let idn = src.scpi_raw("*IDN?").await.unwrap().unwrap();
    assert!(idn.to_uppercase().contains("CHROMA"), "{idn}");
    let idn = pa.scpi_raw("*IDN?").await.unwrap().unwrap();
    assert!(idn.to_uppercase().contains("YOKOGAWA"), "{idn}");

    // Now at the analyzer: pa, pa, src, src, pa is exactly two switches.
    let before = bench
        .prologix_stats
        .address_switches
        .load(Ordering::Relaxed);
    for inst in [pa, pa, src, src, pa] {
        let r = tokio::time::timeout(BOUND, inst.read(&["voltage"]))
            .await
            .unwrap()
            .unwrap();
        assert!(number(&r).is_finite());
    }
    let after = bench
        .prologix_stats
        .address_switches
        .load(Ordering::Relaxed);
    assert_eq!(after - before, 2, "++addr only when the address changes");
    assert_eq!(
        bench.prologix_stats.connections.load(Ordering::Relaxed),
        1,
        "both instruments use one adapter connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_instrument_and_silent_adapter_are_told_apart() {
    let bench = bench_with_adapter().await;
    let port = bench.prologix.unwrap().port();
    let dir = test_dir();
    let text = config(
        dir.path(),
        &format!("kind = \"prologix\"\nhost = \"127.0.0.1\"\nport = {port}"),
        &format!(
            "[instruments.pa1]\ndriver = \"yokogawa-wt310e\"\nlink = \"gpib\"\naddress = {}\n\n\
             [instruments.ghost]\ndriver = \"yokogawa-wt310e\"\nlink = \"gpib\"\naddress = 12\nskip_identity = true\n",
            GPIB_ADDRESSES[0]
        ),
    );
    let gw = Gateway::start(&load_config(dir.path(), &text));
    wait_connected(&gw.links["gpib"]).await;
    let ghost = gw.instrument("ghost").unwrap();
    let pa = gw.instrument("pa1").unwrap();

    let err = tokio::time::timeout(BOUND, ghost.scpi_raw("*IDN?"))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no instrument listening at GPIB address 12"),
        "{err}"
    );
    // The adapter and the other instrument are fine: the link comes back and pa1 answers.
    let (idn, _) = until_ok(|| pa.scpi_raw("*IDN?")).await;
    assert!(idn.unwrap().to_uppercase().contains("YOKOGAWA"));

    bench.prologix_stats.silent.store(true, Ordering::Relaxed);
    let err = tokio::time::timeout(BOUND, pa.scpi_raw("*IDN?"))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("prologix adapter not answering"), "{err}");
    bench.prologix_stats.silent.store(false, Ordering::Relaxed);
    let (r, _) = until_ok(|| pa.read(&["voltage"])).await;
    assert!(number(&r).is_finite());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpib_usb_adapter_on_a_pseudo_terminal() {
    let plant = Plant::new(PlantConfig::default());
    let analyzer = PowerAnalyzer::new(plant, PowerAnalyzerConfig::default());
    let stats = Arc::new(PrologixStats::default());
    let bus = move || -> Bus {
        let mut b: Bus = BTreeMap::new();
        b.insert(22, Box::new(analyzer.clone()));
        b
    };
    let (path, task) = prologix::serve_pty(bus, Default::default(), stats.clone()).unwrap();
    let dir = test_dir();
    let text = config(
        dir.path(),
        &format!(
            "kind = \"prologix_serial\"\ndevice = \"{}\"",
            path.display()
        ),
        "[instruments.pa1]\ndriver = \"yokogawa-wt310e\"\nlink = \"gpib\"\naddress = 22\n",
    );
    let gw = Gateway::start(&load_config(dir.path(), &text));
    let status = wait_connected(&gw.links["gpib"]).await;
    assert!(
        status
            .identity
            .as_deref()
            .unwrap_or("")
            .contains("GPIB-USB"),
        "{status:?}"
    );
    let pa = gw.instrument("pa1").unwrap();
    for _ in 0..3 {
        let r = tokio::time::timeout(BOUND, pa.read(&["voltage", "current"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.len(), 2);
    }
    assert!(stats.reads.load(Ordering::Relaxed) >= 3);
    assert_eq!(stats.address_switches.load(Ordering::Relaxed), 1);
    task.abort();
}
