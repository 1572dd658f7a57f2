//! `/metrics`: the expected series, readings in base units, and a real parser (promtool from
//! Debian's `prometheus` package) when it is installed.

mod api_common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use api_common::*;

/// Structural check of the text exposition: every sample is `name{labels} value` with a
/// float value, and its family was announced by a TYPE line before it.
fn check_structure(text: &str) {
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(typed.insert(name.to_string()), "family {name} typed twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no TYPE line before it");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            }
        }
    }
}

/// promtool's own parser and lint; an error when it is missing says how to get it.
fn promtool_check(text: &str) -> Result<(), String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Err(format!(
                "promtool not runnable ({e}); install it with `apt-get install -y --no-install-recommends prometheus`"
            ));
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejects /metrics:\n{all}\n---\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_have_the_expected_series_and_parse() {
    let s = serve("").await;
    let a = s.addr;
    // Light the lamp so the readings are not all zero, and make one failing request.
    for body in [r#"{"args": {"volts": 230}}"#] {
        let r = post_json(a, "/api/v1/instruments/src1/actions/set_voltage", body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = post_json(
        a,
        "/api/v1/instruments/src1/actions/output",
        r#"{"args": {"on": true}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    post_json(
        a,
        "/api/v1/instruments/src1/actions/set_voltage",
        r#"{"args": {"volts": 1e9}}"#,
    )
    .await
    .problem(422);

    // Wait for polls to report the analyzer's current (mA-free: A) and the chamber.
    let text = eventually("polled gauges", || async {
        let r = get(a, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let t = r.body;
        let lit = t
            .lines()
            .find(|l| l.starts_with("labgate_power_watts{instrument=\"pa1\",quantity=\"power\"}"))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .is_some_and(|w| w > 1.0);
        (lit && t.contains("labgate_temperature_celsius{instrument=\"chamber1\"")).then_some(t)
    })
    .await;

    for expect in [
        "labgate_instrument_up{instrument=\"pa1\"} 1",
        "labgate_link_reconnects_total{link=\"plc_link\"} 0",
        "labgate_link_requests_total{link=\"plc_link\",outcome=\"error\"} 0",
        "# TYPE labgate_link_requests_total counter",
        "labgate_voltage_volts{instrument=\"pa1\",quantity=\"voltage\"}",
        "labgate_current_amperes{instrument=\"pa1\",quantity=\"current\"}",
        "labgate_requests_total{instrument=\"src1\",outcome=\"ok\"}",
        "labgate_requests_total{instrument=\"src1\",outcome=\"rejected\"}",
        "labgate_request_duration_seconds_bucket{instrument=\"pa1\",le=\"0.01\"}",
        "# TYPE labgate_request_duration_seconds histogram",
    ] {
        assert!(text.contains(expect), "missing {expect:?} in:\n{text}");
    }
    // The chamber's polls went over plc_link: its answered-request counter has moved.
    let answered = text
        .lines()
        .find(|l| l.starts_with("labgate_link_requests_total{link=\"plc_link\",outcome=\"ok\"}"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok());
    assert!(answered.is_some_and(|n| n > 0), "{answered:?} in:\n{text}");
    // The rack's position currents are mA in the driver, amperes here (the sim's lamps draw
    // tens of mA, so a value above 1 would mean no conversion).
    for l in text
        .lines()
        .filter(|l| l.starts_with("labgate_current_amperes{instrument=\"rack1\""))
    {
        let v: f64 = l.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(v.abs() < 1.0, "{l}");
    }
    check_structure(&text);
    match promtool_check(&text) {
        Ok(()) => {}
        Err(why) => {
            // CI must run the real parser; a developer machine without it is told why.
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("NOTE: only the structural check ran: {why}");
        }
    }
}

#[tokio::test]
async fn invalid_readings_are_not_exported() {
    use labgate::reading::{InvalidKind, Reading, Value};
    let s = serve("").await;
    let live = s.state.live();
    let at = std::time::SystemTime::now();
    // A reading that went invalid (no data) replaces the number and leaves no sample.
    live.latest.record(
        "tc1",
        &[
            Reading {
                quantity: "case".into(),
                value: Value::Number(41.5),
                unit: "degC".into(),
                at,
                raw: None,
            },
            Reading {
                quantity: "ambient".into(),
                value: Value::Invalid {
                    kind: InvalidKind::OpenSensor,
                    raw: "9.9E+37".into(),
                },
                unit: "degC".into(),
                at,
                raw: None,
            },
        ],
    );
    let text = get(s.addr, "/metrics").await.body;
    assert!(
        text.contains("labgate_temperature_celsius{instrument=\"tc1\",quantity=\"case\"} 41.5"),
        "{text}"
    );
    assert!(!text.contains("quantity=\"ambient\""), "{text}");
    let d = get(s.addr, "/api/v1/instruments/tc1").await.json();
    let amb = d["readings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["quantity"] == "ambient")
        .unwrap()
        .clone();
    assert_eq!(amb["value"], serde_json::Value::Null);
    assert_eq!(amb["invalid"], "open_sensor");
}
