//! Prometheus metrics for `/metrics`.
//!
//! Two kinds of series, rendered into one exposition:
//! - **Events** (requests by outcome, request latency) go through the `metrics` facade into
//!   metrics-exporter-prometheus, installed once per process ([`install`]). Its upkeep runs on our
//!   own timer ([`spawn_upkeep`]) because recorder mode has no listener to do it.
//! - **State** (instrument up/down, link reconnects, latest polled readings) is rendered from the
//!   live gateway at scrape time ([`render_state`]). A gauge kept in the recorder would outlive the
//!   thing it describes: a reading that turned invalid, or an instrument removed by a reload, would
//!   keep exporting its last number. Rendering from a snapshot exports only what is true now.
//!
//! Reading gauges are named by unit, converted to base units (see [`unit_family`] and
//! docs/api.md). Labels are bounded: instrument ids, quantity names and link names come from the
//! validated config; no serials, no error texts.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::gateway::Gateway;
use crate::instrument::InstrumentError;
use crate::link::{LinkError, LinkState};
use crate::poll::Latest;
use crate::reading::Value;

pub const REQUESTS_TOTAL: &str = "labgate_requests_total";
pub const REQUEST_DURATION: &str = "labgate_request_duration_seconds";
pub const RUNS_TOTAL: &str = "labgate_runs_total";
pub const RUNS_ACTIVE: &str = "labgate_runs_active";
pub const STEP_DURATION: &str = "labgate_step_duration_seconds";
pub const STABILIZATION_DURATION: &str = "labgate_stabilization_duration_seconds";

/// Step buckets: an `act` takes milliseconds, an LM-79 stabilization up to hours.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// Latency buckets: a Modbus RTU read is tens of milliseconds, a sphere measurement seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram upkeep runs; rendering also drains, this bounds memory between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder (first call) and return its handle. `None` when another
/// recorder was installed first (an embedding program's); state series still render then.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), STEP_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(STABILIZATION_DURATION.into()), STEP_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    metrics::describe_counter!(
                        REQUESTS_TOTAL,
                        "Instrument requests (API and polls) by outcome"
                    );
                    metrics::describe_histogram!(
                        REQUEST_DURATION,
                        metrics::Unit::Seconds,
                        "Instrument request duration"
                    );
                    metrics::describe_counter!(RUNS_TOTAL, "Finished runs by recipe and verdict");
                    metrics::describe_histogram!(
                        STEP_DURATION,
                        metrics::Unit::Seconds,
                        "Recipe step duration by recipe and step kind"
                    );
                    metrics::describe_histogram!(
                        STABILIZATION_DURATION,
                        metrics::Unit::Seconds,
                        "Time stabilize steps took until stable or given up, by recipe"
                    );
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(message = "metrics recorder not installed", error = %e);
                    None
                }
            }
        })
        .clone()
}

/// Run the exporter's upkeep every [`UPKEEP_INTERVAL`] until the task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// The outcome label of an instrument request: a small closed set.
pub fn outcome(result: &Result<(), &InstrumentError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(InstrumentError::Unknown { .. })
        | Err(InstrumentError::Args { .. })
        | Err(InstrumentError::Invalid { .. }) => "rejected",
        Err(InstrumentError::Refused { .. }) => "refused",
        Err(InstrumentError::MeasurementTimeout { .. }) => "timeout",
        Err(InstrumentError::Parse { .. }) => "bad_reply",
        Err(InstrumentError::Link { source, .. }) => match source.as_ref() {
            LinkError::Timeout { .. } => "timeout",
            LinkError::Exception { .. } => "refused",
            LinkError::Mismatch { .. } => "bad_reply",
            _ => "link_down",
        },
    }
}

/// Count one instrument request and its duration.
pub fn observe_request(instrument: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!(REQUESTS_TOTAL, "instrument" => instrument.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "instrument" => instrument.to_string())
        .record(elapsed.as_secs_f64());
}

/// Count a finished run. Labels are the recipe name (from the recipes directory) and the
/// verdict: never the DUT serial, which is unbounded.
pub fn run_finished(recipe: &str, verdict: crate::store::RunVerdict) {
    metrics::counter!(RUNS_TOTAL, "recipe" => recipe.to_string(), "verdict" => verdict.as_str())
        .increment(1);
}

/// Record a finished step's duration; stabilize steps also feed the stabilization histogram.
pub fn step_finished(recipe: &str, kind: &'static str, elapsed: Duration) {
    metrics::histogram!(STEP_DURATION, "recipe" => recipe.to_string(), "kind" => kind)
        .record(elapsed.as_secs_f64());
    if kind == "stabilize" {
        metrics::histogram!(STABILIZATION_DURATION, "recipe" => recipe.to_string())
            .record(elapsed.as_secs_f64());
    }
}

/// The active-runs gauge, rendered at scrape time from the run manager (like the state series:
/// a gauge in the recorder could outlive a crash of the count's bookkeeping).
pub fn render_runs_active(out: &mut String, running: usize, queued: usize) {
    out.push_str("# HELP labgate_runs_active Runs of this daemon by state (queued: waiting for an instrument)\n");
    out.push_str("# TYPE labgate_runs_active gauge\n");
    let _ = writeln!(out, "{RUNS_ACTIVE}{{state=\"running\"}} {running}");
    let _ = writeln!(out, "{RUNS_ACTIVE}{{state=\"queued\"}} {queued}");
}

/// The gauge family and the factor to base units for a driver unit, or `None` when the unit has
/// no family (the reading is then not exported).
///
/// Rule: one family per physical quantity, named `labgate_<quantity>_<base unit>`; prefixed
/// units are scaled to the base unit (mA -> amperes, mV -> volts, Wh -> joules, nm -> meters);
/// `%` becomes a 0..1 `_ratio`; `K` is a correlated colour temperature on a lighting bench;
/// unitless numbers and booleans (0/1) go to `labgate_reading`.
pub fn unit_family(unit: &str) -> Option<(&'static str, f64)> {
    Some(match unit {
        "V" => ("labgate_voltage_volts", 1.0),
        "mV" => ("labgate_voltage_volts", 1e-3),
        "A" => ("labgate_current_amperes", 1.0),
        "mA" => ("labgate_current_amperes", 1e-3),
        "W" => ("labgate_power_watts", 1.0),
        "kW" => ("labgate_power_watts", 1e3),
        "Wh" => ("labgate_energy_joules", 3600.0),
        "Hz" => ("labgate_frequency_hertz", 1.0),
        "lm" => ("labgate_luminous_flux_lumens", 1.0),
        "K" => ("labgate_cct_kelvin", 1.0),
        "degC" => ("labgate_temperature_celsius", 1.0),
        "%" => ("labgate_ratio", 0.01),
        "nm" => ("labgate_wavelength_meters", 1e-9),
        "" => ("labgate_reading", 1.0),
        _ => return None,
    })
}

/// Escape a label value per the exposition format (borrowed when nothing needs escaping, the
/// usual case for config names).
fn label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Render the state series (instrument up, link reconnects and requests, latest readings).
pub fn render_state(gateway: &Gateway, latest: &Latest) -> String {
    let mut out = String::new();
    out.push_str("# HELP labgate_instrument_up 1 when the instrument's link is connected\n");
    out.push_str("# TYPE labgate_instrument_up gauge\n");
    for (id, inst) in &gateway.instruments {
        let up = inst.link().status().state == LinkState::Connected;
        let _ = writeln!(
            out,
            "labgate_instrument_up{{instrument=\"{}\"}} {}",
            label(id),
            u8::from(up)
        );
    }
    out.push_str("# HELP labgate_link_reconnects_total Connections made after the first one\n");
    out.push_str("# TYPE labgate_link_reconnects_total counter\n");
    for (name, link) in &gateway.links {
        let _ = writeln!(
            out,
            "labgate_link_reconnects_total{{link=\"{}\"}} {}",
            label(name),
            link.status().reconnects
        );
    }
    out.push_str(
        "# HELP labgate_link_requests_total Requests a link answered (ok) or failed (error: \
         timeout, I/O, device refusal, link down or overloaded)\n",
    );
    out.push_str("# TYPE labgate_link_requests_total counter\n");
    for (name, link) in &gateway.links {
        let s = link.status();
        for (outcome, n) in [("ok", s.requests_ok), ("error", s.requests_failed)] {
            let _ = writeln!(
                out,
                "labgate_link_requests_total{{link=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(name)
            );
        }
    }
    // Group by family so each family's samples follow its one TYPE line.
    let mut families: std::collections::BTreeMap<&'static str, String> = Default::default();
    latest.visit(|id, r| {
        let Some((family, factor)) = unit_family(&r.unit) else {
            return;
        };
        // Invalid markers, texts and lists are not numbers and are not exported.
        let v = match &r.value {
            Value::Number(v) if v.is_finite() => *v * factor,
            Value::Bool(b) => f64::from(u8::from(*b)),
            _ => return,
        };
        let lines = families.entry(family).or_default();
        let _ = writeln!(
            lines,
            "{family}{{instrument=\"{}\",quantity=\"{}\"}} {v}",
            label(id),
            label(&r.quantity)
        );
    });
    for (family, lines) in families {
        let _ = writeln!(
            out,
            "# HELP {family} Latest polled reading, in the base unit its name ends with"
        );
        let _ = writeln!(out, "# TYPE {family} gauge");
        out.push_str(&lines);
    }
    out
}

/// The whole exposition: state series and the recorder's.
pub fn render(handle: Option<&PrometheusHandle>, gateway: &Gateway, latest: &Latest) -> String {
    let mut out = render_state(gateway, latest);
    if let Some(h) = handle {
        out.push_str(&h.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_map_to_base_units() {
        assert_eq!(unit_family("mA"), Some(("labgate_current_amperes", 1e-3)));
        assert_eq!(unit_family("%"), Some(("labgate_ratio", 0.01)));
        assert_eq!(unit_family("W/nm"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
