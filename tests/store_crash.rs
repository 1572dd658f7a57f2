//! Crash durability for real: a child process (this same test binary, told by an environment
//! variable to act as a writer) stores measurements and prints each id once `add_measurement`
//! has returned; the parent `kill -9`s it mid-stream and checks every printed id survived.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use labgate::store::*;

const CHILD_ENV: &str = "LABGATE_STORE_CRASH_CHILD_DB";
/// The child stops by itself after this many, so a parent that fails to kill it cannot hang.
const CHILD_MAX: usize = 200_000;

/// Not a test on its own: the writer half of `kill_9_loses_no_committed_measurement`. Without
/// the environment variable it returns at once.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&path).expect("child: open store");
    let run = store
        .create_run(NewRun {
            recipe_name: "crash".into(),
            recipe_version: "1".into(),
            recipe_hash: "h".into(),
            dut_serial: "SN-CRASH".into(),
            station: "b1".into(),
            operator: "test".into(),
            parameters: serde_json::json!({}),
        })
        .await
        .expect("child: create run");
    let step = store
        .start_step(run, 0, "loop", "read")
        .await
        .expect("child: start step");
    // Written straight to the stdout handle, which the test harness does not capture.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "RUN {}", run.0);
    let _ = out.flush();
    for i in 0..CHILD_MAX {
        let m = NewMeasurement {
            step_id: step,
            name: "P".into(),
            value: Some(i as f64),
            invalid: None,
            unit: "W".into(),
            limits: Limits::default(),
            verdict: None,
            taken_at: SystemTime::now(),
            raw: None,
        };
        let id = store.add_measurement(m).await.expect("child: add");
        if writeln!(out, "M {}", id.0)
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn kill_9_loses_no_committed_measurement() {
    if std::env::var(CHILD_ENV).is_ok() {
        return; // we are the child; only `crash_child_writer` runs there
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.db");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "crash_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut run = None;
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Let it get well into its loop, then kill it without warning.
    while ids.len() < 200 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("child writer stalled after {} ids: {e}", ids.len());
            }
        };
        parse_line(&line, &mut run, &mut ids);
    }
    // SAFETY: plain FFI call on a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 failed");
    let status = child.wait().unwrap();
    assert!(!status.success(), "child should have died by the signal");
    // Everything it printed before dying counts too: those ids were committed before printing.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        parse_line(&line, &mut run, &mut ids);
    }
    reader.join().unwrap();
    let run = RunId(run.expect("child printed its run id"));
    assert!(ids.len() < CHILD_MAX, "child finished before it was killed");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let store = Store::open(&path).expect("reopen after crash");
            let d = store.get_run(run).await.unwrap().expect("run survived");
            assert_eq!(d.run.state, RunState::Running);
            let stored: std::collections::HashSet<i64> =
                d.measurements.iter().map(|m| m.id.0).collect();
            let missing: Vec<_> = ids.iter().filter(|id| !stored.contains(id)).collect();
            assert!(
                missing.is_empty(),
                "lost {} committed ids, first: {:?}",
                missing.len(),
                &missing[..missing.len().min(20)]
            );
            assert!(stored.len() >= ids.len());
            eprintln!("printed {} ids, stored {}", ids.len(), stored.len());

            assert_eq!(store.mark_interrupted().await.unwrap(), vec![run]);
            let d = store.get_run(run).await.unwrap().unwrap();
            assert_eq!(d.run.verdict, Some(RunVerdict::Interrupted));
            assert!(d.run.ended_at.is_some());
            let events = store.events_since(run, 0).await.unwrap();
            assert_eq!(
                events.last().map(|e| e.kind.as_str()),
                Some(event_kind::RUN_INTERRUPTED)
            );
        })
        .await
        .expect("checks after crash timed out");
    });
}

fn parse_line(line: &str, run: &mut Option<i64>, ids: &mut Vec<i64>) {
    // The harness may print "test crash_child_writer ... " on the same line before ours.
    if let Some((_, r)) = line.split_once("RUN ") {
        *run = r.trim().parse().ok();
    } else if let Some(m) = line.strip_prefix("M ")
        && let Ok(id) = m.trim().parse()
    {
        ids.push(id);
    }
}
