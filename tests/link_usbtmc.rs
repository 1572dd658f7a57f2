//! USB-TMC links against a fake device: a simulated instrument behind a real pseudo-terminal,
//! opened by path like `/dev/usbtmcN`. The pty refuses the usbtmc ioctls (ENOTTY), which the
//! link tolerates, bounding reads itself and framing replies by the driver's terminator.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{BOUND, load_config, test_dir, wait_connected, wait_status};
use labgate::config::schema::{LinkProtocol, Transport};
use labgate::gateway::Gateway;
use labgate::link::{self, LinkError, LinkSpec, ScpiSetup, ScpiStep};
use labgate::reading::Value;
use labgate::sim::fault::Faults;
use labgate::sim::plant::{Plant, PlantConfig};
use labgate::sim::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
use labgate::sim::pty::open_pty;
use labgate::sim::scpi_server::serve_stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Serve the simulated power analyzer on a new pty; returns the path a client opens.
fn fake_usbtmc_analyzer() -> PathBuf {
    let (mut master, path) = open_pty().unwrap();
    let analyzer = PowerAnalyzer::new(
        Plant::new(PlantConfig::default()),
        PowerAnalyzerConfig::default(),
    );
    tokio::spawn(async move {
        loop {
            let _ = serve_stream(&mut master, analyzer.clone(), Faults::default()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_works_unchanged_over_usbtmc() {
    let path = fake_usbtmc_analyzer();
    let dir = test_dir();
    let text = format!(
        r#"[paths]
drivers = ["{repo}"]
data = "{data}"

[links.usb]
protocol = "scpi"
kind = "usbtmc"
device = "{dev}"
timeout = "1s"
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.pa1]
driver = "yokogawa-wt310e"
link = "usb"
"#,
        repo = common::drivers_dir().display(),
        data = dir.path().join("data").display(),
        dev = path.display(),
    );
    let gw = Gateway::start(&load_config(dir.path(), &text));
    let status = wait_connected(&gw.links["usb"]).await;
    assert!(
        status
            .identity
            .as_deref()
            .unwrap_or("")
            .to_uppercase()
            .contains("YOKOGAWA"),
        "the driver's identity check ran over usbtmc: {status:?}"
    );
    assert!(status.endpoint.starts_with("usbtmc "), "{status:?}");
    let pa = gw.instrument("pa1").unwrap();
    for _ in 0..3 {
        let r = tokio::time::timeout(BOUND, pa.read(&["voltage", "current", "power"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.len(), 3);
        assert!(matches!(r[0].value, Value::Number(v) if v.is_finite()));
    }
}

/// A fake device written here: one message in, one reply out. The first `SLOW?` is answered
/// only when the test says so (a reply that comes after the link gave up on it); later ones at
/// once. Counts the messages it got.
fn fake_slow_device() -> (PathBuf, Arc<AtomicUsize>, mpsc::Sender<oneshot::Sender<()>>) {
    let (mut master, path) = open_pty().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let (release_tx, mut release_rx) = mpsc::channel::<oneshot::Sender<()>>(1);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let mut slow_answered = false;
        loop {
            let n = match master.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                s.fetch_add(1, Ordering::SeqCst);
                let reply: &[u8] = match &line[..] {
                    b"*IDN?\n" => b"ACME,USB42,1,1.0\n",
                    b"SLOW?\n" if !slow_answered => {
                        slow_answered = true;
                        let Some(done) = release_rx.recv().await else {
                            return;
                        };
                        let _ = master.write_all(b"late\n").await;
                        let _ = master.flush().await;
                        let _ = done.send(());
                        continue;
                    }
                    b"SLOW?\n" => b"fast\n",
                    _ => continue,
                };
                let _ = master.write_all(reply).await;
            }
        }
    });
    (path, seen, release_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_drops_the_session_and_the_late_reply_is_not_taken_for_the_next() {
    let (path, seen, release) = fake_slow_device();
    // A generous timeout: it is also how long the link waits before reopening the node, and
    // the late reply must be written within it (no tight timing).
    let timeout = Duration::from_secs(1);
    let spec = LinkSpec {
        name: "usb".into(),
        protocol: LinkProtocol::Scpi,
        transport: Transport::Usbtmc {
            device: path.clone(),
        },
        timeout,
        connect_timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        inter_frame: Duration::ZERO,
        queue_timeout: Duration::from_secs(10),
    };
    let setup = ScpiSetup {
        identity: Some(("*IDN?".into(), vec!["ACME".into()])),
        ..ScpiSetup::default()
    };
    let h = link::spawn(spec, Some(setup));
    wait_connected(&h).await;
    let q = |t: &str| ScpiStep::Query {
        text: t.into(),
        timeout,
    };
    let err = tokio::time::timeout(BOUND, h.scpi(vec![q("SLOW?")]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
    // The late reply arrives while the link is down...
    let (done_tx, done_rx) = oneshot::channel();
    release.send(done_tx).await.unwrap();
    tokio::time::timeout(BOUND, done_rx).await.unwrap().unwrap();
    // ...and reopening discards it (no usbtmc ioctl on a pty: the input queue is flushed).
    let s = wait_status(&h, |s| {
        s.reconnects >= 1 && s.state == link::LinkState::Connected
    })
    .await;
    assert!(
        s.identity.unwrap().contains("ACME"),
        "identity read the late reply?"
    );
    let replies = tokio::time::timeout(BOUND, h.scpi(vec![q("SLOW?"), q("*IDN?")]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replies[0].as_deref(), Some("fast"));
    assert!(replies[1].as_deref().unwrap().contains("USB42"));
    assert!(seen.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn a_missing_node_is_reported_and_retried() {
    let spec = LinkSpec {
        name: "usb".into(),
        protocol: LinkProtocol::Scpi,
        transport: Transport::Usbtmc {
            device: "/dev/usbtmc-labgate-test-does-not-exist".into(),
        },
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        inter_frame: Duration::ZERO,
        queue_timeout: Duration::from_secs(10),
    };
    let h = link::spawn(spec, None);
    let s = wait_status(&h, |s| s.attempt >= 2).await;
    let e = s.last_error.unwrap();
    assert!(
        e.contains("usbtmc-labgate-test-does-not-exist") && e.contains("No such file"),
        "{e}"
    );
}
