//! The results store through its public API: migrations, writes, filters, paging, events,
//! exports and crash recovery bookkeeping. Every test runs on a fresh file in a temp directory.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use labgate::store::*;

/// Generous: a loaded 2-core machine may be slow, but nothing here should take seconds.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test body timed out")
}

fn new_run(dut: &str, recipe: &str, station: &str) -> NewRun {
    NewRun {
        recipe_name: recipe.into(),
        recipe_version: "1.2.0".into(),
        recipe_hash: "sha256:abc".into(),
        dut_serial: dut.into(),
        station: station.into(),
        operator: "li".into(),
        parameters: serde_json::json!({"voltage": 230.0, "warmup": "15min"}),
    }
}

fn meas(step: StepId, name: &str, value: f64) -> NewMeasurement {
    NewMeasurement {
        step_id: step,
        name: name.into(),
        value: Some(value),
        invalid: None,
        unit: "W".into(),
        limits: Limits {
            min: Some(9.0),
            max: Some(11.0),
            nominal: Some(10.0),
            marginal_min: Some(9.5),
            marginal_max: Some(10.5),
        },
        verdict: Some(Verdict::Pass),
        taken_at: SystemTime::now(),
        raw: Some(format!("{value:E}")),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir.join("results.db")).expect("open store")
}

async fn all_runs(store: &Store, mut filter: RunFilter) -> Vec<RunSummary> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = store.list_runs(&filter).await.expect("list runs");
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

#[tokio::test]
async fn migrates_from_empty_and_creates_directories() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/sub/results.db");
        let store = Store::open(&path).expect("open");
        assert!(path.exists());
        assert!(
            store
                .list_runs(&RunFilter::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, migrate::latest_version());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    })
    .await
}

#[tokio::test]
async fn reopen_keeps_data() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN1", "lm79", "bench-1"))
            .await
            .unwrap();
        let step = store.start_step(run, 0, "warm up", "wait").await.unwrap();
        let m = store.add_measurement(meas(step, "P", 10.0)).await.unwrap();
        drop(store);

        let store = open(dir.path());
        let detail = store.get_run(run).await.unwrap().expect("run kept");
        assert_eq!(detail.measurements.len(), 1);
        assert_eq!(detail.measurements[0].id, m);
        assert_eq!(detail.run.dut_serial, "SN1");
        assert_eq!(detail.parameters["voltage"], 230.0);
    })
    .await
}

#[tokio::test]
async fn newer_schema_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    drop(Store::open(&path).unwrap());
    let newer = migrate::latest_version() + 1;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == newer),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn list_runs_filters() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // (dut, recipe, station, verdict or still running)
        let plan = [
            ("SN1", "lm79", "b1", Some(RunVerdict::Pass)),
            ("SN2", "lm79", "b2", Some(RunVerdict::Fail)),
            ("SN1", "motor", "b1", Some(RunVerdict::Error)),
            ("SN3", "motor", "b2", None),
            ("SN1", "lm79", "b2", Some(RunVerdict::Fail)),
            ("SN4", "cct", "b3", Some(RunVerdict::Aborted)),
        ];
        let mut ids = Vec::new();
        for (dut, recipe, station, verdict) in plan {
            let id = store
                .create_run(new_run(dut, recipe, station))
                .await
                .unwrap();
            if let Some(v) = verdict {
                store.finish_run(id, v).await.unwrap();
            }
            ids.push(id);
        }
        let pick = |f: &dyn Fn(usize) -> bool| -> Vec<RunId> {
            let mut v: Vec<RunId> = (0..plan.len()).filter(|&i| f(i)).map(|i| ids[i]).collect();
            v.reverse(); // newest first
            v
        };
        let list = |filter: RunFilter| {
            let store = store.clone();
            async move {
                all_runs(&store, filter)
                    .await
                    .into_iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>()
            }
        };

        assert_eq!(list(RunFilter::default()).await, pick(&|_| true));
        let by_dut = RunFilter {
            dut: Some("SN1".into()),
            ..Default::default()
        };
        assert_eq!(list(by_dut).await, pick(&|i| plan[i].0 == "SN1"));
        let by_recipe = RunFilter {
            recipe: Some("motor".into()),
            ..Default::default()
        };
        assert_eq!(list(by_recipe).await, pick(&|i| plan[i].1 == "motor"));
        let by_station = RunFilter {
            station: Some("b2".into()),
            ..Default::default()
        };
        assert_eq!(list(by_station).await, pick(&|i| plan[i].2 == "b2"));
        let by_verdict = RunFilter {
            verdict: Some(RunVerdict::Fail),
            ..Default::default()
        };
        assert_eq!(
            list(by_verdict).await,
            pick(&|i| plan[i].3 == Some(RunVerdict::Fail))
        );
        let combined = RunFilter {
            dut: Some("SN1".into()),
            station: Some("b2".into()),
            verdict: Some(RunVerdict::Fail),
            ..Default::default()
        };
        assert_eq!(list(combined).await, vec![ids[4]]);
        let none = RunFilter {
            dut: Some("nobody".into()),
            ..Default::default()
        };
        assert!(list(none).await.is_empty());

        // Time range: [from, to) on the start time, checked against the stored start times.
        let runs = all_runs(&store, RunFilter::default()).await;
        let from = runs[4].started_at; // second oldest
        let to = runs[1].started_at; // second newest
        let expect: Vec<RunId> = runs
            .iter()
            .filter(|r| r.started_at >= from && r.started_at < to)
            .map(|r| r.id)
            .collect();
        assert!(expect.contains(&ids[1]) && !expect.contains(&ids[5]));
        let ranged = RunFilter {
            from: Some(from),
            to: Some(to),
            ..Default::default()
        };
        assert_eq!(list(ranged).await, expect);
        let running = runs.iter().find(|r| r.id == ids[3]).unwrap();
        assert_eq!(running.state, RunState::Running);
        assert_eq!(running.verdict, None);
        assert!(running.ended_at.is_none());
    })
    .await
}

#[tokio::test]
async fn cursor_paging_has_no_gaps_or_duplicates() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut ids = Vec::new();
        for i in 0..57 {
            let dut = if i % 3 == 0 { "SN-A" } else { "SN-B" };
            ids.push(store.create_run(new_run(dut, "lm79", "b1")).await.unwrap());
        }
        let mut filter = RunFilter {
            limit: 10,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.list_runs(&filter).await.unwrap();
            assert!(page.items.len() <= 10);
            seen.extend(page.items.iter().map(|r| r.id));
            pages += 1;
            // Runs added while paging are newer than the cursor: they must not shift later pages.
            if pages == 2 {
                store
                    .create_run(new_run("SN-A", "lm79", "b1"))
                    .await
                    .unwrap();
            }
            match page.next_cursor {
                Some(c) => filter.cursor = Some(c),
                None => break,
            }
            assert!(pages < 20, "paging did not end");
        }
        assert_eq!(pages, 6);
        let mut expect = ids.clone();
        expect.reverse();
        assert_eq!(seen, expect);

        let a: Vec<RunId> = all_runs(
            &store,
            RunFilter {
                dut: Some("SN-A".into()),
                limit: 4,
                ..Default::default()
            },
        )
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
        let unique: HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), a.len());
        assert_eq!(a.len(), 19 + 1);
        assert!(a.windows(2).all(|w| w[0] > w[1]));

        let bad = RunFilter {
            cursor: Some("nonsense".into()),
            ..Default::default()
        };
        assert!(matches!(
            store.list_runs(&bad).await,
            Err(StoreError::BadCursor { .. })
        ));
    })
    .await
}

#[tokio::test]
async fn get_run_keeps_order_and_invalid_markers() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN9", "lm79", "b1"))
            .await
            .unwrap();
        let s0 = store.start_step(run, 0, "power on", "set").await.unwrap();
        let a = store.add_measurement(meas(s0, "U", 230.1)).await.unwrap();
        store.finish_step(s0, StepStatus::Pass, None).await.unwrap();
        let s1 = store.start_step(run, 1, "measure", "read").await.unwrap();
        let b = store.add_measurement(meas(s1, "P", 10.2)).await.unwrap();
        let over = NewMeasurement {
            value: None,
            invalid: Some("overrange".into()),
            verdict: Some(Verdict::Fail),
            raw: Some("9.9E+37".into()),
            limits: Limits::default(),
            ..meas(s1, "I", 0.0)
        };
        let c = store.add_measurement(over).await.unwrap();
        let batch = store
            .add_measurements(vec![meas(s1, "PF", 0.95), meas(s1, "lm", 812.0)])
            .await
            .unwrap();
        store
            .finish_step(s1, StepStatus::Fail, Some("I overrange"))
            .await
            .unwrap();
        store.finish_run(run, RunVerdict::Fail).await.unwrap();

        let d = store.get_run(run).await.unwrap().unwrap();
        assert_eq!(d.run.state, RunState::Finished);
        assert_eq!(d.run.verdict, Some(RunVerdict::Fail));
        assert!(d.run.ended_at.is_some());
        let steps: Vec<_> = d.steps.iter().map(|s| (s.index, s.status)).collect();
        assert_eq!(
            steps,
            vec![(0, Some(StepStatus::Pass)), (1, Some(StepStatus::Fail))]
        );
        assert_eq!(d.steps[1].message.as_deref(), Some("I overrange"));
        let got: Vec<_> = d.measurements.iter().map(|m| m.id).collect();
        assert_eq!(got, vec![a, b, c, batch[0], batch[1]]);
        let names: Vec<_> = d.measurements.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["U", "P", "I", "PF", "lm"]);
        let i = &d.measurements[2];
        assert_eq!(i.value, None);
        assert_eq!(i.invalid.as_deref(), Some("overrange"));
        assert_eq!(i.raw.as_deref(), Some("9.9E+37"));
        assert_eq!(i.verdict, Some(Verdict::Fail));
        assert!(i.limits.is_empty());
        let p = &d.measurements[1];
        assert_eq!(p.value, Some(10.2));
        assert_eq!(p.limits.marginal_max, Some(10.5));
        assert_eq!(p.step_id, s1);
        assert_eq!(p.run_id, run);

        assert!(store.get_run(RunId(9999)).await.unwrap().is_none());
    })
    .await
}

#[tokio::test]
async fn bad_writes_are_refused_with_typed_errors() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        let step = store.start_step(run, 0, "read", "read").await.unwrap();

        let nan = store.add_measurement(meas(step, "P", f64::NAN)).await;
        assert!(
            matches!(nan, Err(StoreError::InvalidMeasurement { .. })),
            "{nan:?}"
        );
        let both = NewMeasurement {
            invalid: Some("no_data".into()),
            ..meas(step, "P", 1.0)
        };
        let both = store.add_measurement(both).await;
        assert!(matches!(both, Err(StoreError::InvalidMeasurement { .. })));
        let neither = NewMeasurement {
            value: None,
            ..meas(step, "P", 1.0)
        };
        assert!(store.add_measurement(neither).await.is_err());
        // One bad item refuses the whole batch.
        let batch = store
            .add_measurements(vec![meas(step, "a", 1.0), meas(step, "b", f64::INFINITY)])
            .await;
        assert!(batch.is_err());
        assert!(
            store
                .get_run(run)
                .await
                .unwrap()
                .unwrap()
                .measurements
                .is_empty()
        );

        let unknown = store.add_measurement(meas(StepId(777), "P", 1.0)).await;
        assert!(
            matches!(unknown, Err(StoreError::StepNotFound { .. })),
            "{unknown:?}"
        );
        assert!(matches!(
            store.start_step(RunId(777), 0, "x", "y").await,
            Err(StoreError::RunNotFound { .. })
        ));

        store
            .finish_step(step, StepStatus::Pass, None)
            .await
            .unwrap();
        assert!(matches!(
            store.finish_step(step, StepStatus::Pass, None).await,
            Err(StoreError::StepFinished { .. })
        ));
        store.finish_run(run, RunVerdict::Pass).await.unwrap();
        let late = store.add_measurement(meas(step, "P", 1.0)).await;
        assert!(
            matches!(late, Err(StoreError::RunFinished { .. })),
            "{late:?}"
        );
        assert!(matches!(
            store.finish_run(run, RunVerdict::Fail).await,
            Err(StoreError::RunFinished { .. })
        ));
        let d = store.get_run(run).await.unwrap().unwrap();
        assert_eq!(d.run.verdict, Some(RunVerdict::Pass));
    })
    .await
}

#[tokio::test]
async fn events_resume_after_any_sequence_number() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        let other = store
            .create_run(new_run("SN2", "lm79", "b1"))
            .await
            .unwrap();
        let mut seqs = Vec::new();
        for i in 0..5 {
            let seq = store
                .add_event(run, "step_started", serde_json::json!({ "index": i }))
                .await
                .unwrap();
            seqs.push(seq);
            store
                .add_event(other, "noise", serde_json::json!(null))
                .await
                .unwrap();
        }
        // seq 1 is the store's own run_started event.
        assert_eq!(seqs, vec![2, 3, 4, 5, 6]);

        let all = store.events_since(run, 0).await.unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].kind, event_kind::RUN_STARTED);
        assert_eq!(all[0].payload["dut_serial"], "SN1");
        assert!(all.iter().all(|e| e.run_id == run));

        let resumed = store.events_since(run, 3).await.unwrap();
        let got: Vec<i64> = resumed.iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![4, 5, 6]);
        assert_eq!(resumed[0].payload["index"], 2);
        assert!(store.events_since(run, 6).await.unwrap().is_empty());

        store.finish_run(run, RunVerdict::Pass).await.unwrap();
        let tail = store.events_since(run, 6).await.unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].seq, 7);
        assert_eq!(tail[0].kind, event_kind::RUN_FINISHED);
        assert_eq!(tail[0].payload["verdict"], "pass");

        assert_eq!(store.events_since(other, 0).await.unwrap().len(), 6);
        assert!(matches!(
            store
                .add_event(RunId(999), "x", serde_json::json!({}))
                .await,
            Err(StoreError::RunNotFound { .. })
        ));
    })
    .await
}

#[tokio::test]
async fn exports_round_trip_and_quote() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN,\"7\"", "lm79", "b1"))
            .await
            .unwrap();
        let step = store.start_step(run, 0, "read, all", "read").await.unwrap();
        let mut m = meas(step, "P", 10.25);
        m.raw = Some("10.25,\"W\"\nnext".into());
        store.add_measurement(m).await.unwrap();
        let over = NewMeasurement {
            value: None,
            invalid: Some("no_data".into()),
            ..meas(step, "lm", 0.0)
        };
        store.add_measurement(over).await.unwrap();
        store
            .finish_step(step, StepStatus::Pass, None)
            .await
            .unwrap();
        store.finish_run(run, RunVerdict::Pass).await.unwrap();
        let empty = store
            .create_run(new_run("SN8", "lm79", "b1"))
            .await
            .unwrap();

        let d = store.get_run(run).await.unwrap().unwrap();
        let json = export_json(&d).unwrap();
        let back: RunDetail = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);

        let e = store.get_run(empty).await.unwrap().unwrap();
        let csv_text = export_csv(&[d.clone(), e]).unwrap();
        assert!(csv_text.starts_with("run_id,recipe_name,"));
        assert!(csv_text.contains("\"SN,\"\"7\"\"\""), "{csv_text}");
        let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
        let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, CSV_HEADER);
        let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3, "two measurements and one empty run");
        let col = |name: &str| CSV_HEADER.iter().position(|h| *h == name).unwrap();
        assert_eq!(&rows[0][col("dut_serial")], "SN,\"7\"");
        assert_eq!(&rows[0][col("raw")], "10.25,\"W\"\nnext");
        assert_eq!(&rows[0][col("value")], "10.25");
        assert_eq!(&rows[0][col("step_name")], "read, all");
        assert_eq!(&rows[1][col("value")], "");
        assert_eq!(&rows[1][col("invalid")], "no_data");
        assert_eq!(&rows[2][col("dut_serial")], "SN8");
        assert_eq!(&rows[2][col("measurement_id")], "");
    })
    .await
}

#[tokio::test]
async fn mark_interrupted_closes_runs_left_running() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let live = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        let step = store.start_step(live, 0, "soak", "wait").await.unwrap();
        store.add_measurement(meas(step, "T", 25.0)).await.unwrap();
        let done = store
            .create_run(new_run("SN2", "lm79", "b1"))
            .await
            .unwrap();
        store.finish_run(done, RunVerdict::Pass).await.unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.mark_interrupted().await.unwrap(), vec![live]);
        let d = store.get_run(live).await.unwrap().unwrap();
        assert_eq!(d.run.state, RunState::Finished);
        assert_eq!(d.run.verdict, Some(RunVerdict::Interrupted));
        let ended = d.run.ended_at.expect("end time set");
        assert!(ended >= d.measurements[0].taken_at - Duration::from_micros(1));
        assert_eq!(d.steps[0].status, Some(StepStatus::Interrupted));
        let events = store.events_since(live, 0).await.unwrap();
        assert_eq!(
            events.last().map(|e| e.kind.as_str()),
            Some(event_kind::RUN_INTERRUPTED)
        );
        let other = store.get_run(done).await.unwrap().unwrap();
        assert_eq!(other.run.verdict, Some(RunVerdict::Pass));
        assert!(store.mark_interrupted().await.unwrap().is_empty());
        let filter = RunFilter {
            verdict: Some(RunVerdict::Interrupted),
            ..Default::default()
        };
        let listed = store.list_runs(&filter).await.unwrap();
        assert_eq!(listed.items.len(), 1);
    })
    .await
}

#[tokio::test]
async fn measurement_queries_across_runs() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut flux_ids = Vec::new();
        for dut in ["SN1", "SN2", "SN1"] {
            let run = store.create_run(new_run(dut, "lm79", "b1")).await.unwrap();
            let step = store.start_step(run, 0, "read", "read").await.unwrap();
            flux_ids.push(
                store
                    .add_measurement(meas(step, "flux", 800.0))
                    .await
                    .unwrap(),
            );
            store.add_measurement(meas(step, "P", 10.0)).await.unwrap();
        }
        let f = MeasurementFilter {
            name: Some("flux".into()),
            dut: Some("SN1".into()),
            limit: 1,
            ..Default::default()
        };
        let p1 = store.measurements(&f).await.unwrap();
        assert_eq!(p1.items.len(), 1);
        assert_eq!(p1.items[0].measurement.id, flux_ids[2]);
        assert_eq!(p1.items[0].dut_serial, "SN1");
        let f2 = MeasurementFilter {
            cursor: p1.next_cursor.clone(),
            ..f.clone()
        };
        let p2 = store.measurements(&f2).await.unwrap();
        assert_eq!(p2.items.len(), 1);
        assert_eq!(p2.items[0].measurement.id, flux_ids[0]);
        assert!(p2.next_cursor.is_none());
    })
    .await
}

#[tokio::test]
async fn concurrent_handles_lose_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let run = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        let step = store.start_step(run, 0, "read", "read").await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    let m = meas(step, &format!("ch{t}"), i as f64);
                    ids.push(store.add_measurement(m).await.unwrap());
                }
                ids
            }));
        }
        let mut written = HashSet::new();
        for t in tasks {
            written.extend(t.await.unwrap());
        }
        let d = store.get_run(run).await.unwrap().unwrap();
        let stored: HashSet<_> = d.measurements.iter().map(|m| m.id).collect();
        assert_eq!(written.len(), 200);
        assert_eq!(stored, written);

        // More concurrent readers than pooled connections: they queue, none fails.
        let mut reads = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            reads.push(tokio::spawn(async move {
                store
                    .get_run(run)
                    .await
                    .unwrap()
                    .unwrap()
                    .measurements
                    .len()
            }));
        }
        for r in reads {
            assert_eq!(r.await.unwrap(), 200);
        }
    })
    .await
}

#[tokio::test]
async fn full_sync_level_stores_the_same() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            sync: SyncLevel::Full,
            read_pool: 1,
            ..Default::default()
        };
        let path = path_in(dir.path());
        let store = Store::open_with(&path, options).unwrap();
        assert_eq!(store.path(), path.as_path());
        let run = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        let step = store.start_step(run, 0, "read", "read").await.unwrap();
        store.add_measurement(meas(step, "P", 10.0)).await.unwrap();
        store
            .finish_step(step, StepStatus::Pass, None)
            .await
            .unwrap();
        store.finish_run(run, RunVerdict::Pass).await.unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let d = store.get_run(run).await.unwrap().unwrap();
        assert_eq!(d.measurements.len(), 1);
        assert_eq!(d.run.verdict, Some(RunVerdict::Pass));
    })
    .await
}

#[tokio::test]
async fn subscribers_hear_of_committed_events() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut notices = store.subscribe();
        let run = store
            .create_run(new_run("SN1", "lm79", "b1"))
            .await
            .unwrap();
        assert_eq!(notices.recv().await.unwrap(), run);
        // A follower reads from its last seq on each notice and sees the new event at once.
        let mut last = store
            .events_since(run, 0)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq;
        let seq = store
            .add_event(run, "reading", serde_json::json!({"P": 10.0}))
            .await
            .unwrap();
        assert_eq!(notices.recv().await.unwrap(), run);
        let new = store.events_since(run, last).await.unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].seq, seq);
        last = seq;
        store.finish_run(run, RunVerdict::Pass).await.unwrap();
        assert_eq!(notices.recv().await.unwrap(), run);
        let new = store.events_since(run, last).await.unwrap();
        assert_eq!(new[0].kind, event_kind::RUN_FINISHED);
    })
    .await
}
