//! Serial lines behind device servers (a TCP port per serial line): `kind = "tcp"` with a `baud`
//! key. Modbus RTU keeps the serial line's t3.5 silence between frames, and a new connection
//! starts clean of what the line said while nobody was connected, for RTU and for SCPI alike.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BOUND, load_config, test_dir, wait_connected};
use labgate::config::schema::{LinkConfig, LinkProtocol, Transport};
use labgate::link::transport::{self, Stream};
use labgate::link::{self, LinkSpec, ScpiSetup, ScpiStep};
use labgate::modbus::ops::ModbusOp;
use labgate::modbus::value::Table;
use labgate::scpi::session::Framing;
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, f4t, serve_rtu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Low enough that t3.5 (32 ms) dwarfs loopback and scheduling noise.
const BAUD: u32 = 1200;

/// A device server in front of the simulated Modbus devices that timestamps what passes: when
/// each request chunk arrives and when each reply chunk leaves.
async fn timed_rtu_server() -> (u16, Arc<Mutex<Vec<(Instant, bool)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        let devices = Arc::new(ModbusBench::default());
        while let Ok((client, _)) = listener.accept().await {
            let (inner, outer) = tokio::io::duplex(4096);
            tokio::spawn(serve_rtu(inner, devices.clone(), Faults::default(), None));
            let l = l.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = tokio::io::split(outer);
                let l2 = l.clone();
                let up = async move {
                    let mut b = [0u8; 512];
                    while let Ok(n) = cr.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                        l2.lock().unwrap().push((Instant::now(), true));
                        if sw.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let mut b = [0u8; 512];
                    while let Ok(n) = sr.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                        if cw.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                        l.lock().unwrap().push((Instant::now(), false));
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, log)
}

fn link_config(protocol: LinkProtocol, port: u16, baud: Option<u32>) -> LinkConfig {
    let text = format!(
        "protocol = \"{protocol}\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\n{}\
         timeout = \"1s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"300ms\"\n",
        baud.map(|b| format!("baud = {b}\n")).unwrap_or_default()
    );
    let dir = test_dir();
    let instrument = match protocol {
        LinkProtocol::Scpi => "driver = \"yokogawa-wt310e\"\nlink = \"l\"\n",
        _ => "driver = \"watlow-f4t\"\nlink = \"l\"\nunit = 1\n",
    };
    let cfg = format!(
        "[paths]\ndrivers = [\"{}\"]\ndata = \"{}\"\n[links.l]\n{text}\n\
         [instruments.x]\n{instrument}",
        common::drivers_dir().display(),
        dir.path().join("data").display()
    );
    load_config(dir.path(), &cfg).links["l"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_a_device_server_keeps_the_serial_inter_frame_silence() {
    let (port, log) = timed_rtu_server().await;
    let cfg = link_config(LinkProtocol::ModbusRtu, port, Some(BAUD));
    assert_eq!(
        cfg.transport,
        Transport::SerialServer {
            host: "127.0.0.1".into(),
            port,
            baud: BAUD
        }
    );
    let spec = LinkSpec::from_config("rtu", &cfg);
    let t35 = transport::t35(BAUD);
    assert_eq!(
        spec.inter_frame, t35,
        "t3.5 from the serial side's baud rate"
    );
    let h = link::spawn(spec, None);
    wait_connected(&h).await;
    for _ in 0..5 {
        let op = ModbusOp::Read {
            table: Table::Holding,
            address: f4t::PV,
            count: 2,
        };
        tokio::time::timeout(BOUND, h.modbus(1, op, None))
            .await
            .unwrap()
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    // Silence on the line: from the end of a reply to the start of the next request.
    let mut gaps = Vec::new();
    let mut last_reply: Option<Instant> = None;
    for (t, is_request) in log {
        match (is_request, last_reply.take()) {
            (true, Some(r)) => gaps.push(t - r),
            (false, _) => last_reply = Some(t),
            (true, None) => {}
        }
    }
    assert_eq!(
        gaps.len(),
        4,
        "five transactions, four silences between them"
    );
    for g in gaps {
        assert!(
            g >= t35,
            "only {g:?} of silence between frames, t3.5 is {t35:?}"
        );
    }

    // Without `baud` the same link is plain TCP: no serial timing.
    let plain = LinkSpec::from_config("rtu", &link_config(LinkProtocol::ModbusRtu, port, None));
    assert_eq!(plain.inter_frame, Duration::ZERO);
}

#[tokio::test]
async fn draining_a_fresh_connection_discards_what_was_already_there() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"stale reply\r\nmore stale\r\n").await.unwrap();
        let _ = sent_tx.send(());
        let mut b = [0u8; 64];
        let n = s.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"PING\r\n");
        s.write_all(b"fresh\r\n").await.unwrap();
        tokio::time::sleep(BOUND).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = Stream::new(Box::new(tcp), addr.to_string());
    tokio::time::timeout(BOUND, sent_rx).await.unwrap().unwrap();
    // The bytes were sent; give loopback a moment to deliver them before draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dropped = tokio::time::timeout(BOUND, transport::drain_stale(&mut stream))
        .await
        .unwrap();
    assert_eq!(dropped, 25);
    stream.write_all(b"PING\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(BOUND, stream.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b[..n], b"fresh\r\n");
}

/// A device server in front of a line-based instrument that answers with `\r` line ends, and
/// that hands every new connection what the line said while nobody listened. A plain OS thread,
/// so the stale bytes go out the moment the connection is accepted.
fn stale_scpi_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                use std::io::Read;
                let _ = s.write_all(b"OLD-REPLY\r");
                let mut buf = Vec::new();
                let mut b = [0u8; 256];
                loop {
                    let n = match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&b[..n]);
                    while let Some(p) = buf.iter().position(|c| *c == b'\r') {
                        let line: Vec<u8> = buf.drain(..=p).collect();
                        let reply: &[u8] = match &line[..] {
                            b"*IDN?\r" => b"ACME,SERIAL9,1,1\r",
                            b"MEAS?\r" => b"+1.25E+00\r",
                            _ => continue,
                        };
                        if s.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scpi_over_a_device_server_uses_the_driver_terminators_and_starts_clean() {
    let port = stale_scpi_server();
    let cfg = link_config(LinkProtocol::Scpi, port, Some(9600));
    let setup = ScpiSetup {
        framing: Framing::from_terminators("\r", "\r"),
        init: Vec::new(),
        identity: Some(("*IDN?".into(), vec!["ACME".into()])),
    };
    let h = link::spawn(LinkSpec::from_config("ser", &cfg), Some(setup));
    let s = wait_connected(&h).await;
    assert!(
        s.identity.as_deref().unwrap().contains("SERIAL9"),
        "the stale bytes were taken for the identity reply: {s:?}"
    );
    assert!(s.endpoint.contains("serial 9600 baud"), "{s:?}");
    let q = ScpiStep::Query {
        text: "MEAS?".into(),
        timeout: Duration::from_secs(1),
    };
    let r = tokio::time::timeout(BOUND, h.scpi(vec![q.clone(), q]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r[0].as_deref(), Some("+1.25E+00"));
    assert_eq!(r[1].as_deref(), Some("+1.25E+00"));
}
