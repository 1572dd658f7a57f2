//! Modbus links through the gateway: RTU over a real pseudo-terminal (several unit ids on one
//! bus, concurrent callers, t3.5 silence between frames) and Modbus TCP under every fault the
//! simulator can show (delay, drop, silence, garbage), each followed by recovery.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{BOUND, Switch, drivers_dir, load_config, test_dir, until_ok, wait_connected};
use labgate::gateway::Gateway;
use labgate::instrument::{Instrument, InstrumentError};
use labgate::link::{LinkError, LinkState};
use labgate::reading::Value;
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, serve_rtu, serve_rtu_pty, serve_tcp};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(inst: &str, v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{inst}: not a number: {v:?}"))
}

/// The three Modbus instruments on one link of the given kind.
fn modbus_toml(dir: &Path, link: &str) -> String {
    format!(
        r#"[paths]
drivers = ["{drivers}"]
data = "{data}"

[links.bus]
{link}
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.chamber1]
driver = "watlow-f4t"
link = "bus"
unit = 1

[instruments.ctrl1]
driver = "eurotherm-3200"
link = "bus"
unit = 2

[instruments.rack1]
driver = "relay-rack"
link = "bus"
unit = 3
"#,
        drivers = drivers_dir().display(),
        data = dir.join("data").display(),
    )
}

fn rtu_link(path: &str, baud: u32) -> String {
    format!(
        "protocol = \"modbus-rtu\"\nkind = \"serial\"\ndevice = \"{path}\"\nbaud = {baud}\ntimeout = \"1s\""
    )
}

fn tcp_link(port: u16) -> String {
    format!(
        "protocol = \"modbus-tcp\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\ntimeout = \"1s\""
    )
}

fn start(dir: &Path, link: &str) -> Gateway {
    let bench = load_config(dir, &modbus_toml(dir, link));
    Gateway::start(&bench)
}

async fn setpoints(gw: &Gateway) {
    gw.instruments["chamber1"]
        .act("set_setpoint", &args(&[("celsius", "41.5")]))
        .await
        .unwrap();
    gw.instruments["ctrl1"]
        .act("set_setpoint", &args(&[("celsius", "55.5")]))
        .await
        .unwrap();
    gw.instruments["rack1"]
        .act("relay_on", &args(&[("position", "2")]))
        .await
        .unwrap();
}

/// Each instrument's distinctive value, so a reply delivered to the wrong caller shows.
async fn check_distinct(chamber: &Instrument, ctrl: &Instrument, rack: &Instrument) {
    let r = chamber.read(&["constant_setpoint"]).await.unwrap();
    assert_eq!(number("chamber1", &r[0].value), 41.5);
    let r = ctrl.read(&["working_setpoint"]).await.unwrap();
    assert!((number("ctrl1", &r[0].value) - 55.5).abs() < 1e-9);
    let r = rack.read(&["relay_02", "relay_03"]).await.unwrap();
    assert_eq!(r[0].value, Value::Bool(true));
    assert_eq!(r[1].value, Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_bus_serves_several_units_alternately_and_concurrently() {
    let devices = Arc::new(ModbusBench::default());
    let pty = serve_rtu_pty(devices.clone(), Faults::default(), None).unwrap();
    let dir = test_dir();
    let gw = start(dir.path(), &rtu_link(pty.path(), 115_200));
    setpoints(&gw).await;
    let (chamber, ctrl, rack) = (
        gw.instruments["chamber1"].clone(),
        gw.instruments["ctrl1"].clone(),
        gw.instruments["rack1"].clone(),
    );
    for _ in 0..5 {
        check_distinct(&chamber, &ctrl, &rack).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (a, b, c) = (chamber.clone(), ctrl.clone(), rack.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..8 {
                check_distinct(&a, &b, &c).await;
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(BOUND, t)
            .await
            .expect("concurrent readers bounded")
            .expect("reader task");
    }
    let s = gw.links["bus"].status();
    assert_eq!(s.state, LinkState::Connected);
    assert_eq!(s.requests_failed, 0, "{s:?}");
    assert_eq!(s.reconnects, 0);
    assert!(s.requests_ok >= 3 + 5 * 3 + 32 * 3);
}

/// What the simulator's side of the pty saw, and when.
#[derive(Clone, Copy, Debug)]
enum Seen {
    Read(Instant),
    Wrote(Instant),
}

/// The simulator's end of the pty, recording when request bytes arrive and replies leave.
struct Recording<S> {
    inner: S,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.log.lock().unwrap().push(Seen::Read(Instant::now()));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.log.lock().unwrap().push(Seen::Wrote(Instant::now()));
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_frames_are_separated_by_t35_at_9600_baud() {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let devices = Arc::new(ModbusBench::default());
    let server = tokio::spawn(serve_rtu(
        Recording {
            inner: master,
            log: log.clone(),
        },
        devices,
        Faults::default(),
        None,
    ));
    let dir = test_dir();
    let gw = start(dir.path(), &rtu_link(&path, 9600));
    let t35 = labgate::link::transport::t35(9600);
    assert!(t35 >= Duration::from_millis(4), "{t35:?}");

    // Callers queue up concurrently so the link sends frames back to back.
    let k = 30;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..k {
        let inst = gw.instruments[["chamber1", "ctrl1", "rack1"][i % 3]].clone();
        tasks.push(tokio::spawn(async move {
            let q = ["temperature", "temperature", "supply_voltage"][i % 3];
            inst.read(&[q]).await.map(|_| ())
        }));
    }
    for t in tasks {
        tokio::time::timeout(BOUND, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let total = started.elapsed();
    server.abort();
    drop(slave);

    let log = log.lock().unwrap().clone();
    // From the last byte of one reply to the first byte of the next request.
    let mut gaps = Vec::new();
    let mut last_write = None;
    for seen in log {
        match seen {
            Seen::Wrote(t) => last_write = Some(t),
            Seen::Read(t) => {
                if let Some(w) = last_write.take() {
                    gaps.push(t - w);
                }
            }
        }
    }
    assert!(gaps.len() >= k - 1, "{} gaps for {k} requests", gaps.len());
    let min = gaps.iter().min().unwrap();
    assert!(
        *min >= t35,
        "a request followed a reply after only {min:?} (t3.5 = {t35:?})"
    );
    assert!(
        total >= t35 * (k as u32 - 1),
        "{k} transactions in {total:?}"
    );
}

/// One Modbus TCP server with `faults` and one healthy server over the same devices, behind a
/// switch that starts on the faulty one; a gateway on the switch.
async fn faulty_tcp(faults: Faults) -> (Switch, Gateway, tempfile::TempDir) {
    let devices = Arc::new(ModbusBench::default());
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let targets = vec![bad.local_addr().unwrap(), good.local_addr().unwrap()];
    tokio::spawn(serve_tcp(bad, devices.clone(), faults));
    tokio::spawn(serve_tcp(good, devices, Faults::default()));
    let switch = Switch::start(targets).await;
    let dir = test_dir();
    let gw = start(dir.path(), &tcp_link(switch.port()));
    (switch, gw, dir)
}

fn link_error(e: &InstrumentError) -> &LinkError {
    e.link_error()
        .unwrap_or_else(|| panic!("expected a link error, got {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_beyond_the_timeout_names_the_request_and_the_next_succeeds() {
    // The Eurotherm driver waits 500 ms, the chamber driver 1 s: a 700 ms delay times out the
    // first and not the second, on the same faulty server.
    let (switch, gw, _dir) = faulty_tcp(Faults {
        delay: Some(Duration::from_millis(700)),
        ..Faults::default()
    })
    .await;
    let (chamber, ctrl) = (&gw.instruments["chamber1"], &gw.instruments["ctrl1"]);
    let e = ctrl.read(&["working_setpoint"]).await.unwrap_err();
    match link_error(&e) {
        LinkError::Timeout {
            request, timeout, ..
        } => {
            assert!(request.contains("unit 2"), "{request}");
            assert!(request.contains("holding"), "{request}");
            assert_eq!(*timeout, Duration::from_millis(500));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("ctrl1"), "{e}");
    // The late reply must not be taken for the answer to the next request: the chamber's
    // setpoint is an f32 at another address and reads exactly 23.
    let (r, _) = until_ok(|| chamber.read(&["constant_setpoint"])).await;
    assert_eq!(number("chamber1", &r[0].value), 23.0);
    assert!(gw.links["bus"].status().reconnects >= 1);

    switch.select(1);
    let (r, _) = until_ok(|| ctrl.read(&["working_setpoint"])).await;
    assert!((number("ctrl1", &r[0].value) - 23.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_reconnect() {
    let (_switch, gw, _dir) = faulty_tcp(Faults {
        drop_after: Some(3),
        ..Faults::default()
    })
    .await;
    let chamber = &gw.instruments["chamber1"];
    let mut failures = 0;
    for _ in 0..12 {
        let (r, failed) = until_ok(|| chamber.read(&["constant_setpoint"])).await;
        assert_eq!(number("chamber1", &r[0].value), 23.0);
        failures += failed;
    }
    let s = gw.links["bus"].status();
    assert!(failures >= 1, "a dropped connection fails a request");
    assert!(s.reconnects >= 3, "12 requests, 3 per connection: {s:?}");
    assert!(s.last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_times_out_without_hanging() {
    let (switch, gw, _dir) = faulty_tcp(Faults {
        silent: true,
        ..Faults::default()
    })
    .await;
    let rack = &gw.instruments["rack1"];
    let started = Instant::now();
    let e = tokio::time::timeout(BOUND, rack.read(&["relay_01"]))
        .await
        .expect("a silent device must not hang the caller")
        .unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Still silent: still a bounded error.
    let e = until_err(rack).await;
    assert!(
        matches!(
            link_error(&e),
            LinkError::Timeout { .. } | LinkError::Down { .. }
        ),
        "{e:?}"
    );

    switch.select(1);
    let (r, _) = until_ok(|| rack.read(&["failed_13"])).await;
    assert_eq!(r[0].value, Value::Bool(true));
    wait_connected(&gw.links["bus"]).await;
}

async fn until_err(inst: &Instrument) -> InstrumentError {
    tokio::time::timeout(BOUND, inst.read(&["relay_01"]))
        .await
        .expect("bounded")
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replies_are_errors_and_the_link_recovers() {
    let (switch, gw, _dir) = faulty_tcp(Faults {
        garbage: true,
        ..Faults::default()
    })
    .await;
    let ctrl = &gw.instruments["ctrl1"];
    for _ in 0..3 {
        let e = tokio::time::timeout(BOUND, ctrl.read(&["temperature"]))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(
            matches!(
                link_error(&e),
                LinkError::Mismatch { .. } | LinkError::Timeout { .. } | LinkError::Down { .. }
            ),
            "{e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = gw.links["bus"].status();
    assert!(s.requests_failed >= 3);
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("mismatch")
            || s.last_error.as_deref().unwrap_or("").contains("no reply"),
        "{s:?}"
    );

    switch.select(1);
    let (r, _) = until_ok(|| ctrl.read(&["target_setpoint"])).await;
    assert!((number("ctrl1", &r[0].value) - 23.0).abs() < 1e-9);
    assert!(gw.links["bus"].status().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_faults_are_bounded_errors() {
    // Broken CRC, then silence: each is an error within the timeout, never a hang or a panic.
    for faults in [
        Faults {
            garbage: true,
            ..Faults::default()
        },
        Faults {
            silent: true,
            ..Faults::default()
        },
    ] {
        let pty = serve_rtu_pty(Arc::new(ModbusBench::default()), faults.clone(), None).unwrap();
        let dir = test_dir();
        let gw = start(dir.path(), &rtu_link(pty.path(), 115_200));
        let e = tokio::time::timeout(BOUND, gw.instruments["ctrl1"].read(&["temperature"]))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(
            matches!(
                link_error(&e),
                LinkError::Mismatch { .. } | LinkError::Timeout { .. } | LinkError::Io { .. }
            ),
            "{faults:?}: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_late_reply_is_not_taken_for_the_next_answer() {
    // 700 ms: beyond the Eurotherm driver's 500 ms, within the chamber driver's 1 s. RTU has no
    // transaction id, so only the link discarding the late reply keeps the next answer right.
    let pty = serve_rtu_pty(
        Arc::new(ModbusBench::default()),
        Faults {
            delay: Some(Duration::from_millis(700)),
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let dir = test_dir();
    let gw = start(dir.path(), &rtu_link(pty.path(), 115_200));
    let (chamber, ctrl) = (&gw.instruments["chamber1"], &gw.instruments["ctrl1"]);
    let e = ctrl.read(&["target_setpoint"]).await.unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Timeout { .. }), "{e:?}");
    // Only "down while reconnecting" may come before the right answer.
    let deadline = Instant::now() + BOUND;
    let r = loop {
        match chamber.read(&["constant_setpoint", "mode"]).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    matches!(link_error(&e), LinkError::Down { .. }),
                    "only a down link may fail here: {e:?}"
                );
                assert!(Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    };
    assert_eq!(number("chamber1", &r[0].value), 23.0);
    assert_eq!(number("chamber1", &r[1].value), 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_device_that_stops_answering_times_out() {
    // The RTU simulator's drop_after: the device falls silent after two answers.
    let pty = serve_rtu_pty(
        Arc::new(ModbusBench::default()),
        Faults {
            drop_after: Some(2),
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let dir = test_dir();
    let gw = start(dir.path(), &rtu_link(pty.path(), 115_200));
    let rack = &gw.instruments["rack1"];
    for _ in 0..2 {
        let r = rack.read(&["failed_13"]).await.unwrap();
        assert_eq!(r[0].value, Value::Bool(true));
    }
    let e = tokio::time::timeout(BOUND, rack.read(&["failed_13"]))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(link_error(&e), LinkError::Timeout { .. }), "{e:?}");
}
