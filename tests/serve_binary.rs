//! The real `labgate serve` binary: a config in a temporary directory pointing at an ephemeral
//! simulator bench, an ephemeral API port; /health answers, SIGHUP reloads a good config and
//! refuses a bad one, SIGTERM exits 0.

mod api_common;
mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use api_common::*;
use labgate::sim::bench::SimBenchConfig;

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

async fn description(addr: SocketAddr) -> Option<String> {
    let r = get(addr, "/api/v1/instruments/pa1").await;
    (r.status == 200).then(|| r.json()["description"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn serve_answers_reloads_and_stops_on_sigterm() {
    let sim = labgate::sim::bench::start(SimBenchConfig::ephemeral())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    let good = demo_config_text(&sim, dir.path(), "");
    std::fs::write(&cfg, &good).unwrap();
    let addr = free_port();
    let mut child = tokio::process::Command::new(common::labgate_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &addr.to_string(), "--log-format", "json"])
        .env_remove("LABGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let health = eventually("/health of the binary", || async {
        // Connection refused until the daemon listens.
        tokio::net::TcpStream::connect(addr).await.ok()?;
        let r = get(addr, "/api/v1/health").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(
        description(addr).await.as_deref(),
        Some("power analyzer on the lamp under test")
    );
    // The store went where the config said.
    assert!(dir.path().join("data/results.db").exists());

    // A bad config is refused; the old one keeps serving.
    std::fs::write(
        &cfg,
        good.replace("driver = \"yokogawa-wt310e\"", "driver = \"nope\""),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        description(addr).await.as_deref(),
        Some("power analyzer on the lamp under test")
    );

    // A good one is taken.
    std::fs::write(
        &cfg,
        good.replace("power analyzer on the lamp under test", "reloaded analyzer"),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    eventually("reloaded config", || async {
        (description(addr).await.as_deref() == Some("reloaded analyzer")).then_some(())
    })
    .await;

    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("serve did not exit within the bound after SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit {status:?}; log:\n{stderr}");
    // JSON logs, one object a line; the refused reload was logged as such.
    assert!(
        stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{stderr}"
    );
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
}

#[tokio::test]
async fn serve_refuses_non_loopback_without_token() {
    let sim = labgate::sim::bench::start(SimBenchConfig::ephemeral())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    std::fs::write(&cfg, demo_config_text(&sim, dir.path(), "")).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(common::labgate_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", "0.0.0.0:0"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");

    // A config with a problem: nothing starts, the problem is printed with its position.
    std::fs::write(
        &cfg,
        "[links.x]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = 5\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(common::labgate_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("labgate.toml:4:"), "{err}");
}

#[tokio::test]
async fn serve_notifies_systemd_ready_and_watchdog() {
    let sim = labgate::sim::bench::start(SimBenchConfig::ephemeral())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labgate.toml");
    std::fs::write(&cfg, demo_config_text(&sim, dir.path(), "")).unwrap();
    // Stand in for systemd's notification socket.
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let addr = free_port();
    let mut child = tokio::process::Command::new(common::labgate_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", &addr.to_string()])
        .env("NOTIFY_SOCKET", &sock_path)
        // 400 ms watchdog: pings every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !(seen.iter().any(|m| m == "READY=1")
        && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("notifications so far: {seen:?}"))
            .unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    // READY only once the API answers.
    assert_eq!(get(addr, "/api/v1/health").await.status, 200);
    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let n = tokio::time::timeout(WAIT, async {
        loop {
            let n = sock.recv(&mut buf).await.unwrap();
            if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" {
                return n;
            }
        }
    })
    .await
    .expect("STOPPING=1 before exit");
    assert!(n > 0);
}
