//! The SCPI instruments end to end: config file -> gateway -> instrument -> real link code over
//! loopback TCP -> the coupled simulators. Readings, invalid markers, units, typed actions, the
//! error queue, the identity check, triggered measurements and the plant's coupling.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    BOUND, Ports, Switch, bench_toml, load_config, sim_gateway, sim_gateway_with, start_bench,
    test_dir, wait_connected, wait_status, write_driver,
};
use labgate::gateway::Gateway;
use labgate::instrument::InstrumentError;
use labgate::instrument::args::ArgError;
use labgate::link::{LinkError, LinkState};
use labgate::reading::{InvalidKind, Reading, Value};
use labgate::sim::bench::{BenchFaults, SimBenchConfig};

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(r: &Reading) -> f64 {
    match r.value {
        Value::Number(v) => v,
        ref other => panic!("{} is not a number: {other:?}", r.quantity),
    }
}

fn find<'a>(readings: &'a [Reading], name: &str) -> &'a Reading {
    readings
        .iter()
        .find(|r| r.quantity == name)
        .unwrap_or_else(|| panic!("no reading {name} in {readings:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_quantities_carry_the_driver_units() {
    let (_bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let src = gw.instrument("src1").unwrap();
    let tc = gw.instrument("tc1").unwrap();

    let r = src.read(&["voltage_setpoint"]).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].quantity, "voltage_setpoint");
    assert_eq!(r[0].unit, "V");
    assert!(number(&r[0]) >= 0.0);

    let r = src.read(&["output"]).await.unwrap();
    assert_eq!(
        r[0].value,
        Value::Bool(false),
        "the source starts with its output off"
    );
    assert_eq!(r[0].unit, "");

    let r = tc.read(&["tc_101"]).await.unwrap();
    assert_eq!(r[0].unit, "degC");
    let t = number(&r[0]);
    assert!((10.0..40.0).contains(&t), "room temperature, got {t}");
    assert!(
        r[0].raw.as_deref().unwrap().contains('E'),
        "raw NR3 kept: {:?}",
        r[0].raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_serves_several_quantities_in_one_request() {
    // The analyzer and the logger behind a proxy that counts the request lines they receive.
    let bench = start_bench(SimBenchConfig::ephemeral()).await;
    let pa_proxy = Switch::start(vec![bench.power_analyzer]).await;
    let tc_proxy = Switch::start(vec![bench.logger]).await;
    let dir = test_dir();
    let ports = Ports {
        power_analyzer: pa_proxy.port(),
        logger: tc_proxy.port(),
        ..Ports::of(&bench)
    };
    let gw = Gateway::start(&load_config(dir.path(), &bench_toml(&ports, dir.path())));
    let pa = gw.instrument("pa1").unwrap();
    // The first read also waits for the connection (init and identity lines).
    pa.read(&["voltage"]).await.unwrap();
    let before = pa_proxy.lines_sent();

    let names = [
        "voltage",
        "current",
        "power",
        "power_factor",
        "frequency",
        "current_thd",
    ];
    let r = pa.read(&names).await.unwrap();
    assert_eq!(pa_proxy.lines_sent(), before + 1, "one block query");
    let got: Vec<&str> = r.iter().map(|r| r.quantity.as_str()).collect();
    assert_eq!(got, names, "readings come back in the order asked");
    let units: Vec<&str> = r.iter().map(|r| r.unit.as_str()).collect();
    assert_eq!(units, ["V", "A", "W", "", "Hz", "%"]);

    // Two block fields plus one quantity only a single query serves: two lines.
    let r = pa.read(&["voltage", "current", "energy"]).await.unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(find(&r, "energy").unit, "Wh");
    assert_eq!(pa_proxy.lines_sent(), before + 3);
    // One block field alone goes through its own query.
    pa.read(&["power"]).await.unwrap();
    assert_eq!(pa_proxy.lines_sent(), before + 4);
    // A name asked twice is read once and reported at both places.
    let r = pa.read(&["power", "voltage", "power"]).await.unwrap();
    let got: Vec<&str> = r.iter().map(|r| r.quantity.as_str()).collect();
    assert_eq!(got, ["power", "voltage", "power"]);
    assert_eq!(r[0], r[2]);
    assert_eq!(pa_proxy.lines_sent(), before + 5, "one block query");

    // The logger's scan block: four channels, one line, one of them open.
    let tc = gw.instrument("tc1").unwrap();
    tc.read(&["tc_101"]).await.unwrap();
    let before = tc_proxy.lines_sent();
    let r = tc
        .read(&["tc_101", "tc_102", "tc_103", "tc_104"])
        .await
        .unwrap();
    assert_eq!(tc_proxy.lines_sent(), before + 1);
    assert_eq!(r.len(), 4);
    for q in ["tc_101", "tc_102", "tc_103"] {
        assert!(number(find(&r, q)) > 0.0);
    }
    assert!(find(&r, "tc_104").value.is_invalid());

    // The same list again (the remembered plan), then reversed, then a subset (new plans):
    // every reading in the order asked, one block line each.
    let lists: [&[&str]; 4] = [
        &["tc_101", "tc_102", "tc_103", "tc_104"],
        &["tc_104", "tc_103", "tc_102", "tc_101"],
        &["tc_103", "tc_101"],
        &["tc_104", "tc_103", "tc_102", "tc_101"],
    ];
    for (i, list) in lists.into_iter().enumerate() {
        let before = tc_proxy.lines_sent();
        let r = tc.read(list).await.unwrap();
        let got: Vec<&str> = r.iter().map(|r| r.quantity.as_str()).collect();
        assert_eq!(got, list, "read {i}");
        assert_eq!(tc_proxy.lines_sent(), before + 1, "read {i}");
        assert!(find(&r, "tc_101").value.as_f64().is_some_and(|v| v > 0.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrument_markers_are_invalid_values_never_numbers() {
    let (_bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let pa = gw.instrument("pa1").unwrap();
    // Source off: no current, so the power factor is NAN on the analyzer.
    for names in [&["power_factor"][..], &["voltage", "power_factor"][..]] {
        let r = pa.read(names).await.unwrap();
        let pf = find(&r, "power_factor");
        match &pf.value {
            Value::Invalid { kind, raw } => {
                assert_eq!(*kind, InvalidKind::NoData);
                assert!(raw.contains("NAN"), "raw marker kept: {raw:?}");
            }
            other => panic!("power factor with the source off must be invalid, got {other:?}"),
        }
        assert_eq!(pf.value.as_f64(), None);
    }

    let tc = gw.instrument("tc1").unwrap();
    let r = tc.read(&["tc_104"]).await.unwrap();
    assert!(
        matches!(
            r[0].value,
            Value::Invalid {
                kind: InvalidKind::OpenSensor,
                ..
            }
        ),
        "open thermocouple: {:?}",
        r[0].value
    );
    assert_eq!(r[0].unit, "degC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_check_typed_arguments_before_sending_anything() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let src = gw.instrument("src1").unwrap();
    let link = gw.links.get("src_link").unwrap();
    src.act("set_voltage", &args(&[("volts", "120")]))
        .await
        .unwrap();
    assert_eq!(bench.plant.source().voltage_v, 120.0);
    let r = src.read(&["voltage_setpoint"]).await.unwrap();
    assert_eq!(number(&r[0]), 120.0);

    let before = link.status();
    let e = src
        .act("set_voltage", &args(&[("volts", "400")]))
        .await
        .unwrap_err();
    match &e {
        InstrumentError::Args { source, .. } => {
            assert!(
                matches!(**source, ArgError::OutOfRange { .. }),
                "{source:?}"
            )
        }
        other => panic!("expected an argument error, got {other:?}"),
    }
    assert!(e.to_string().contains("src1"), "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");

    let mut typed = BTreeMap::new();
    typed.insert("volts".to_string(), toml::Value::Float(-5.0));
    let e = src.act_typed("set_voltage", &typed).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");

    let e = src
        .act("set_voltage", &args(&[("volts", "abc")]))
        .await
        .unwrap_err();
    assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
    let e = src
        .act("set_voltage", &args(&[("volt", "100")]))
        .await
        .unwrap_err();
    assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
    let e = src.act("explode", &args(&[])).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Unknown { .. }), "{e:?}");
    let e = src.read(&["nonsense"]).await.unwrap_err();
    assert!(e.to_string().contains("nonsense"), "{e}");

    let after = link.status();
    assert_eq!(after.requests_ok, before.requests_ok, "nothing was sent");
    assert_eq!(after.requests_failed, before.requests_failed);
    assert_eq!(bench.plant.source().voltage_v, 120.0);

    // A bool argument renders with the driver's words.
    src.act("output", &args(&[("on", "true")])).await.unwrap();
    assert!(bench.plant.output_on());
    src.act("output", &args(&[("on", "off")])).await.unwrap();
    assert!(!bench.plant.output_on());
}

const WIDE_CHROMA: &str = r#"
[driver]
name = "test-chroma-wide"
protocol = "scpi"
description = "test only: a Chroma driver whose range allows what the source refuses"

[identity]
query = "*IDN?"
contains = ["CHROMA"]

[scpi]
timeout = "2s"
error_query = "SYST:ERR?"
check_errors = true

[quantities.voltage_setpoint]
unit = "V"
query = ":SOUR:VOLT:AC?"

[actions.set_voltage_wide]
commands = [":SOUR:VOLT:AC {volts}"]
[actions.set_voltage_wide.args.volts]
type = "float"
unit = "V"
min = 0.0
max = 1000.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_instrument_refuses_reports_its_own_error() {
    let (bench, gw, _dir) = sim_gateway_with(SimBenchConfig::ephemeral(), |b, dir| {
        write_driver(dir, "test-chroma-wide.toml", WIDE_CHROMA);
        format!(
            "[links.wide_link]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
             [instruments.wide1]\ndriver = \"test-chroma-wide\"\nlink = \"wide_link\"\n",
            b.ac_source.port()
        )
    })
    .await;
    let wide = gw.instrument("wide1").unwrap();
    wide.act("set_voltage_wide", &args(&[("volts", "200")]))
        .await
        .unwrap();
    let e = wide
        .act("set_voltage_wide", &args(&[("volts", "999")]))
        .await
        .unwrap_err();
    match &e {
        InstrumentError::Refused {
            instrument,
            command,
            code,
            message,
        } => {
            assert_eq!(instrument, "wide1");
            assert!(command.contains("999"), "{command}");
            assert_eq!(*code, -222);
            assert!(message.to_lowercase().contains("range"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(e.to_string().contains("-222"), "{e}");
    // A refusal is not a link failure, and the queue was drained.
    assert_eq!(gw.links["wide_link"].status().state, LinkState::Connected);
    assert!(wide.drain_errors().await.unwrap().is_empty());
    assert_eq!(bench.plant.source().voltage_v, 200.0);
    let r = wide.read(&["voltage_setpoint"]).await.unwrap();
    assert_eq!(number(&r[0]), 200.0);

    // The same through a raw command and an explicit drain.
    let src = gw.instrument("src1").unwrap();
    assert_eq!(src.scpi_raw(":SOUR:VOLT:AC 999").await.unwrap(), None);
    let errors = src.drain_errors().await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, -222);
    assert!(src.drain_errors().await.unwrap().is_empty());
    // An unknown header is refused with -113.
    src.scpi_raw(":BOGUS:CMD 1").await.unwrap();
    let errors = src.drain_errors().await.unwrap();
    assert_eq!(errors.first().map(|e| e.code), Some(-113), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_instrument_on_a_port_fails_the_link() {
    let (_bench, gw, _dir) = sim_gateway_with(SimBenchConfig::ephemeral(), |b, _| {
        format!(
            "[links.wrong_link]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
             [instruments.wrong1]\ndriver = \"chroma-61500\"\nlink = \"wrong_link\"\n",
            b.power_analyzer.port()
        )
    })
    .await;
    let link = &gw.links["wrong_link"];
    let s = wait_status(link, |s| s.state == LinkState::Failed).await;
    let msg = s.last_error.unwrap();
    assert!(msg.contains("wrong instrument"), "{msg}");
    assert!(msg.contains("CHROMA"), "expected named: {msg}");
    assert!(msg.contains("YOKOGAWA"), "got named: {msg}");
    let e = gw
        .instrument("wrong1")
        .unwrap()
        .read(&["voltage"])
        .await
        .unwrap_err();
    assert!(
        matches!(e.link_error(), Some(LinkError::Down { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("wrong instrument"), "{e}");
    // The right driver on the same analyzer is fine.
    wait_connected(&gw.links["pa_link"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sphere_measurement_and_coupling_through_the_plant() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let src = gw.instrument("src1").unwrap();
    let pa = gw.instrument("pa1").unwrap();
    let sphere = gw.instrument("sphere1").unwrap();

    let p = pa.read(&["power"]).await.unwrap();
    assert!(number(&p[0]).abs() < 0.5, "lamp off: {:?}", p[0]);

    src.act("set_voltage", &args(&[("volts", "230")]))
        .await
        .unwrap();
    src.act("output", &args(&[("on", "true")])).await.unwrap();
    assert!(bench.plant.output_on());

    // The plant warms up with tau = 500 ms; the analyzer sees the lamp's power.
    let deadline = tokio::time::Instant::now() + BOUND;
    let power = loop {
        let r = pa
            .read(&["voltage", "power", "power_factor"])
            .await
            .unwrap();
        let p = number(find(&r, "power"));
        if p > 5.0 {
            assert!((220.0..240.0).contains(&number(find(&r, "voltage"))));
            assert!(number(find(&r, "power_factor")) > 0.5);
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "power stayed at {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(power < 20.0, "a 9.5 W lamp, got {power}");

    let r = tokio::time::timeout(BOUND, sphere.measure("spectrum"))
        .await
        .expect("measurement bounded")
        .unwrap();
    let flux = number(find(&r, "flux"));
    assert!(flux > 100.0, "lit lamp: {flux} lm");
    assert_eq!(find(&r, "flux").unit, "lm");
    let cct = number(find(&r, "cct"));
    assert!((2000.0..3500.0).contains(&cct), "cct {cct}");
    match &find(&r, "spd").value {
        Value::List(spd) => {
            assert_eq!(spd.len(), 401);
            assert!(spd.iter().all(|v| v.is_finite() && *v >= 0.0));
            assert!(spd.iter().any(|v| *v > 0.0));
        }
        other => panic!("spd is a list, got {other:?}"),
    }
    assert_eq!(find(&r, "spd").unit, "W/nm");
    for q in ["duv", "x", "y", "ra", "r9"] {
        number(find(&r, q));
    }
    let e = sphere.measure("nope").await.unwrap_err();
    assert!(matches!(e, InstrumentError::Unknown { .. }), "{e:?}");
}
