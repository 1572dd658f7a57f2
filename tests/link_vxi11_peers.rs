//! VXI-11 against implementations we did not write.
//!
//! - PyVISA with PyVISA-py (tests/peers/pyvisa_client.py) as a client of our simulator, once
//!   through the portmapper and once with the core port in the resource string. PyVISA-py's
//!   portmapper port is a module constant (111); the script rebinds it to the simulator's
//!   ephemeral portmapper, which changes where it connects, not what it sends.
//! - Our client against tests/peers/vxi11_server.py: a small VXI-11 instrument whose ONC RPC
//!   layer (record marking, call parsing, reply headers, XDR) is PyVISA-py's `rpc.TCPServer`
//!   and packers, with a portmapper built the same way.
//!
//! The peers live in the virtualenv tests/peers/ensure_venv.py makes; if it cannot be made the
//! tests fail rather than skip.

mod common;

use std::time::Duration;

use common::{lone_analyzer as analyzer, run_peer_json, start_peer_server};
use labgate::sim::vxi11::{self as sim, Vxi11SimConfig};
use labgate::vxi11::{Vxi11Client, Vxi11Options, get_core_port};
use tokio::time::timeout;

async fn run_pyvisa(args: &[String]) -> serde_json::Value {
    run_peer_json("pyvisa_client.py", args).await
}

fn check_session(v: &serde_json::Value) {
    assert!(
        v["idn"].as_str().unwrap().starts_with("YOKOGAWA,WT310E"),
        "{v}"
    );
    assert_eq!(v["number"], "5", "{v}");
    assert_eq!(v["after_clear"], "5", "{v}");
    assert_eq!(v["chunked"], v["idn"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_reaches_our_simulator_through_its_portmapper() {
    let cfg = Vxi11SimConfig {
        // The spec's minimum: PyVISA-py must cut longer writes to it.
        max_recv_size: 1024,
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let v = run_pyvisa(&[
        "TCPIP::127.0.0.1::inst0::INSTR".into(),
        "--portmap-port".into(),
        s.portmap.port().to_string(),
    ])
    .await;
    check_session(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_reaches_our_simulator_on_the_core_port() {
    let s = sim::start(Vxi11SimConfig::default(), analyzer())
        .await
        .unwrap();
    let v = run_pyvisa(&[format!("TCPIP::127.0.0.1,{}::inst0::INSTR", s.core.port())]).await;
    check_session(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_a_server_on_pyvisa_py_rpc() {
    let (_child, line) = start_peer_server("vxi11_server.py", false).await;
    let mut ports = line.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    let (pmap, core) = (ports.next().unwrap(), ports.next().unwrap());

    let wait = Duration::from_secs(10);
    assert_eq!(get_core_port("127.0.0.1", pmap, wait).await.unwrap(), core);
    let mut o = Vxi11Options::new("127.0.0.1", "inst0");
    o.portmap_port = pmap;
    o.io_timeout = Duration::from_millis(800);
    let mut c = timeout(wait, Vxi11Client::connect(o.clone()))
        .await
        .unwrap()
        .unwrap();
    // The server's maxRecvSize is 1024 (it refuses larger chunks with error 5), so this message
    // takes three device_write calls, and its echo many device_read calls of 100 bytes (REQCNT).
    assert_eq!(c.max_recv_size(), 1024);
    let msg = format!("ECHO? {}\n", "x".repeat(3000));
    c.write(msg.as_bytes()).await.unwrap();
    let r = c.read().await.unwrap();
    assert_eq!(r, msg.as_bytes()[6..]);
    c.write(b"*IDN?\n").await.unwrap();
    assert_eq!(c.read().await.unwrap(), b"PEER,VXI11-SERVER,0,1.0\n");
    // Device clear drops the unread reply; the next read then times out on the server side.
    c.write(b"*IDN?\n").await.unwrap();
    c.clear().await.unwrap();
    let e = c.read().await.unwrap_err();
    assert_eq!(e.device_code(), Some(15), "{e}");
    c.close().await.unwrap();

    let mut bad = o;
    bad.device = "inst9".into();
    let e = Vxi11Client::connect(bad).await.unwrap_err();
    assert_eq!(e.device_code(), Some(3), "{e}");
}

/// PyVISA-py exactly as shipped, portmapper on 111 included. Binding 111 needs root (CI runs as
/// root) and no rpcbind on the loopback address; when it cannot be bound the test says so and
/// passes, and the two tests above still cover PyVISA-py's RPC and VXI-11 code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_unmodified_when_port_111_is_free() {
    let cfg = Vxi11SimConfig {
        portmap_port: labgate::vxi11::rpc::PMAP_PORT,
        ..Default::default()
    };
    let s = match sim::start(cfg, analyzer()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("not run: cannot listen on 127.0.0.1:111 ({e})");
            return;
        }
    };
    let v = run_pyvisa(&["TCPIP::127.0.0.1::inst0::INSTR".into()]).await;
    check_session(&v);
    drop(s);
}
