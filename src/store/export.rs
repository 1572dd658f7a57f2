//! JSON and CSV exports of stored runs, for `labgate results export` and the HTTP API.

use std::io::Write;
use std::time::SystemTime;

use super::StoreError;
use super::model::RunDetail;

/// The run as pretty JSON (the [`RunDetail`] serde form, so it parses back into one).
pub fn export_json(run: &RunDetail) -> Result<String, StoreError> {
    serde_json::to_string_pretty(run).map_err(|source| StoreError::Json {
        op: "export json",
        source,
    })
}

/// CSV columns, one row per measurement with its run's columns repeated so a spreadsheet can
/// filter without joins.
pub const CSV_HEADER: &[&str] = &[
    "run_id",
    "recipe_name",
    "recipe_version",
    "recipe_hash",
    "dut_serial",
    "station",
    "operator",
    "run_started_at",
    "run_ended_at",
    "run_verdict",
    "step_index",
    "step_name",
    "measurement_id",
    "name",
    "value",
    "invalid",
    "unit",
    "min",
    "max",
    "nominal",
    "marginal_min",
    "marginal_max",
    "verdict",
    "taken_at",
    "raw",
];

/// All runs as one CSV text; see [`write_csv`].
pub fn export_csv(runs: &[RunDetail]) -> Result<String, StoreError> {
    let mut out = Vec::new();
    write_csv(runs, &mut out)?;
    String::from_utf8(out).map_err(|e| StoreError::Export {
        detail: format!("csv is not utf-8: {e}"),
    })
}

/// Writes a header and one row per measurement; a run without measurements still gets one row
/// (measurement columns empty) so it does not vanish from the export.
pub fn write_csv<W: Write>(runs: &[RunDetail], out: W) -> Result<(), StoreError> {
    let fail = |e: csv::Error| StoreError::Export {
        detail: format!("csv: {e}"),
    };
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_HEADER).map_err(fail)?;
    let time = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for d in runs {
        let r = &d.run;
        let run_cols = [
            r.id.to_string(),
            r.recipe_name.clone(),
            r.recipe_version.clone(),
            r.recipe_hash.clone(),
            r.dut_serial.clone(),
            r.station.clone(),
            r.operator.clone(),
            time(r.started_at),
            r.ended_at.map(time).unwrap_or_default(),
            r.verdict.map(|v| v.to_string()).unwrap_or_default(),
        ];
        if d.measurements.is_empty() {
            let mut row = run_cols.to_vec();
            row.resize(CSV_HEADER.len(), String::new());
            w.write_record(&row).map_err(fail)?;
            continue;
        }
        for m in &d.measurements {
            let step = d.steps.iter().find(|s| s.id == m.step_id);
            let mut row = run_cols.to_vec();
            row.extend([
                step.map(|s| s.index.to_string()).unwrap_or_default(),
                step.map(|s| s.name.clone()).unwrap_or_default(),
                m.id.to_string(),
                m.name.clone(),
                num(m.value),
                m.invalid.clone().unwrap_or_default(),
                m.unit.clone(),
                num(m.limits.min),
                num(m.limits.max),
                num(m.limits.nominal),
                num(m.limits.marginal_min),
                num(m.limits.marginal_max),
                m.verdict.map(|v| v.to_string()).unwrap_or_default(),
                time(m.taken_at),
                m.raw.clone().unwrap_or_default(),
            ]);
            w.write_record(&row).map_err(fail)?;
        }
    }
    w.flush().map_err(|e| StoreError::Export {
        detail: format!("csv: {e}"),
    })?;
    Ok(())
}
