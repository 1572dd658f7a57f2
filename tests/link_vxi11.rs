//! The VXI-11 client against the VXI-11 simulator (portmapper and core channel on ephemeral
//! loopback ports) fronting the simulated WT310E power analyzer: portmapper lookup, create_link,
//! chunked writes, reads ending on END, REQCNT and the term char, device_clear, and the errors an
//! instrument reports (unknown device, I/O timeout) or the RPC layer refuses (wrong program).

use std::sync::Arc;
use std::time::Duration;

use common::lone_analyzer as analyzer;
use labgate::sim::fault::Faults;
use labgate::sim::plant::{Plant, PlantConfig};
use labgate::sim::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
use labgate::sim::scpi_server::ScpiDevice;
use labgate::sim::vxi11::{self as sim, DeviceFactory, Vxi11SimConfig};
use labgate::vxi11::rpc::RpcFailure;
use labgate::vxi11::{Vxi11Client, Vxi11Error, Vxi11Options, get_core_port};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn opts(sim: &sim::Vxi11Sim) -> Vxi11Options {
    let mut o = Vxi11Options::new("127.0.0.1", "inst0");
    o.portmap_port = sim.portmap.port();
    o.io_timeout = Duration::from_millis(400);
    o
}

async fn query(c: &mut Vxi11Client, q: &str) -> String {
    timeout(BOUND, c.write(format!("{q}\n").as_bytes()))
        .await
        .unwrap()
        .unwrap();
    let r = timeout(BOUND, c.read()).await.unwrap().unwrap();
    String::from_utf8(r).unwrap()
}

#[tokio::test]
async fn portmapper_link_write_read_and_destroy() {
    let s = sim::start(Vxi11SimConfig::default(), analyzer())
        .await
        .unwrap();
    let port = get_core_port("127.0.0.1", s.portmap.port(), BOUND)
        .await
        .unwrap();
    assert_eq!(port, s.core.port());
    let mut c = timeout(BOUND, Vxi11Client::connect(opts(&s)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.max_recv_size(), 4096);
    let idn = query(&mut c, "*IDN?").await;
    assert!(idn.contains("WT310"), "{idn:?}");
    assert!(idn.ends_with('\n'));
    // Setting then reading back proves writes reach the device and state persists per link.
    c.write(b":NUMERIC:NORMAL:NUMBER 3\n").await.unwrap();
    let n = query(&mut c, ":NUMERIC:NORMAL:NUMBER?").await;
    assert_eq!(n.trim(), "3");
    timeout(BOUND, c.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn long_messages_are_chunked_by_max_recv_size() {
    let cfg = Vxi11SimConfig {
        max_recv_size: 1024,
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = Vxi11Client::connect(opts(&s)).await.unwrap();
    assert_eq!(c.max_recv_size(), 1024);
    // 5 kB in one message: the simulator refuses any chunk above 1024 bytes (error 5), so this
    // only passes if the client cuts it and puts END on the last piece alone.
    let mut msg = "*CLS;".repeat(1000);
    msg.push_str("*IDN?\n");
    c.write(msg.as_bytes()).await.unwrap();
    let r = String::from_utf8(c.read().await.unwrap()).unwrap();
    assert!(r.contains("WT310"), "{r:?}");
}

#[tokio::test]
async fn reads_join_reqcnt_pieces_and_stop_at_the_term_char() {
    let cfg = Vxi11SimConfig {
        read_chunk: Some(7),
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = Vxi11Client::connect(opts(&s)).await.unwrap();
    let idn = query(&mut c, "*IDN?").await;
    assert!(idn.contains("WT310") && idn.len() > 14, "{idn:?}");

    let mut o = opts(&s);
    o.term_char = Some(b',');
    let mut c = Vxi11Client::connect(o).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    let first = String::from_utf8(c.read().await.unwrap()).unwrap();
    assert_eq!(first, "YOKOGAWA,", "{first:?}");
    let second = String::from_utf8(c.read().await.unwrap()).unwrap();
    assert!(second.starts_with("WT310"), "{second:?}");
}

#[tokio::test]
async fn unknown_device_name_is_refused_by_create_link() {
    let s = sim::start(Vxi11SimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut o = opts(&s);
    o.device = "gpib0,7".into();
    let e = Vxi11Client::connect(o).await.unwrap_err();
    assert_eq!(e.device_code(), Some(3), "{e}");
    assert!(e.to_string().contains("device not accessible"), "{e}");
    assert!(e.to_string().contains("create_link"), "{e}");
}

#[tokio::test]
async fn silent_instrument_gives_io_timeout_code() {
    let cfg = Vxi11SimConfig {
        faults: Faults {
            silent: true,
            ..Faults::default()
        },
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = Vxi11Client::connect(opts(&s)).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    let e = timeout(BOUND, c.read()).await.unwrap().unwrap_err();
    assert_eq!(e.device_code(), Some(15), "{e}");
    assert!(e.to_string().contains("i/o timeout"), "{e}");
    assert!(e.needs_reconnect());
}

#[tokio::test]
async fn device_clear_discards_the_pending_reply() {
    let s = sim::start(Vxi11SimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut c = Vxi11Client::connect(opts(&s)).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    c.clear().await.unwrap();
    let e = timeout(BOUND, c.read()).await.unwrap().unwrap_err();
    assert_eq!(e.device_code(), Some(15), "{e}");
}

#[tokio::test]
async fn rpc_refusals_and_missing_servers_are_named() {
    let s = sim::start(Vxi11SimConfig::default(), analyzer())
        .await
        .unwrap();
    // Asking the core channel for the portmapper program: the server refuses the program.
    let e = get_core_port("127.0.0.1", s.core.port(), BOUND)
        .await
        .unwrap_err();
    match &e {
        Vxi11Error::Rpc { failure, .. } => assert_eq!(*failure, RpcFailure::ProgUnavail),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("PROG_UNAVAIL"), "{e}");
    assert!(!e.needs_reconnect());

    // Nothing listening on the portmapper port.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = get_core_port("127.0.0.1", free, BOUND).await.unwrap_err();
    assert!(matches!(e, Vxi11Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("portmapper getport"), "{e}");
}

#[tokio::test]
async fn a_reply_over_the_bound_is_refused() {
    let cfg = Vxi11SimConfig {
        read_chunk: Some(4),
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut o = opts(&s);
    o.max_reply = 10;
    let mut c = Vxi11Client::connect(o).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    let e = timeout(BOUND, c.read()).await.unwrap().unwrap_err();
    assert!(matches!(e, Vxi11Error::ReplyTooLong { max: 10, .. }), "{e}");
    assert!(e.needs_reconnect());
}

#[tokio::test]
async fn drop_after_fault_closes_the_connection() {
    let cfg = Vxi11SimConfig {
        faults: Faults {
            drop_after: Some(1),
            ..Faults::default()
        },
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = Vxi11Client::connect(opts(&s)).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    let e = timeout(BOUND, c.read()).await.unwrap().unwrap_err();
    assert!(matches!(e, Vxi11Error::Closed { .. }), "{e}");
    assert!(e.needs_reconnect());
}

// ---------------------------------------------------------------------------------------------
// The same driver file over VXI-11, through config, gateway and instrument layer.

mod common;

fn vxi11_config(portmap_port: u16, dir: &std::path::Path) -> String {
    format!(
        r#"[paths]
drivers = ["{drivers}"]
data = "{data}"

[links.pa_vxi]
protocol = "scpi"
kind = "vxi11"
host = "127.0.0.1"
portmap_port = {portmap_port}
device = "inst0"
timeout = "1s"
connect_timeout = "3s"
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.pa1]
driver = "yokogawa-wt310e"
link = "pa_vxi"
"#,
        drivers = common::drivers_dir().display(),
        data = dir.join("data").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wt310e_driver_works_unchanged_over_vxi11_and_reconnects_after_a_restart() {
    let factory = analyzer();
    let s = sim::start(Vxi11SimConfig::default(), factory.clone())
        .await
        .unwrap();
    let (pmap, core) = (s.portmap, s.core);
    let dir = common::test_dir();
    let bench = common::load_config(dir.path(), &vxi11_config(pmap.port(), dir.path()));
    let gw = labgate::gateway::Gateway::start(&bench);
    let pa = gw.instrument("pa1").unwrap();

    let status = common::wait_connected(pa.link()).await;
    assert!(
        status.identity.as_deref().unwrap_or("").contains("WT310E"),
        "{status:?}"
    );
    let r = timeout(BOUND, pa.read(&["voltage", "power"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].unit, "V");
    assert!(
        matches!(r[0].value, labgate::reading::Value::Number(_)),
        "{r:?}"
    );
    timeout(BOUND, pa.act("integration_start", &Default::default()))
        .await
        .unwrap()
        .unwrap();
    let state = pa.scpi_raw(":INTEGRATE:STATE?").await.unwrap();
    assert_eq!(state.as_deref(), Some("START"));

    // The instrument restarts: same ports, new process. The link notices on its next request,
    // reconnects through the portmapper and the driver goes on as before.
    s.shutdown().await;
    let cfg = Vxi11SimConfig {
        portmap_port: pmap.port(),
        core_port: core.port(),
        ..Default::default()
    };
    let _s2 = sim::start(cfg, factory).await.unwrap();
    let (r, _failed) = common::until_ok(|| pa.read(&["voltage"])).await;
    assert_eq!(r[0].unit, "V");
    assert!(
        pa.link().status().reconnects >= 1,
        "{:?}",
        pa.link().status()
    );
}

#[tokio::test]
async fn silent_vxi11_instrument_is_a_link_timeout() {
    let cfg = Vxi11SimConfig {
        faults: Faults {
            delay: Some(Duration::from_secs(5)),
            ..Faults::default()
        },
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let dir = common::test_dir();
    let mut text = vxi11_config(s.portmap.port(), dir.path());
    text.push_str("skip_identity = true\n");
    let bench = common::load_config(dir.path(), &text);
    let gw = labgate::gateway::Gateway::start(&bench);
    let pa = gw.instrument("pa1").unwrap();
    common::wait_connected(pa.link()).await;
    let e = timeout(BOUND, pa.read(&["voltage"]))
        .await
        .unwrap()
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("no reply"), "{text}");
}

#[test]
fn check_names_bad_vxi11_keys_with_their_position() {
    let dir = common::test_dir();
    let text = vxi11_config(0, dir.path())
        .replace("portmap_port = 0\n", "portmap_port = 0\nport = 1024\n");
    let path = dir.path().join("labgate.toml");
    std::fs::write(&path, &text).unwrap();
    let d = labgate::config::load(&path).unwrap_err().to_string();
    assert!(d.contains("portmap_port must not be 0"), "{d}");
    // The diagnostic points at the line of the key.
    let line = text
        .lines()
        .position(|l| l.starts_with("portmap_port"))
        .unwrap()
        + 1;
    assert!(d.contains(&format!("labgate.toml:{line}:")), "{d}");
    // A core port cannot be set: VXI-11 finds it through the portmapper.
    assert!(
        d.contains(&format!(
            "labgate.toml:{}:1: links.pa_vxi.port: unknown key",
            line + 1
        )),
        "{d}"
    );
}

/// A triggered measurement over VXI-11: `*OPC?` is held by the instrument longer than the link
/// timeout, so this passes only if the query's own timeout reaches the instrument as its I/O
/// timeout; then a 401-value spectrum comes back in one reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sphere_measurement_waits_for_opc_over_vxi11() {
    use labgate::sim::sphere::{Sphere, SphereConfig};
    let sphere = Sphere::new(
        Plant::new(PlantConfig::default()),
        SphereConfig {
            integration_time: Duration::from_millis(1500),
        },
    );
    let factory: DeviceFactory =
        Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(sphere.clone()) });
    let s = sim::start(Vxi11SimConfig::default(), factory)
        .await
        .unwrap();
    let dir = common::test_dir();
    let text = vxi11_config(s.portmap.port(), dir.path())
        .replace("yokogawa-wt310e", "labgate-sim-sphere")
        .replace("pa1", "sphere1");
    let bench = common::load_config(dir.path(), &text);
    let gw = labgate::gateway::Gateway::start(&bench);
    let sphere = gw.instrument("sphere1").unwrap();
    common::wait_connected(sphere.link()).await;
    let r = timeout(BOUND, sphere.measure("spectrum"))
        .await
        .unwrap()
        .unwrap();
    let spd = r.iter().find(|r| r.quantity == "spd").expect("spd");
    match &spd.value {
        labgate::reading::Value::List(v) => assert_eq!(v.len(), 401),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn named_devices_each_have_their_instrument_and_faults() {
    let plant = Plant::new(PlantConfig::default());
    let pa = PowerAnalyzer::new(plant.clone(), PowerAnalyzerConfig::default());
    let src = labgate::sim::ac_source::AcSource::new(plant);
    let src: DeviceFactory = Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(src.clone()) });
    let silent = Faults {
        silent: true,
        ..Faults::default()
    };
    let dropping = Faults {
        drop_after: Some(2),
        ..Faults::default()
    };
    let devices = vec![
        sim::NamedDevice::new("inst0", analyzer_of(pa), dropping),
        sim::NamedDevice::new("INST1", src.clone(), Faults::default()),
        sim::NamedDevice::new("inst2", src.clone(), silent),
    ];
    let s = sim::start_named(Vxi11SimConfig::default(), devices)
        .await
        .unwrap();
    let connect = |device: &str| {
        let mut o = opts(&s);
        o.device = device.into();
        Vxi11Client::connect(o)
    };
    // Names match case-insensitively; each reaches its own instrument.
    let mut c1 = connect("inst1").await.unwrap();
    assert!(query(&mut c1, "*IDN?").await.starts_with("Chroma"));
    let mut c0 = connect("inst0").await.unwrap();
    assert!(query(&mut c0, "*IDN?").await.starts_with("YOKOGAWA"));
    // inst0's drop_after counts its own messages: the second closes its connection...
    c0.write(b"*CLS\n").await.unwrap();
    let e = timeout(BOUND, c0.read()).await.unwrap().unwrap_err();
    assert!(e.needs_reconnect(), "{e}");
    // ...while inst1's link goes on, and inst2 is silent (error 15).
    assert!(query(&mut c1, "*IDN?").await.starts_with("Chroma"));
    let mut c2 = connect("inst2").await.unwrap();
    c2.write(b"*IDN?\n").await.unwrap();
    let e = timeout(BOUND, c2.read()).await.unwrap().unwrap_err();
    assert_eq!(e.device_code(), Some(15), "{e}");

    let twice = vec![
        sim::NamedDevice::new("inst0", src.clone(), Faults::default()),
        sim::NamedDevice::new("Inst0", src, Faults::default()),
    ];
    let e = sim::start_named(Vxi11SimConfig::default(), twice)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"Inst0\" given twice"), "{e}");
}

fn analyzer_of(pa: PowerAnalyzer) -> DeviceFactory {
    Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(pa.clone()) })
}
