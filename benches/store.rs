//! Results store figures: write rate through the handle vs bare rusqlite, a 1 kHz measurement
//! stream durable at each step boundary, query latency on a large dataset, and run-list paging. Prints figures; asserts nothing.
//!
//! `LABGATE_BENCH_SCALE` (default 1.0) scales every dataset: 1.0 = 1,000,000 measurements over
//! 20,000 runs, and 100,000 runs for paging; 0.05 is a quick smoke run.
//! Run: `cargo bench --bench store` (or `--profile dev` for a quick unoptimized look).

use std::time::{Duration, Instant, SystemTime};

use labgate::store::*;
use rusqlite::{Connection, params};

const MEASUREMENTS_PER_STEP: usize = 10;
const STEPS_PER_RUN: usize = 5;
const RECIPES: usize = 10;
const STATIONS: usize = 8;
/// Seconds between run starts in the generated history (about a year for 20,000 runs... ish).
const RUN_SPACING_S: i64 = 600;

fn scale() -> f64 {
    std::env::var("LABGATE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0)
}

/// Small deterministic generator so runs are comparable without a rand dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

type MakeFilter<'a> = Box<dyn Fn(&mut Lcg) -> MeasurementFilter + 'a>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn new_run(i: usize) -> NewRun {
    NewRun {
        recipe_name: format!("recipe-{}", i % RECIPES),
        recipe_version: "1.0.0".into(),
        recipe_hash: "sha256:0123456789abcdef".into(),
        dut_serial: format!("SN{:07}", i / 2),
        station: format!("bench-{}", i % STATIONS),
        operator: "bench".into(),
        parameters: serde_json::json!({"voltage": 230.0}),
    }
}

fn measurement(step: StepId, i: usize) -> NewMeasurement {
    NewMeasurement {
        step_id: step,
        name: format!("q{}", i % 8),
        value: Some(10.0 + (i % 100) as f64 * 0.01),
        invalid: None,
        unit: "W".into(),
        limits: Limits {
            min: Some(9.0),
            max: Some(11.0),
            nominal: Some(10.0),
            marginal_min: None,
            marginal_max: None,
        },
        verdict: Some(Verdict::Pass),
        taken_at: SystemTime::now(),
        raw: Some("1.0000E+01".into()),
    }
}

fn bare_connection(path: &std::path::Path) -> Connection {
    let c = Connection::open(path).expect("open bare");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .unwrap();
    c
}

/// (a) Sustained add_measurement rate through the handle vs the same committed inserts bare.
fn write_rate(rt: &tokio::runtime::Runtime, n: usize) {
    println!("== (a) write rate, {n} measurements, one commit each ==");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("write.db");
    let store = Store::open(&path).unwrap();
    let (handle_secs, lat) = rt.block_on(async {
        let run = store.create_run(new_run(0)).await.unwrap();
        let step = store.start_step(run, 0, "s", "read").await.unwrap();
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            store.add_measurement(measurement(step, i)).await.unwrap();
            lat.push(t.elapsed());
        }
        (t0.elapsed().as_secs_f64(), lat)
    });
    drop(store);

    // The same statement the store runs, autocommitted once per row, same pragmas.
    let conn = bare_connection(&path);
    conn.execute(
        "INSERT INTO runs (recipe_name, recipe_version, recipe_hash, dut_serial, station, operator,
                           parameters, started_us, state)
         VALUES ('r', '1', 'h', 'SN', 'b', 'o', '{}', 0, 'running')",
        [],
    )
    .unwrap();
    let run = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO steps (run_id, idx, name, kind, started_us) VALUES (?1, 0, 's', 'read', 0)",
        [run],
    )
    .unwrap();
    let step = conn.last_insert_rowid();
    let t0 = Instant::now();
    for i in 0..n {
        let m = measurement(StepId(step), i);
        let taken = m
            .taken_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        conn.prepare_cached(
            "INSERT INTO measurements (run_id, step_id, name, value, invalid, unit, lim_min, lim_max,
                                       lim_nominal, lim_mmin, lim_mmax, verdict, taken_us, raw)
             SELECT s.run_id, s.id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
             FROM steps s JOIN runs r ON r.id = s.run_id
             WHERE s.id = ?1 AND r.state = 'running'",
        )
        .unwrap()
        .execute(params![
            step,
            m.name,
            m.value,
            m.invalid,
            m.unit,
            m.limits.min,
            m.limits.max,
            m.limits.nominal,
            m.limits.marginal_min,
            m.limits.marginal_max,
            "pass",
            taken,
            m.raw
        ])
        .unwrap();
    }
    let bare_secs = t0.elapsed().as_secs_f64();

    let mut lat = lat;
    lat.sort();
    let handle_rate = n as f64 / handle_secs;
    let bare_rate = n as f64 / bare_secs;
    println!("handle: {handle_rate:>10.0} /s");
    println!("bare:   {bare_rate:>10.0} /s");
    println!("ratio handle/bare: {:.2}", handle_rate / bare_rate);
    println!(
        "handle latency p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0))
    );
    println!(
        "keeps up with 1 kHz (one awaited write per ms): {}",
        if handle_rate >= 1000.0 && percentile(&lat, 0.99) < Duration::from_millis(1) {
            "yes"
        } else if handle_rate >= 1000.0 {
            "on average (p99 above 1 ms)"
        } else {
            "no"
        }
    );
}

/// Measurements per step in the 1 kHz stream: a step boundary every 0.1 s.
const STREAM_STEP: usize = 100;

/// (d) A 1 kHz measurement stream, durable at each step boundary: every measurement awaited
/// (committed, so safe from a process crash) and each step finished with a WAL sync (safe from
/// a power cut), first paced at 1 kHz, then as fast as it goes against the same commits and
/// syncs done bare.
fn stream(rt: &tokio::runtime::Runtime, secs: f64) {
    let n = ((secs * 1000.0) as usize).max(STREAM_STEP);
    println!(
        "== (d) 1 kHz stream, {n} measurements, {STREAM_STEP} per step, WAL synced at each step end =="
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // On the repository's disk, not a tmpfs, so syncs cost what they cost.
    let dir = tempfile::tempdir_in(root.join("target")).unwrap();
    let store = Store::open(dir.path().join("stream.db")).unwrap();
    let (paced, lag, lat) = rt.block_on(async {
        let run = store.create_run(new_run(0)).await.unwrap();
        let mut step = store.start_step(run, 0, "s0", "measure").await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut lat = Vec::with_capacity(n);
        let mut lag = Duration::ZERO;
        let t0 = Instant::now();
        for i in 0..n {
            let due = tick.tick().await;
            lag = lag.max(due.elapsed());
            let t = Instant::now();
            store.add_measurement(measurement(step, i)).await.unwrap();
            if (i + 1) % STREAM_STEP == 0 {
                store
                    .finish_step(step, StepStatus::Pass, None)
                    .await
                    .unwrap();
                let k = (i + 1) / STREAM_STEP;
                step = store
                    .start_step(run, k as i64, &format!("s{k}"), "measure")
                    .await
                    .unwrap();
            }
            lat.push(t.elapsed());
        }
        (n as f64 / t0.elapsed().as_secs_f64(), lag, lat)
    });
    let mut lat = lat;
    lat.sort();
    println!(
        "paced at 1 kHz: achieved {paced:.0} /s, worst lag behind schedule {}, per-measurement p50 {} p99 {} max {} (incl. step ends)",
        ms(lag),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0))
    );
    println!(
        "keeps up with 1 kHz: {}",
        if paced >= 990.0 && lag < Duration::from_millis(100) {
            "yes"
        } else {
            "NO"
        }
    );

    // Unpaced, handle vs bare, alternating rounds of 10 steps each.
    let rounds = 6;
    let per_round = 10 * STREAM_STEP;
    let (mut handle_r, mut bare_r, mut batch_r) = (Vec::new(), Vec::new(), Vec::new());
    let bare_path = dir.path().join("stream-bare.db");
    drop(Store::open(&bare_path).unwrap());
    let conn = bare_connection(&bare_path);
    conn.execute(
        "INSERT INTO runs (recipe_name, recipe_version, recipe_hash, dut_serial, station, operator,
                           parameters, started_us, state)
         VALUES ('r', '1', 'h', 'SN', 'b', 'o', '{}', 0, 'running')",
        [],
    )
    .unwrap();
    let bare_run = conn.last_insert_rowid();
    let mut bare_step_idx = 0i64;
    for _ in 0..rounds {
        let h = rt.block_on(async {
            let run = store.create_run(new_run(1)).await.unwrap();
            let t0 = Instant::now();
            for k in 0..per_round / STREAM_STEP {
                let step = store
                    .start_step(run, k as i64, "s", "measure")
                    .await
                    .unwrap();
                for i in 0..STREAM_STEP {
                    store.add_measurement(measurement(step, i)).await.unwrap();
                }
                store
                    .finish_step(step, StepStatus::Pass, None)
                    .await
                    .unwrap();
            }
            per_round as f64 / t0.elapsed().as_secs_f64()
        });
        handle_r.push(h);
        let b = rt.block_on(async {
            let run = store.create_run(new_run(1)).await.unwrap();
            let t0 = Instant::now();
            for k in 0..per_round / STREAM_STEP {
                let step = store
                    .start_step(run, k as i64, "s", "measure")
                    .await
                    .unwrap();
                let ms: Vec<_> = (0..STREAM_STEP).map(|i| measurement(step, i)).collect();
                store.add_measurements(ms).await.unwrap();
                store
                    .finish_step(step, StepStatus::Pass, None)
                    .await
                    .unwrap();
            }
            per_round as f64 / t0.elapsed().as_secs_f64()
        });
        batch_r.push(b);
        // Bare: the same rows, one autocommit each, and a FULL-sync commit at each step end.
        let t0 = Instant::now();
        for _ in 0..per_round / STREAM_STEP {
            bare_step_idx += 1;
            conn.prepare_cached(
                "INSERT INTO steps (run_id, idx, name, kind, started_us) VALUES (?1, ?2, 's', 'measure', 0)",
            )
            .unwrap()
            .execute(params![bare_run, bare_step_idx])
            .unwrap();
            let step = conn.last_insert_rowid();
            for i in 0..STREAM_STEP {
                let m = measurement(StepId(step), i);
                conn.prepare_cached(
                    "INSERT INTO measurements (run_id, step_id, name, value, unit, lim_min, lim_max,
                                               lim_nominal, verdict, taken_us, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pass', ?9, ?10)",
                )
                .unwrap()
                .execute(params![
                    bare_run,
                    step,
                    m.name,
                    m.value,
                    m.unit,
                    m.limits.min,
                    m.limits.max,
                    m.limits.nominal,
                    i as i64,
                    m.raw
                ])
                .unwrap();
            }
            conn.execute_batch("PRAGMA synchronous = FULL").unwrap();
            conn.prepare_cached("UPDATE steps SET status = 'pass', ended_us = 1 WHERE id = ?1")
                .unwrap()
                .execute([step])
                .unwrap();
            conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
        }
        bare_r.push(per_round as f64 / t0.elapsed().as_secs_f64());
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = handle_r.iter().zip(&bare_r).map(|(h, b)| h / b).collect();
    println!(
        "unpaced, one commit per measurement: handle {:>8.0} /s   bare rusqlite {:>8.0} /s   ratio (per-round median) {:.2}",
        med(&handle_r),
        med(&bare_r),
        med(&ratios)
    );
    println!(
        "unpaced, one add_measurements per step: handle {:>8.0} /s   ({:.1}x the per-measurement handle)",
        med(&batch_r),
        med(&batch_r) / med(&handle_r)
    );
}

/// Fills a fresh store (schema from `Store::open`) in one transaction.
fn generate(path: &std::path::Path, runs: usize, with_measurements: bool) -> i64 {
    drop(Store::open(path).unwrap());
    let mut conn = bare_connection(path);
    let mut rng = Lcg(42);
    let t0 = Instant::now();
    let base_us: i64 = 1_767_225_600_000_000; // 2026-01-01
    let tx = conn.transaction().unwrap();
    {
        let mut run_st = tx
            .prepare(
                "INSERT INTO runs (id, recipe_name, recipe_version, recipe_hash, dut_serial, station,
                                   operator, parameters, started_us, ended_us, state, verdict, last_seq)
                 VALUES (?1, ?2, '1.0.0', 'sha256:0123', ?3, ?4, 'op', '{\"voltage\":230}', ?5, ?6,
                         'finished', ?7, 2)",
            )
            .unwrap();
        let mut step_st = tx
            .prepare(
                "INSERT INTO steps (id, run_id, idx, name, kind, status, started_us, ended_us)
                 VALUES (?1, ?2, ?3, 'step', 'read', 'pass', ?4, ?5)",
            )
            .unwrap();
        let mut m_st = tx
            .prepare(
                "INSERT INTO measurements (run_id, step_id, name, value, unit, lim_min, lim_max,
                                           verdict, taken_us, raw)
                 VALUES (?1, ?2, ?3, ?4, 'W', 9.0, 11.0, ?5, ?6, '1.0E+01')",
            )
            .unwrap();
        let mut ev_st = tx
            .prepare(
                "INSERT INTO events (run_id, seq, at_us, kind, payload) VALUES (?1, ?2, ?3, ?4, '{}')",
            )
            .unwrap();
        let names: Vec<String> = (0..MEASUREMENTS_PER_STEP)
            .map(|i| format!("q{i}"))
            .collect();
        let mut step_id = 0i64;
        for i in 0..runs {
            let id = i as i64 + 1;
            let start = base_us + id * RUN_SPACING_S * 1_000_000;
            let verdict = match rng.below(100) {
                0..=89 => "pass",
                90..=96 => "fail",
                97..=98 => "error",
                _ => "aborted",
            };
            let end = start + 300_000_000;
            run_st
                .execute(params![
                    id,
                    format!("recipe-{}", rng.below(RECIPES)),
                    format!("SN{:07}", i / 2),
                    format!("bench-{}", rng.below(STATIONS)),
                    start,
                    end,
                    verdict
                ])
                .unwrap();
            ev_st.execute(params![id, 1, start, "run_started"]).unwrap();
            ev_st.execute(params![id, 2, end, "run_finished"]).unwrap();
            if !with_measurements {
                continue;
            }
            for s in 0..STEPS_PER_RUN {
                step_id += 1;
                let s_start = start + s as i64 * 60_000_000;
                step_st
                    .execute(params![
                        step_id,
                        id,
                        s as i64,
                        s_start,
                        s_start + 60_000_000
                    ])
                    .unwrap();
                for (k, name) in names.iter().enumerate() {
                    let v = 10.0 + rng.below(200) as f64 * 0.01 - 1.0;
                    let verdict = if (9.0..=11.0).contains(&v) {
                        "pass"
                    } else {
                        "fail"
                    };
                    m_st.execute(params![
                        id,
                        step_id,
                        name,
                        v,
                        verdict,
                        s_start + k as i64 * 1_000_000
                    ])
                    .unwrap();
                }
            }
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("ANALYZE").unwrap();
    println!(
        "generated {runs} runs{} in {:.1} s",
        if with_measurements {
            format!(
                ", {} measurements",
                runs * STEPS_PER_RUN * MEASUREMENTS_PER_STEP
            )
        } else {
            String::new()
        },
        t0.elapsed().as_secs_f64()
    );
    base_us
}

fn report(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "{label:<34} p50 {:>10}  p99 {:>10}  {}",
        ms(percentile(&lat, 0.5)),
        ms(p99),
        if p99 < Duration::from_millis(50) {
            "ok (< 50 ms)"
        } else {
            "SLOW (>= 50 ms)"
        }
    );
}

async fn time_filter(
    store: &Store,
    iters: usize,
    mut make: impl FnMut(usize) -> RunFilter,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(iters);
    for i in 0..iters {
        let f = make(i);
        let t = Instant::now();
        let page = store.list_runs(&f).await.unwrap();
        lat.push(t.elapsed());
        std::hint::black_box(page);
    }
    lat
}

/// (b) list_runs with each filter and get_run on the big dataset.
fn query_latency(rt: &tokio::runtime::Runtime, runs: usize) {
    println!("== (b) queries, {runs} runs ==");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let base = generate(&path, runs, true);
    let store = Store::open(&path).unwrap();
    let iters = 200;
    let at = |us: i64| SystemTime::UNIX_EPOCH + Duration::from_micros(us as u64);
    rt.block_on(async {
        let mut rng = Lcg(7);
        report(
            "list_runs (no filter)",
            time_filter(&store, iters, |_| RunFilter::default()).await,
        );
        report(
            "list_runs dut",
            time_filter(&store, iters, |_| RunFilter {
                dut: Some(format!("SN{:07}", rng.below(runs / 2))),
                ..Default::default()
            })
            .await,
        );
        let mut rng = Lcg(8);
        report(
            "list_runs recipe",
            time_filter(&store, iters, |_| RunFilter {
                recipe: Some(format!("recipe-{}", rng.below(RECIPES))),
                ..Default::default()
            })
            .await,
        );
        let mut rng = Lcg(9);
        report(
            "list_runs station",
            time_filter(&store, iters, |_| RunFilter {
                station: Some(format!("bench-{}", rng.below(STATIONS))),
                ..Default::default()
            })
            .await,
        );
        report(
            "list_runs verdict=fail",
            time_filter(&store, iters, |_| RunFilter {
                verdict: Some(RunVerdict::Fail),
                ..Default::default()
            })
            .await,
        );
        report(
            "list_runs verdict=aborted",
            time_filter(&store, iters, |_| RunFilter {
                verdict: Some(RunVerdict::Aborted),
                ..Default::default()
            })
            .await,
        );
        let mut rng = Lcg(10);
        let span = runs as i64 * RUN_SPACING_S * 1_000_000;
        report(
            "list_runs time range (1 day)",
            time_filter(&store, iters, |_| {
                let from = base + (rng.next() as i64 % span.max(1));
                RunFilter {
                    from: Some(at(from)),
                    to: Some(at(from + 86_400_000_000)),
                    ..Default::default()
                }
            })
            .await,
        );
        let mut rng = Lcg(11);
        report(
            "list_runs recipe+station+fail",
            time_filter(&store, iters, |_| RunFilter {
                recipe: Some(format!("recipe-{}", rng.below(RECIPES))),
                station: Some(format!("bench-{}", rng.below(STATIONS))),
                verdict: Some(RunVerdict::Fail),
                ..Default::default()
            })
            .await,
        );
        let mut rng = Lcg(12);
        report(
            "list_runs station+time (30 days)",
            time_filter(&store, iters, |_| {
                let from = base + (rng.next() as i64 % span.max(1));
                RunFilter {
                    station: Some(format!("bench-{}", rng.below(STATIONS))),
                    from: Some(at(from)),
                    to: Some(at(from + 30 * 86_400_000_000)),
                    ..Default::default()
                }
            })
            .await,
        );

        let mut rng = Lcg(13);
        let mut lat = Vec::with_capacity(iters);
        for _ in 0..iters {
            let id = RunId(rng.below(runs) as i64 + 1);
            let t = Instant::now();
            let d = store.get_run(id).await.unwrap();
            lat.push(t.elapsed());
            assert!(d.is_some());
        }
        report("get_run (50 measurements)", lat);

        let mut rng = Lcg(14);
        let mut lat = Vec::with_capacity(iters);
        for _ in 0..iters {
            let f = MeasurementFilter {
                name: Some(format!("q{}", rng.below(MEASUREMENTS_PER_STEP))),
                dut: Some(format!("SN{:07}", rng.below(runs / 2))),
                ..Default::default()
            };
            let t = Instant::now();
            std::hint::black_box(store.measurements(&f).await.unwrap());
            lat.push(t.elapsed());
        }
        report("measurements name+dut", lat);

        let mut rng = Lcg(15);
        let cases: [(&str, MakeFilter<'_>); 4] = [
            (
                "measurements name",
                Box::new(|rng: &mut Lcg| MeasurementFilter {
                    name: Some(format!("q{}", rng.below(MEASUREMENTS_PER_STEP))),
                    ..Default::default()
                }),
            ),
            (
                "measurements name+recipe",
                Box::new(|rng: &mut Lcg| MeasurementFilter {
                    name: Some("q3".into()),
                    recipe: Some(format!("recipe-{}", rng.below(RECIPES))),
                    ..Default::default()
                }),
            ),
            (
                "measurements recipe",
                Box::new(|rng: &mut Lcg| MeasurementFilter {
                    recipe: Some(format!("recipe-{}", rng.below(RECIPES))),
                    ..Default::default()
                }),
            ),
            (
                "measurements time range (1 day)",
                Box::new(|rng: &mut Lcg| {
                    let from = base + (rng.next() as i64 % span.max(1));
                    MeasurementFilter {
                        from: Some(at(from)),
                        to: Some(at(from + 86_400_000_000)),
                        ..Default::default()
                    }
                }),
            ),
        ];
        for (label, make) in cases {
            let mut lat = Vec::with_capacity(iters);
            for _ in 0..iters / 4 {
                let f = make(&mut rng);
                let t = Instant::now();
                std::hint::black_box(store.measurements(&f).await.unwrap());
                lat.push(t.elapsed());
            }
            report(label, lat);
        }
    });
}

/// (c) Paging through every run, 100 per page.
fn paging(rt: &tokio::runtime::Runtime, runs: usize) {
    println!("== (c) paging, {runs} runs, 100 per page ==");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paging.db");
    generate(&path, runs, false);
    let store = Store::open(&path).unwrap();
    rt.block_on(async {
        for (label, base) in [
            ("page through all runs", RunFilter::default()),
            (
                "page through one station",
                RunFilter {
                    station: Some("bench-3".into()),
                    ..Default::default()
                },
            ),
        ] {
            let mut f = RunFilter { limit: 100, ..base };
            let mut lat = Vec::new();
            let mut seen = 0usize;
            for _ in 0..runs {
                let t = Instant::now();
                let page = store.list_runs(&f).await.unwrap();
                lat.push(t.elapsed());
                seen += page.items.len();
                match page.next_cursor {
                    Some(c) => f.cursor = Some(c),
                    None => break,
                }
            }
            println!("{label}: {} pages, {seen} runs", lat.len());
            report(label, lat);
        }
    });
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let s = scale();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("LABGATE_BENCH_SCALE = {s}");
    write_rate(&rt, ((20_000.0 * s) as usize).max(1000));
    stream(&rt, (5.0 * s).max(1.0));
    query_latency(&rt, ((20_000.0 * s) as usize).max(100));
    paging(&rt, ((100_000.0 * s) as usize).max(1000));
}
