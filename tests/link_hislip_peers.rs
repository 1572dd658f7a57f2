//! HiSLIP against implementations we did not write.
//!
//! - PyVISA with PyVISA-py (tests/peers/pyvisa_client.py) as a client of our simulator, with
//!   the port in the resource string (`TCPIP::127.0.0.1::hislip0,PORT::INSTR`).
//! - Our client against tests/peers/hislip_server.py, a small instrument framed with
//!   PyVISA-py's HiSLIP header format, message table and `send_msg`; it accepts only 256-byte
//!   messages and answers in 50-byte Data pieces.
//!
//! The peers live in the virtualenv tests/peers/ensure_venv.py makes; if it cannot be made the
//! tests fail rather than skip.

mod common;

use std::time::Duration;

use common::{lone_analyzer as analyzer, run_peer_json, start_peer_server};
use labgate::hislip::{HislipClient, HislipError, HislipOptions};
use labgate::sim::hislip::{self as sim, HislipSimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_reaches_our_simulator() {
    let cfg = HislipSimConfig {
        // PyVISA-py must join a reply from several Data messages.
        reply_chunk: Some(9),
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let resource = format!("TCPIP::127.0.0.1::hislip0,{}::INSTR", s.addr.port());
    let v = run_peer_json(
        "pyvisa_client.py",
        [resource.as_str(), "--no-pending-clear"],
    )
    .await;
    assert!(
        v["idn"].as_str().unwrap().starts_with("YOKOGAWA,WT310E"),
        "{v}"
    );
    assert_eq!(v["number"], "5", "{v}");
    assert_eq!(v["after_clear"], "5", "{v}");
    assert_eq!(v["chunked"], v["idn"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_a_server_on_pyvisa_py_framing() {
    let (_child, line) = start_peer_server("hislip_server.py", false).await;
    let port: u16 = line.parse().unwrap();
    let mut o = HislipOptions::new("127.0.0.1", port, "hislip0");
    o.io_timeout = Duration::from_secs(5);
    let mut c = HislipClient::connect(o.clone()).await.unwrap();
    assert_eq!(c.server_max_message_size(), 256);
    assert_eq!(c.server_version(), 0x0100);

    // 1000 bytes do not fit one 256-byte message: the server answers Error 4 unless the client
    // cuts the message into Data pieces; the echo comes back in 50-byte pieces.
    let msg = format!("ECHO? {}\n", "y".repeat(1000));
    c.write(msg.as_bytes()).await.unwrap();
    assert_eq!(c.read().await.unwrap(), msg.as_bytes()[6..]);
    // An unread reply, then a device clear through both channels.
    c.write(b"*IDN?\n").await.unwrap();
    c.clear().await.unwrap();
    c.write(b"ECHO? after\n").await.unwrap();
    assert_eq!(c.read().await.unwrap(), b"after\n");

    let mut bad = o;
    bad.device = "hislip5".into();
    let e = HislipClient::connect(bad).await.unwrap_err();
    assert!(
        matches!(
            e,
            HislipError::Server {
                fatal: true,
                code: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("unknown sub-address hislip5"), "{e}");
}
