//! Runs through the real `labgate serve` binary on ephemeral ports against an in-process
//! simulated bench: an LM-79 run followed over SSE to its verdict; SIGTERM during a run (exit 0,
//! cleanup switched the simulated source off, the run stored aborted); `kill -9` mid-run and a
//! restart (the run is marked interrupted, its measurements intact).

mod api_common;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use api_common::*;
use labgate::store::{RunId, RunVerdict, Store};

fn free_port() -> SocketAddr {
    // Bind and release: the tiny race with another process is acceptable in a test.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn signal(child: &tokio::process::Child, sig: libc::c_int) {
    let pid = child.id().expect("child still running") as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

async fn spawn_serve(cfg: &Path, addr: SocketAddr) -> tokio::process::Child {
    let child = tokio::process::Command::new(common::labgate_bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .args(["--listen", &addr.to_string(), "--log-format", "json"])
        .env_remove("LABGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the daemon to answer", || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (get(addr, "/api/v1/health").await.status == 200).then_some(())
    })
    .await;
    child
}

async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(WAIT, e.read_to_string(&mut s)).await;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm79_over_http_then_sigterm_aborts_through_cleanup() {
    let sim = quick_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    std::fs::write(&cfg, runs_config_text(&sim, dir.path(), "")).unwrap();
    let addr = free_port();
    let mut child = spawn_serve(&cfg, addr).await;

    let id = start_run(
        addr,
        r#"{"recipe":"lm79-led-lamp","station":"demo","dut":"SN-BIN-1"}"#,
    )
    .await;
    let events = SseStream::open(addr, &format!("/api/v1/runs/{id}/events"), None)
        .await
        .rest()
        .await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "verdict");
    assert_eq!(last.data["payload"]["verdict"], "pass", "{events:?}");
    assert!(events.iter().any(|e| e.event == "measurement"));
    let d = get(addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(d["run"]["verdict"], "pass");
    let csv = get(addr, &format!("/api/v1/runs/{id}/export?format=csv")).await;
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(csv.body.contains(",efficacy,"), "{}", csv.body);
    assert!(
        !sim.plant.output_on(),
        "the recipe's cleanup switched the source off"
    );

    // A long run, then SIGTERM.
    let slow = start_run(
        addr,
        r#"{"recipe":"slow","station":"demo","dut":"SN-BIN-2"}"#,
    )
    .await;
    eventually("the lamp on", || async {
        sim.plant.output_on().then_some(())
    })
    .await;
    // A reload while it runs: the run keeps the instruments it started with.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("power analyzer on the lamp under test", "reloaded analyzer"),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    eventually("the reload", || async {
        let d = get(addr, "/api/v1/instruments/pa1").await.json();
        (d["description"] == "reloaded analyzer").then_some(())
    })
    .await;
    let d = get(addr, &format!("/api/v1/runs/{slow}")).await.json();
    assert_eq!(d["active"], true, "the run survived the reload: {d}");
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("serve exits within the bound after SIGTERM")
        .unwrap();
    let log = stderr_of(&mut child).await;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!sim.plant.output_on(), "cleanup ran before exit");
    assert!(log.contains("aborting runs for shutdown"), "{log}");

    let store = Store::open(dir.path().join("data/results.db")).unwrap();
    let r = store.get_run(RunId(slow)).await.unwrap().unwrap();
    assert_eq!(r.run.verdict, Some(RunVerdict::Aborted));
    assert!(
        r.steps
            .iter()
            .any(|s| s.name == "lamp off" && s.status.is_some_and(|x| x.as_str() == "pass"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_marks_it_interrupted() {
    let sim = quick_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    std::fs::write(&cfg, runs_config_text(&sim, dir.path(), "")).unwrap();
    let addr = free_port();
    let mut child = spawn_serve(&cfg, addr).await;
    let id = start_run(
        addr,
        r#"{"recipe":"slow","station":"demo","dut":"SN-CRASH"}"#,
    )
    .await;
    let power = eventually("the power measurement", || async {
        let d = get(addr, &format!("/api/v1/runs/{id}")).await.json();
        d["measurements"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "power")
            .cloned()
    })
    .await;
    signal(&child, libc::SIGKILL);
    let _ = tokio::time::timeout(WAIT, child.wait()).await.unwrap();

    let addr = free_port();
    let _child = spawn_serve(&cfg, addr).await;
    let d = get(addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(d["run"]["verdict"], "interrupted", "{d}");
    assert_eq!(d["active"], false);
    let after = d["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "power")
        .cloned()
        .expect("the measurement survived");
    assert_eq!(after, power);
    // Its event stream ends with the verdict.
    let ev = SseStream::open(addr, &format!("/api/v1/runs/{id}/events"), None)
        .await
        .rest()
        .await;
    assert_eq!(ev.last().unwrap().event, "verdict");
    assert_eq!(ev.last().unwrap().data["kind"], "run_interrupted");
    // The instruments are free again: a new run starts.
    let next = start_run(addr, r#"{"recipe":"ask","station":"demo","dut":"SN-NEXT"}"#).await;
    assert!(next > id);
    let a = post_json(addr, &format!("/api/v1/runs/{next}/abort"), "").await;
    assert_eq!(a.status, 202);
    assert_eq!(finished(addr, next).await["run"]["verdict"], "aborted");
}
