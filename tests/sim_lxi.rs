//! The simulated bench's VXI-11 and HiSLIP endpoints (`SimBenchConfig::vxi11_port` /
//! `hislip_port`, what `labgate sim --vxi11-port --hislip-port` serves) through labgate's own
//! vxi11 and hislip links and the shipped drivers: every instrument under its device name and
//! sub-address, one lamp across VXI-11, HiSLIP and raw TCP, faults per instrument on every
//! transport. The VXI-11 and HiSLIP links come from the ready-to-copy config in docs/links.md.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BOUND, docs_sim_lxi_config, quick_plant, sim_gateway_with, wait_connected};
use labgate::gateway::Gateway;
use labgate::instrument::Instrument;
use labgate::reading::{Reading, Value};
use labgate::sim::bench::{BenchFaults, HISLIP_DEVICES, SimBench, SimBenchConfig, VXI11_DEVICES};
use labgate::sim::fault::Faults;
use tempfile::TempDir;
use tokio::time::timeout;

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn find<'a>(r: &'a [Reading], q: &str) -> &'a Value {
    &r.iter()
        .find(|x| x.quantity == q)
        .unwrap_or_else(|| panic!("no {q} in {r:?}"))
        .value
}

fn number(r: &[Reading], q: &str) -> f64 {
    match find(r, q) {
        Value::Number(v) => *v,
        other => panic!("{q} is not a number: {other:?}"),
    }
}

fn boolean(r: &[Reading], q: &str) -> bool {
    match find(r, q) {
        Value::Bool(b) => *b,
        other => panic!("{q} is not a bool: {other:?}"),
    }
}

/// The sphere and the logger on both protocols (the docs block has the analyzer and source).
fn sphere_and_logger(portmap: u16, hislip: u16) -> String {
    let mut s = String::new();
    for (name, driver, index, timeout) in [
        ("sphere", "labgate-sim-sphere", 2, "5s"),
        ("tc", "keysight-34970a", 3, "2s"),
    ] {
        s.push_str(&format!(
            "[links.vxi_{name}]\nprotocol = \"scpi\"\nkind = \"vxi11\"\nhost = \"127.0.0.1\"\n\
             portmap_port = {portmap}\ndevice = \"{vxi}\"\ntimeout = \"{timeout}\"\n\n\
             [links.hislip_{name}]\nprotocol = \"scpi\"\nkind = \"hislip\"\nhost = \"127.0.0.1\"\n\
             port = {hislip}\ndevice = \"{hs}\"\ntimeout = \"{timeout}\"\n\n\
             [instruments.{name}_vxi]\ndriver = \"{driver}\"\nlink = \"vxi_{name}\"\n\n\
             [instruments.{name}_hislip]\ndriver = \"{driver}\"\nlink = \"hislip_{name}\"\n\n",
            vxi = VXI11_DEVICES[index],
            hs = HISLIP_DEVICES[index],
        ));
    }
    s
}

/// A bench serving VXI-11 and HiSLIP on ephemeral ports, and a gateway with the raw-TCP demo
/// instruments (pa1, src1, ...), the docs block (pa_vxi, src_vxi, pa_hislip, src_hislip) and
/// the sphere and logger over both protocols.
async fn lxi_bench(faults: BenchFaults) -> (SimBench, Gateway, TempDir) {
    sim_gateway_with(
        SimBenchConfig {
            vxi11_port: Some(0),
            hislip_port: Some(0),
            faults,
            plant: quick_plant(),
            ..SimBenchConfig::ephemeral()
        },
        |bench, _| {
            let portmap = bench.vxi11.expect("vxi-11 served").portmap.port();
            let hislip = bench.hislip.expect("hislip served").port();
            let mut text = docs_sim_lxi_config(portmap, hislip);
            text.push('\n');
            text.push_str(&sphere_and_logger(portmap, hislip));
            text
        },
    )
    .await
}

fn inst<'a>(gw: &'a Gateway, id: &str) -> &'a Instrument {
    gw.instrument(id)
        .unwrap_or_else(|| panic!("no instrument {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instrument_answers_under_its_device_name_and_sub_address() {
    let (bench, gw, _dir) = lxi_bench(BenchFaults::default()).await;
    let v = bench.vxi11.unwrap();
    let h = bench.hislip.unwrap();
    assert_ne!(v.portmap, v.core);
    let text = bench.describe();
    for needle in [
        format!("portmapper {}  core {}", v.portmap, v.core),
        "analyzer inst0, source inst1, sphere inst2, logger inst3".to_string(),
        format!("tcp   {h}"),
        "analyzer hislip0, source hislip1, sphere hislip2, logger hislip3".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle:?} not in:\n{text}");
    }

    // The link's identity is the instrument's *IDN? reply: each name reaches the right one.
    for (link, idn) in [
        ("vxi_pa", "YOKOGAWA"),
        ("vxi_src", "Chroma"),
        ("vxi_sphere", "SIM-SPHERE"),
        ("vxi_tc", "34970A"),
        ("hislip_pa", "YOKOGAWA"),
        ("hislip_src", "Chroma"),
        ("hislip_sphere", "SIM-SPHERE"),
        ("hislip_tc", "34970A"),
    ] {
        let status = wait_connected(&gw.links[link]).await;
        let got = status.identity.unwrap_or_default();
        assert!(got.contains(idn), "{link}: identity {got:?}, wanted {idn}");
    }
    let r = timeout(BOUND, inst(&gw, "tc_hislip").read(&["tc_101"]))
        .await
        .unwrap()
        .unwrap();
    assert!(number(&r, "tc_101").is_finite(), "{r:?}");
    let r = timeout(BOUND, inst(&gw, "sphere_vxi").measure("spectrum"))
        .await
        .unwrap()
        .unwrap();
    assert!(number(&r, "flux") >= 0.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_switched_over_one_transport_lights_the_lamp_seen_over_the_others() {
    let (bench, gw, _dir) = lxi_bench(BenchFaults::default()).await;
    let (pa_hislip, pa_vxi, pa_tcp) = (
        inst(&gw, "pa_hislip"),
        inst(&gw, "pa_vxi"),
        inst(&gw, "pa1"),
    );
    let (src_vxi, src_hislip, src_tcp) = (
        inst(&gw, "src_vxi"),
        inst(&gw, "src_hislip"),
        inst(&gw, "src1"),
    );

    let r = timeout(BOUND, pa_hislip.read(&["power"]))
        .await
        .unwrap()
        .unwrap();
    assert!(number(&r, "power").abs() < 0.5, "lamp off: {r:?}");

    // On over VXI-11.
    src_vxi
        .act("set_voltage", &args(&[("volts", "230")]))
        .await
        .unwrap();
    src_vxi
        .act("output", &args(&[("on", "true")]))
        .await
        .unwrap();
    assert!(bench.plant.output_on());
    for src in [src_hislip, src_tcp] {
        let r = src.read(&["output", "voltage_setpoint"]).await.unwrap();
        assert!(boolean(&r, "output"), "{r:?}");
        assert_eq!(number(&r, "voltage_setpoint"), 230.0);
    }

    // The lamp warms up (tau 500 ms) as read over HiSLIP...
    let deadline = tokio::time::Instant::now() + BOUND;
    let power = loop {
        let r = pa_hislip.read(&["voltage", "power"]).await.unwrap();
        let p = number(&r, "power");
        if p > 5.0 {
            assert!((220.0..240.0).contains(&number(&r, "voltage")), "{r:?}");
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "power stayed at {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(power < 20.0, "a 9.5 W lamp, got {power}");
    // ...and over VXI-11 and raw TCP.
    for pa in [pa_vxi, pa_tcp] {
        let r = pa.read(&["power"]).await.unwrap();
        assert!(number(&r, "power") > 5.0, "{r:?}");
    }

    // Off over HiSLIP: VXI-11 sees it, and the lamp goes dark.
    src_hislip
        .act("output", &args(&[("on", "false")]))
        .await
        .unwrap();
    assert!(!bench.plant.output_on());
    let r = src_vxi.read(&["output"]).await.unwrap();
    assert!(!boolean(&r, "output"), "{r:?}");
    let r = pa_vxi.read(&["power"]).await.unwrap();
    assert!(number(&r, "power").abs() < 0.5, "lamp off again: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instruments_faults_follow_it_onto_vxi11_and_hislip() {
    let silent = Faults {
        silent: true,
        ..Faults::default()
    };
    let (_bench, gw, _dir) = lxi_bench(BenchFaults {
        ac_source: silent,
        ..BenchFaults::default()
    })
    .await;
    // The analyzer is not faulted: it answers on both protocols.
    for pa in ["pa_vxi", "pa_hislip"] {
        let r = timeout(BOUND, inst(&gw, pa).read(&["voltage"]))
            .await
            .unwrap()
            .unwrap();
        assert!(number(&r, "voltage").is_finite(), "{pa}: {r:?}");
    }
    // The silent source answers nothing on either: its identity query goes unanswered, so
    // its links never come up (VXI-11 turns its I/O timeout, error 15, into the same timeout).
    for (src, link) in [("src_vxi", "vxi_src"), ("src_hislip", "hislip_src")] {
        let e = timeout(BOUND, inst(&gw, src).read(&["output"]))
            .await
            .expect("bounded by the link timeout")
            .expect_err("a silent source");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("link {link}")) && msg.contains("`*IDN?`: no reply within"),
            "{src}: {msg}"
        );
    }
}
