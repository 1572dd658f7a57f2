//! The SQL behind the store: plain blocking functions over one rusqlite connection.
//!
//! [`super::Store`] decides which thread runs them; keeping them free of threading makes the SQL
//! easy to read and lets the benchmark compare the handle against the same statements run bare.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::StoreError;
use super::model::*;

/// Largest page `list_runs` and `measurements` return, whatever the caller asks.
pub const MAX_PAGE: usize = 1000;
/// Page size when the filter says 0.
pub const DEFAULT_PAGE: usize = 100;
/// Most events one `events_since` call returns; a resuming client calls again from the last seq.
pub const EVENTS_BATCH: usize = 10_000;

macro_rules! sql_text_enum {
    ($($name:ident),+) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(FromSqlError::other)
            }
        }
    )+};
}
sql_text_enum!(RunVerdict, RunState, Verdict, StepStatus);

/// Microseconds since the Unix epoch; times before it are negative rather than an error.
pub fn to_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

pub fn from_us(us: i64) -> SystemTime {
    let d = Duration::from_micros(us.unsigned_abs());
    let t = if us >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

pub fn now_us() -> i64 {
    to_us(SystemTime::now())
}

fn sql(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

fn json_text(op: &'static str, v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Json { op, source })
}

fn parse_json(text: &str) -> rusqlite::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

// ---------------------------------------------------------------------------------------------
// Writes. Each runs inside the caller's transaction.

pub fn create_run(conn: &Connection, run: &NewRun, now: i64) -> Result<RunId, StoreError> {
    const OP: &str = "create run";
    let parameters = json_text(OP, &run.parameters)?;
    conn.prepare_cached(
        "INSERT INTO runs (recipe_name, recipe_version, recipe_hash, dut_serial, station, operator,
                           parameters, started_us, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'running')",
    )
    .and_then(|mut st| {
        st.execute(params![
            run.recipe_name,
            run.recipe_version,
            run.recipe_hash,
            run.dut_serial,
            run.station,
            run.operator,
            parameters,
            now
        ])
    })
    .map_err(sql(OP))?;
    let id = RunId(conn.last_insert_rowid());
    let payload = serde_json::json!({
        "recipe_name": run.recipe_name,
        "recipe_version": run.recipe_version,
        "dut_serial": run.dut_serial,
        "station": run.station,
        "operator": run.operator,
    });
    add_event(conn, id, event_kind::RUN_STARTED, &payload, now)?;
    Ok(id)
}

/// Why a write aimed at a run did nothing: the run is unknown or already finished.
fn run_not_writable(conn: &Connection, run: RunId, op: &'static str) -> StoreError {
    let state: Result<Option<RunState>, _> = conn
        .query_row("SELECT state FROM runs WHERE id = ?1", [run.0], |r| {
            r.get(0)
        })
        .optional();
    match state {
        Ok(None) => StoreError::RunNotFound { run },
        Ok(Some(_)) => StoreError::RunFinished { run, op },
        Err(source) => StoreError::Sqlite { op, source },
    }
}

pub fn start_step(
    conn: &Connection,
    run: RunId,
    index: i64,
    name: &str,
    kind: &str,
    now: i64,
) -> Result<StepId, StoreError> {
    const OP: &str = "start step";
    let n = conn
        .prepare_cached(
            "INSERT INTO steps (run_id, idx, name, kind, started_us)
             SELECT id, ?2, ?3, ?4, ?5 FROM runs WHERE id = ?1 AND state = 'running'",
        )
        .and_then(|mut st| st.execute(params![run.0, index, name, kind, now]))
        .map_err(sql(OP))?;
    if n == 0 {
        return Err(run_not_writable(conn, run, OP));
    }
    Ok(StepId(conn.last_insert_rowid()))
}

pub fn finish_step(
    conn: &Connection,
    step: StepId,
    status: StepStatus,
    message: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    const OP: &str = "finish step";
    let n = conn
        .prepare_cached(
            "UPDATE steps SET status = ?2, message = ?3, ended_us = ?4
             WHERE id = ?1 AND status IS NULL",
        )
        .and_then(|mut st| st.execute(params![step.0, status, message, now]))
        .map_err(sql(OP))?;
    if n == 0 {
        let exists = conn
            .query_row("SELECT 1 FROM steps WHERE id = ?1", [step.0], |_| Ok(()))
            .optional()
            .map_err(sql(OP))?;
        return Err(match exists {
            None => StoreError::StepNotFound { step },
            Some(()) => StoreError::StepFinished { step },
        });
    }
    Ok(())
}

/// Rejects what the schema would store wrongly: SQLite turns NaN into NULL, and a number that is
/// also flagged invalid would be ambiguous.
pub fn validate_measurement(m: &NewMeasurement) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(StoreError::InvalidMeasurement {
            name: m.name.clone(),
            reason: reason.to_string(),
        })
    };
    match (&m.value, &m.invalid) {
        (Some(_), Some(_)) => return bad("has both a value and an invalid marker"),
        (None, None) => return bad("has neither a value nor an invalid marker"),
        (Some(v), None) if !v.is_finite() => {
            return bad("value is not finite; store the instrument's marker as `invalid`");
        }
        _ => {}
    }
    if m.name.is_empty() {
        return bad("has an empty name");
    }
    let l = &m.limits;
    let finite = [l.min, l.max, l.nominal, l.marginal_min, l.marginal_max]
        .into_iter()
        .flatten()
        .all(f64::is_finite);
    if !finite {
        return bad("has a limit that is not finite");
    }
    Ok(())
}

pub fn add_measurement(conn: &Connection, m: &NewMeasurement) -> Result<MeasurementId, StoreError> {
    const OP: &str = "add measurement";
    validate_measurement(m)?;
    // The join both finds the run id and refuses a run already finished (e.g. marked interrupted
    // while a stale engine still writes), in one statement.
    let n = conn
        .prepare_cached(
            "INSERT INTO measurements (run_id, step_id, name, value, invalid, unit, lim_min, lim_max,
                                       lim_nominal, lim_mmin, lim_mmax, verdict, taken_us, raw)
             SELECT s.run_id, s.id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
             FROM steps s JOIN runs r ON r.id = s.run_id
             WHERE s.id = ?1 AND r.state = 'running'",
        )
        .and_then(|mut st| {
            st.execute(params![
                m.step_id.0,
                m.name,
                m.value,
                m.invalid,
                m.unit,
                m.limits.min,
                m.limits.max,
                m.limits.nominal,
                m.limits.marginal_min,
                m.limits.marginal_max,
                m.verdict,
                to_us(m.taken_at),
                m.raw,
            ])
        })
        .map_err(sql(OP))?;
    if n == 0 {
        let run: Option<i64> = conn
            .query_row(
                "SELECT run_id FROM steps WHERE id = ?1",
                [m.step_id.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(OP))?;
        return Err(match run {
            None => StoreError::StepNotFound { step: m.step_id },
            Some(run) => StoreError::RunFinished {
                run: RunId(run),
                op: OP,
            },
        });
    }
    Ok(MeasurementId(conn.last_insert_rowid()))
}

pub fn add_event(
    conn: &Connection,
    run: RunId,
    kind: &str,
    payload: &serde_json::Value,
    now: i64,
) -> Result<i64, StoreError> {
    const OP: &str = "add event";
    let payload = json_text(OP, payload)?;
    let seq: Option<i64> = conn
        .prepare_cached("UPDATE runs SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq")
        .and_then(|mut st| st.query_row([run.0], |r| r.get(0)).optional())
        .map_err(sql(OP))?;
    let seq = seq.ok_or(StoreError::RunNotFound { run })?;
    conn.prepare_cached(
        "INSERT INTO events (run_id, seq, at_us, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![run.0, seq, now, kind, payload]))
    .map_err(sql(OP))?;
    Ok(seq)
}

pub fn finish_run(
    conn: &Connection,
    run: RunId,
    verdict: RunVerdict,
    now: i64,
) -> Result<(), StoreError> {
    const OP: &str = "finish run";
    let n = conn
        .prepare_cached(
            "UPDATE runs SET state = 'finished', verdict = ?2, ended_us = ?3
             WHERE id = ?1 AND state = 'running'",
        )
        .and_then(|mut st| st.execute(params![run.0, verdict, now]))
        .map_err(sql(OP))?;
    if n == 0 {
        return Err(run_not_writable(conn, run, OP));
    }
    add_event(
        conn,
        run,
        event_kind::RUN_FINISHED,
        &serde_json::json!({ "verdict": verdict }),
        now,
    )?;
    Ok(())
}

/// Closes every run still marked running. The end time is the run's last sign of life (its latest
/// step, measurement or event), which is closer to when the process died than "now".
pub fn mark_interrupted(conn: &Connection, now: i64) -> Result<Vec<RunId>, StoreError> {
    const OP: &str = "mark interrupted runs";
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM runs WHERE state = 'running' ORDER BY id")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(sql(OP))?;
    for &id in &ids {
        let last: i64 = conn
            .query_row(
                "SELECT MAX(started_us,
                            COALESCE((SELECT MAX(taken_us) FROM measurements WHERE run_id = ?1), 0),
                            COALESCE((SELECT MAX(at_us) FROM events WHERE run_id = ?1), 0),
                            COALESCE((SELECT MAX(MAX(started_us, COALESCE(ended_us, 0)))
                                      FROM steps WHERE run_id = ?1), 0))
                 FROM runs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(sql(OP))?;
        conn.execute(
            "UPDATE steps SET status = 'interrupted', ended_us = ?2,
                 message = 'the process ended while this step was running'
             WHERE run_id = ?1 AND status IS NULL",
            params![id, last],
        )
        .map_err(sql(OP))?;
        conn.execute(
            "UPDATE runs SET state = 'finished', verdict = 'interrupted', ended_us = ?2
             WHERE id = ?1",
            params![id, last],
        )
        .map_err(sql(OP))?;
        let payload = serde_json::json!({
            "reason": "the process ended while the run was going",
            "last_activity": humantime::format_rfc3339_micros(from_us(last)).to_string(),
        });
        add_event(conn, RunId(id), event_kind::RUN_INTERRUPTED, &payload, now)?;
    }
    Ok(ids.into_iter().map(RunId).collect())
}

// ---------------------------------------------------------------------------------------------
// Reads.

const RUN_COLS: &str =
    "id, recipe_name, recipe_version, recipe_hash, dut_serial, station, operator,
                        state, verdict, started_us, ended_us";

fn run_summary(r: &Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        id: RunId(r.get(0)?),
        recipe_name: r.get(1)?,
        recipe_version: r.get(2)?,
        recipe_hash: r.get(3)?,
        dut_serial: r.get(4)?,
        station: r.get(5)?,
        operator: r.get(6)?,
        state: r.get(7)?,
        verdict: r.get(8)?,
        started_at: from_us(r.get(9)?),
        ended_at: r.get::<_, Option<i64>>(10)?.map(from_us),
    })
}

const MEASUREMENT_COLS: &str = "m.id, m.run_id, m.step_id, m.name, m.value, m.invalid, m.unit,
    m.lim_min, m.lim_max, m.lim_nominal, m.lim_mmin, m.lim_mmax, m.verdict, m.taken_us, m.raw";

fn measurement(r: &Row<'_>) -> rusqlite::Result<Measurement> {
    Ok(Measurement {
        id: MeasurementId(r.get(0)?),
        run_id: RunId(r.get(1)?),
        step_id: StepId(r.get(2)?),
        name: r.get(3)?,
        value: r.get(4)?,
        invalid: r.get(5)?,
        unit: r.get(6)?,
        limits: Limits {
            min: r.get(7)?,
            max: r.get(8)?,
            nominal: r.get(9)?,
            marginal_min: r.get(10)?,
            marginal_max: r.get(11)?,
        },
        verdict: r.get(12)?,
        taken_at: from_us(r.get(13)?),
        raw: r.get(14)?,
    })
}

/// A keyset position: (started_us, id) for runs, (taken_us, id) for measurements.
fn parse_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    let bad = || StoreError::BadCursor {
        cursor: cursor.to_string(),
    };
    let (a, b) = cursor.split_once('_').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

fn page_size(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

pub fn list_runs(conn: &Connection, f: &RunFilter) -> Result<Page<RunSummary>, StoreError> {
    const OP: &str = "list runs";
    let limit = page_size(f.limit);
    let mut sql_text = format!("SELECT {RUN_COLS} FROM runs WHERE 1 = 1");
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let mut push = |clause: &str, v: Box<dyn ToSql>| {
        args.push(v);
        sql_text.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(dut) = &f.dut {
        push(" AND dut_serial = ?", Box::new(dut.clone()));
    }
    if let Some(recipe) = &f.recipe {
        push(" AND recipe_name = ?", Box::new(recipe.clone()));
    }
    if let Some(station) = &f.station {
        push(" AND station = ?", Box::new(station.clone()));
    }
    if let Some(verdict) = f.verdict {
        push(" AND verdict = ?", Box::new(verdict));
    }
    if let Some(from) = f.from {
        push(" AND started_us >= ?", Box::new(to_us(from)));
    }
    if let Some(to) = f.to {
        push(" AND started_us < ?", Box::new(to_us(to)));
    }
    if let Some(cursor) = &f.cursor {
        let (started, id) = parse_cursor(cursor)?;
        // The first comparison lets SQLite bound the index range; the row value breaks ties.
        push(" AND started_us <= ?", Box::new(started));
        push(" AND (started_us, id) < (?, ", Box::new(started));
        push("?)", Box::new(id));
    }
    push(
        " ORDER BY started_us DESC, id DESC LIMIT ?",
        Box::new(limit as i64 + 1),
    );
    let mut st = conn.prepare_cached(&sql_text).map_err(sql(OP))?;
    let mut items: Vec<RunSummary> = st
        .query_map(rusqlite::params_from_iter(args.iter()), run_summary)
        .and_then(|rows| rows.collect())
        .map_err(sql(OP))?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|r| format!("{}_{}", to_us(r.started_at), r.id.0))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

pub fn get_run(conn: &Connection, run: RunId) -> Result<Option<RunDetail>, StoreError> {
    const OP: &str = "get run";
    let head = conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLS}, parameters FROM runs WHERE id = ?1"
        ))
        .and_then(|mut st| {
            st.query_row([run.0], |r| {
                let text: String = r.get(11)?;
                Ok((run_summary(r)?, parse_json(&text)?))
            })
            .optional()
        })
        .map_err(sql(OP))?;
    let Some((summary, parameters)) = head else {
        return Ok(None);
    };
    let steps = conn
        .prepare_cached(
            "SELECT id, run_id, idx, name, kind, status, message, started_us, ended_us
             FROM steps WHERE run_id = ?1 ORDER BY idx, id",
        )
        .and_then(|mut st| {
            st.query_map([run.0], |r| {
                Ok(Step {
                    id: StepId(r.get(0)?),
                    run_id: RunId(r.get(1)?),
                    index: r.get(2)?,
                    name: r.get(3)?,
                    kind: r.get(4)?,
                    status: r.get(5)?,
                    message: r.get(6)?,
                    started_at: from_us(r.get(7)?),
                    ended_at: r.get::<_, Option<i64>>(8)?.map(from_us),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql(OP))?;
    let measurements = conn
        .prepare_cached(&format!(
            "SELECT {MEASUREMENT_COLS} FROM measurements m WHERE m.run_id = ?1 ORDER BY m.id"
        ))
        .and_then(|mut st| {
            st.query_map([run.0], measurement)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql(OP))?;
    Ok(Some(RunDetail {
        run: summary,
        parameters,
        steps,
        measurements,
    }))
}

pub fn events_since(conn: &Connection, run: RunId, after: i64) -> Result<Vec<Event>, StoreError> {
    const OP: &str = "read events";
    conn.prepare_cached(
        "SELECT run_id, seq, at_us, kind, payload FROM events
         WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )
    .and_then(|mut st| {
        st.query_map(params![run.0, after, EVENTS_BATCH as i64], |r| {
            let text: String = r.get(4)?;
            Ok(Event {
                run_id: RunId(r.get(0)?),
                seq: r.get(1)?,
                at: from_us(r.get(2)?),
                kind: r.get(3)?,
                payload: parse_json(&text)?,
            })
        })?
        .collect()
    })
    .map_err(sql(OP))
}

/// Whether a measurement query filtered only by run columns (DUT, recipe) should walk the
/// measurements newest first, checking each one's run, instead of SQLite's choice: collect every
/// measurement of the matching runs and sort them. The walk wins when many runs match (a recipe:
/// a page is full after a few hundred rows, where the sort reads a tenth of the table); the
/// collection wins when few do (a DUT). Both costs are estimated from the run count that matches
/// (an index count) and the table sizes (their largest ids).
fn newest_first(conn: &Connection, f: &MeasurementFilter, limit: usize) -> rusqlite::Result<bool> {
    if f.name.is_some() || (f.dut.is_none() && f.recipe.is_none()) {
        // By name, or by time alone, an index already gives the order.
        return Ok(false);
    }
    let mut count = String::from("SELECT count(*) FROM runs WHERE 1 = 1");
    let mut args: Vec<&dyn ToSql> = Vec::new();
    if let Some(dut) = &f.dut {
        args.push(dut);
        count.push_str(&format!(" AND dut_serial = ?{}", args.len()));
    }
    if let Some(recipe) = &f.recipe {
        args.push(recipe);
        count.push_str(&format!(" AND recipe_name = ?{}", args.len()));
    }
    let matching: i64 = conn
        .prepare_cached(&count)?
        .query_row(args.as_slice(), |r| r.get(0))?;
    let (runs, measurements): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT (SELECT max(id) FROM runs), (SELECT max(id) FROM measurements)")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (runs, measurements) = (runs.unwrap_or(0), measurements.unwrap_or(0));
    if matching == 0 || runs == 0 {
        return Ok(false);
    }
    let per_run = measurements / runs;
    let collect_and_sort = matching.saturating_mul(per_run);
    let walk = (limit as i64 + 1).saturating_mul(runs) / matching;
    Ok(walk < collect_and_sort)
}

pub fn measurements(
    conn: &Connection,
    f: &MeasurementFilter,
) -> Result<Page<MeasurementRow>, StoreError> {
    const OP: &str = "query measurements";
    let limit = page_size(f.limit);
    // CROSS JOIN makes SQLite keep measurements as the outer loop.
    let join = if newest_first(conn, f, limit).map_err(sql(OP))? {
        "CROSS JOIN"
    } else {
        "JOIN"
    };
    let mut sql_text = format!(
        "SELECT {MEASUREMENT_COLS}, r.dut_serial, r.recipe_name, r.station
         FROM measurements m {join} runs r ON r.id = m.run_id WHERE 1 = 1"
    );
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let mut push = |clause: &str, v: Box<dyn ToSql>| {
        args.push(v);
        sql_text.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(name) = &f.name {
        push(" AND m.name = ?", Box::new(name.clone()));
    }
    if let Some(dut) = &f.dut {
        push(" AND r.dut_serial = ?", Box::new(dut.clone()));
    }
    if let Some(recipe) = &f.recipe {
        push(" AND r.recipe_name = ?", Box::new(recipe.clone()));
    }
    if let Some(from) = f.from {
        push(" AND m.taken_us >= ?", Box::new(to_us(from)));
    }
    if let Some(to) = f.to {
        push(" AND m.taken_us < ?", Box::new(to_us(to)));
    }
    if let Some(cursor) = &f.cursor {
        let (taken, id) = parse_cursor(cursor)?;
        push(" AND m.taken_us <= ?", Box::new(taken));
        push(" AND (m.taken_us, m.id) < (?, ", Box::new(taken));
        push("?)", Box::new(id));
    }
    // By time then id, so the (name, taken_us) and (taken_us) indexes give the order without a
    // sort over every measurement of that name.
    push(
        " ORDER BY m.taken_us DESC, m.id DESC LIMIT ?",
        Box::new(limit as i64 + 1),
    );
    let mut st = conn.prepare_cached(&sql_text).map_err(sql(OP))?;
    let mut items: Vec<MeasurementRow> = st
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(MeasurementRow {
                measurement: measurement(r)?,
                dut_serial: r.get(15)?,
                recipe_name: r.get(16)?,
                station: r.get(17)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(sql(OP))?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|r| {
            let m = &r.measurement;
            format!("{}_{}", to_us(m.taken_at), m.id.0)
        })
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_microseconds() {
        for us in [0, 1, -1, 1_767_225_600_123_456, -86_400_000_000] {
            assert_eq!(to_us(from_us(us)), us);
        }
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(to_us(t), 1_700_000_000_123_456);
    }

    #[test]
    fn cursors_parse_or_fail_typed() {
        assert_eq!(parse_cursor("123_45").unwrap(), (123, 45));
        assert_eq!(parse_cursor("-5_1").unwrap(), (-5, 1));
        for bad in ["", "12", "a_1", "1_b", "1_2_3"] {
            assert!(
                matches!(parse_cursor(bad), Err(StoreError::BadCursor { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1_000_000), MAX_PAGE);
    }

    #[test]
    fn enum_texts_round_trip() {
        for v in RunVerdict::ALL {
            assert_eq!(v.as_str().parse::<RunVerdict>().unwrap(), *v);
            // serde and the database agree on the text
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for v in StepStatus::ALL {
            assert_eq!(v.as_str().parse::<StepStatus>().unwrap(), *v);
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for v in Verdict::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        assert!("passed".parse::<RunVerdict>().is_err());
    }

    #[test]
    fn measurements_that_cannot_be_stored_faithfully_are_refused() {
        let ok = NewMeasurement {
            step_id: StepId(1),
            name: "P".into(),
            value: Some(1.0),
            invalid: None,
            unit: "W".into(),
            limits: Limits::default(),
            verdict: None,
            taken_at: SystemTime::now(),
            raw: None,
        };
        assert!(validate_measurement(&ok).is_ok());
        let marker = NewMeasurement {
            value: None,
            invalid: Some("overrange".into()),
            ..ok.clone()
        };
        assert!(validate_measurement(&marker).is_ok());
        let bad = [
            NewMeasurement {
                value: Some(f64::NAN),
                ..ok.clone()
            },
            NewMeasurement {
                value: None,
                ..ok.clone()
            },
            NewMeasurement {
                invalid: Some("no_data".into()),
                ..ok.clone()
            },
            NewMeasurement {
                name: String::new(),
                ..ok.clone()
            },
            NewMeasurement {
                limits: Limits {
                    max: Some(f64::INFINITY),
                    ..Limits::default()
                },
                ..ok.clone()
            },
        ];
        for m in bad {
            assert!(
                matches!(
                    validate_measurement(&m),
                    Err(StoreError::InvalidMeasurement { .. })
                ),
                "{m:?}"
            );
        }
    }
}
