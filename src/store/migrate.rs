//! Versioned schema migrations.
//!
//! `PRAGMA user_version` holds how many entries of [`MIGRATIONS`] have been applied. Each entry runs
//! in its own transaction together with the version bump, so a crash mid-migration leaves the
//! previous version intact. Entries are append-only: never edit one that has shipped.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// Every schema step, in order. Index i brings the schema from version i to i + 1.
///
/// Times are INTEGER microseconds since the Unix epoch (UTC): compact, and range filters compare
/// integers. Indexes exist for each query in `queries.rs`: every run listing orders by
/// (started_us DESC, id DESC) and each filter column has an index ending in started_us (the rowid
/// is implicitly the last column), so a filtered page is an index range scan with no sort.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    recipe_name    TEXT NOT NULL,
    recipe_version TEXT NOT NULL,
    recipe_hash    TEXT NOT NULL,
    dut_serial     TEXT NOT NULL,
    station        TEXT NOT NULL,
    operator       TEXT NOT NULL,
    parameters     TEXT NOT NULL,
    started_us     INTEGER NOT NULL,
    ended_us       INTEGER,
    state          TEXT NOT NULL CHECK (state IN ('running', 'finished')),
    verdict        TEXT CHECK (verdict IN ('pass', 'fail', 'error', 'aborted', 'interrupted')),
    -- Last event sequence number handed out for this run.
    last_seq       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_started ON runs (started_us);
CREATE INDEX runs_dut ON runs (dut_serial, started_us);
CREATE INDEX runs_recipe ON runs (recipe_name, started_us);
CREATE INDEX runs_station ON runs (station, started_us);
CREATE INDEX runs_verdict ON runs (verdict, started_us);
-- Small: only the runs still going, for mark_interrupted.
CREATE INDEX runs_running ON runs (state) WHERE state = 'running';

CREATE TABLE steps (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    idx        INTEGER NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT CHECK (status IN ('pass', 'fail', 'error', 'skipped', 'aborted', 'interrupted')),
    message    TEXT,
    started_us INTEGER NOT NULL,
    ended_us   INTEGER
);
CREATE INDEX steps_run ON steps (run_id, idx);

CREATE TABLE measurements (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    step_id      INTEGER NOT NULL REFERENCES steps (id),
    name         TEXT NOT NULL,
    value        REAL,
    invalid      TEXT,
    unit         TEXT NOT NULL,
    lim_min      REAL,
    lim_max      REAL,
    lim_nominal  REAL,
    lim_mmin     REAL,
    lim_mmax     REAL,
    verdict      TEXT CHECK (verdict IN ('pass', 'marginal', 'fail')),
    taken_us     INTEGER NOT NULL,
    raw          TEXT,
    -- Exactly one of a number and an invalid marker.
    CHECK ((value IS NULL) <> (invalid IS NULL))
);
CREATE INDEX measurements_run ON measurements (run_id);
CREATE INDEX measurements_name ON measurements (name, taken_us);
CREATE INDEX measurements_taken ON measurements (taken_us);

CREATE TABLE events (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    seq     INTEGER NOT NULL,
    at_us   INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
];

/// The schema version this binary writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database at `path` up to [`latest_version`]; returns the version found before.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let supported = latest_version();
    if found > supported {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            op: "read schema version",
            detail: format!("negative user_version {found}"),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let fail = |source| StoreError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        // PRAGMA takes no bound parameters; `version` is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(found)
}
