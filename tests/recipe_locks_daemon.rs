//! Instrument ownership between the real daemon and the real `labgate run` on one data directory:
//! while a run started over HTTP holds the analyzer and the source, `labgate run` is refused
//! naming the daemon's run and pid; once the daemon is killed (`kill -9`), the kernel has dropped
//! its locks and the same command runs.

mod api_common;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use api_common::*;

/// Needs the same instruments as the daemon's `slow` run, and finishes at once.
const SHORT_RECIPE: &str = r#"
[recipe]
name = "short"
version = "1"
roles = ["source", "analyzer"]

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power"]
"#;

fn free_port() -> SocketAddr {
    // Bind and release: the tiny race with another process is acceptable in a test.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn cli_run(cfg: &Path, recipe: &Path) -> Output {
    let mut cmd = std::process::Command::new(common::labgate_bin());
    cmd.arg("-c")
        .arg(cfg)
        .arg("run")
        .arg(recipe)
        .args(["--station", "demo", "--dut", "SN-CLI"])
        .env_remove("LABGATE_CONFIG");
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("labgate run finishes in time")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_labgate_run_refuse_each_other_until_the_holder_dies() {
    let sim = quick_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    std::fs::write(&cfg, runs_config_text(&sim, dir.path(), "")).unwrap();
    let short = dir.path().join("short.toml");
    std::fs::write(&short, SHORT_RECIPE).unwrap();
    let addr = free_port();
    let mut daemon = tokio::process::Command::new(common::labgate_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &addr.to_string()])
        .env_remove("LABGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = daemon.id().unwrap();
    eventually("the daemon to answer", || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (get(addr, "/api/v1/health").await.status == 200).then_some(())
    })
    .await;

    let id = start_run(
        addr,
        r#"{"recipe":"slow","station":"demo","dut":"SN-DAEMON"}"#,
    )
    .await;
    let expected = format!(
        "instrument `pa1` is in use by run {id} (recipe `slow` for DUT SN-DAEMON on station `demo`) (pid {pid})"
    );
    // The run's id reaches its lock files just after the run is filed: look until it shows.
    let mut last = String::new();
    for _ in 0..50 {
        let out = cli_run(&cfg, &short).await;
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "refused: {last}");
        if last.contains(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.contains(&expected), "{last}");
    let d = get(addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(d["active"], true, "the daemon's run goes on: {d}");

    // SAFETY: kill(2) with a pid we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    let _ = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("the daemon dies");
    let out = cli_run(&cfg, &short).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
