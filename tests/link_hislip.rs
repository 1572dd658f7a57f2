//! The HiSLIP client against the HiSLIP simulator on an ephemeral loopback port, fronting the
//! simulated WT310E: Initialize / AsyncInitialize, maximum message size, replies cut into Data
//! messages, message ids (a reply to an older message is skipped), device clear, and Error /
//! FatalError from the server.

use std::sync::Arc;
use std::time::Duration;

use common::lone_analyzer as analyzer;
use labgate::hislip::{HislipClient, HislipError, HislipOptions};
use labgate::sim::fault::Faults;
use labgate::sim::hislip::{self as sim, HislipSimConfig};
use labgate::sim::plant::{Plant, PlantConfig};
use labgate::sim::scpi_server::ScpiDevice;
use labgate::sim::vxi11::{DeviceFactory, NamedDevice};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn opts(s: &sim::HislipSim) -> HislipOptions {
    let mut o = HislipOptions::new("127.0.0.1", s.addr.port(), "hislip0");
    o.io_timeout = Duration::from_millis(500);
    o
}

async fn query(c: &mut HislipClient, q: &str) -> Result<String, HislipError> {
    timeout(BOUND, c.write(format!("{q}\n").as_bytes()))
        .await
        .unwrap()?;
    let r = timeout(BOUND, c.read()).await.unwrap()?;
    Ok(String::from_utf8(r).unwrap())
}

#[tokio::test]
async fn session_setup_and_query() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut c = timeout(BOUND, HislipClient::connect(opts(&s)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.server_version(), 0x0100);
    assert_eq!(c.server_max_message_size(), sim::SERVER_MAX_MESSAGE);
    let idn = query(&mut c, "*IDN?").await.unwrap();
    assert!(idn.starts_with("YOKOGAWA,WT310E"), "{idn:?}");
    c.write(b":NUMERIC:NORMAL:NUMBER 4\n").await.unwrap();
    let n = query(&mut c, ":NUM:NORM:NUM?").await.unwrap();
    assert_eq!(n.trim(), "4");
    // A second session gets its own id.
    let c2 = HislipClient::connect(opts(&s)).await.unwrap();
    assert_ne!(c2.session_id(), c.session_id());
}

#[tokio::test]
async fn replies_in_several_data_messages_are_joined() {
    let cfg = HislipSimConfig {
        reply_chunk: Some(5),
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = HislipClient::connect(opts(&s)).await.unwrap();
    let idn = query(&mut c, "*IDN?").await.unwrap();
    assert!(idn.starts_with("YOKOGAWA,WT310E,"), "{idn:?}");
    assert!(idn.ends_with('\n'));
}

#[tokio::test]
async fn a_reply_to_an_older_message_is_skipped() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut c = HislipClient::connect(opts(&s)).await.unwrap();
    // The first reply is never read: it carries the first message's id and must be skipped.
    c.write(b"*IDN?\n").await.unwrap();
    c.write(b":NUMERIC:NORMAL:NUMBER?\n").await.unwrap();
    let r = String::from_utf8(c.read().await.unwrap()).unwrap();
    assert!(!r.contains("YOKOGAWA"), "{r:?}");
    assert!(r.trim().parse::<u32>().is_ok(), "{r:?}");
}

#[tokio::test]
async fn device_clear_runs_both_channels_and_resets_ids() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut c = HislipClient::connect(opts(&s)).await.unwrap();
    c.write(b"*IDN?\n").await.unwrap();
    // The unread reply sits on the synchronous channel; clear must read past it.
    timeout(BOUND, c.clear()).await.unwrap().unwrap();
    let idn = query(&mut c, "*IDN?").await.unwrap();
    assert!(idn.starts_with("YOKOGAWA"), "{idn:?}");
}

#[tokio::test]
async fn unknown_sub_address_is_a_fatal_error() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut o = opts(&s);
    o.device = "hislip7".into();
    let e = HislipClient::connect(o).await.unwrap_err();
    match &e {
        HislipError::Server {
            fatal: true, code, ..
        } => assert_eq!(*code, 3),
        other => panic!("{other}"),
    }
    let text = e.to_string();
    assert!(text.contains("invalid initialization sequence"), "{text}");
    assert!(text.contains("hislip7"), "{text}");
}

#[tokio::test]
async fn fatal_error_mid_session_is_reported_and_needs_reconnect() {
    let cfg = HislipSimConfig {
        fatal_after: Some(2),
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = HislipClient::connect(opts(&s)).await.unwrap();
    query(&mut c, "*IDN?").await.unwrap();
    let e = query(&mut c, "*IDN?").await.unwrap_err();
    assert!(matches!(e, HislipError::Server { fatal: true, .. }), "{e}");
    assert!(e.to_string().contains("simulated fatal error"), "{e}");
    assert!(e.needs_reconnect());
}

#[tokio::test]
async fn silent_instrument_times_out() {
    let cfg = HislipSimConfig {
        faults: Faults {
            silent: true,
            ..Faults::default()
        },
        ..Default::default()
    };
    let s = sim::start(cfg, analyzer()).await.unwrap();
    let mut c = HislipClient::connect(opts(&s)).await.unwrap();
    let e = query(&mut c, "*IDN?").await.unwrap_err();
    assert!(matches!(e, HislipError::Timeout { .. }), "{e}");
    assert!(e.needs_reconnect());
}

#[tokio::test]
async fn a_reply_over_the_bound_is_refused_before_it_is_read() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let mut o = opts(&s);
    o.max_reply = 10;
    let mut c = HislipClient::connect(o).await.unwrap();
    let e = query(&mut c, "*IDN?").await.unwrap_err();
    assert!(
        matches!(e, HislipError::ReplyTooLong { max: 10, .. }),
        "{e}"
    );
    assert!(e.needs_reconnect());
}

#[tokio::test]
async fn nothing_listening_is_an_io_error() {
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = HislipOptions::new("127.0.0.1", free, "hislip0");
    let e = timeout(BOUND, HislipClient::connect(o))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, HislipError::Io { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The same driver file over HiSLIP, through config, gateway and instrument layer.

mod common;

fn hislip_config(port: u16, device: &str, dir: &std::path::Path) -> String {
    format!(
        r#"[paths]
drivers = ["{drivers}"]
data = "{data}"

[links.pa_hs]
protocol = "scpi"
kind = "hislip"
host = "127.0.0.1"
port = {port}
device = "{device}"
timeout = "1s"
connect_timeout = "3s"
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.pa1]
driver = "yokogawa-wt310e"
link = "pa_hs"
"#,
        drivers = common::drivers_dir().display(),
        data = dir.join("data").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wt310e_driver_works_unchanged_over_hislip_and_reconnects_after_a_restart() {
    let factory = analyzer();
    let s = sim::start(HislipSimConfig::default(), factory.clone())
        .await
        .unwrap();
    let addr = s.addr;
    let dir = common::test_dir();
    let bench = common::load_config(
        dir.path(),
        &hislip_config(addr.port(), "hislip0", dir.path()),
    );
    let gw = labgate::gateway::Gateway::start(&bench);
    let pa = gw.instrument("pa1").unwrap();

    let status = common::wait_connected(pa.link()).await;
    assert!(
        status.identity.as_deref().unwrap_or("").contains("WT310E"),
        "{status:?}"
    );
    let r = timeout(BOUND, pa.read(&["voltage", "current", "power"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[2].unit, "W");
    timeout(BOUND, pa.act("integration_start", &Default::default()))
        .await
        .unwrap()
        .unwrap();
    let state = pa.scpi_raw(":INTEGRATE:STATE?").await.unwrap();
    assert_eq!(state.as_deref(), Some("START"));

    s.shutdown().await;
    let cfg = HislipSimConfig {
        port: addr.port(),
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
async fn wrong_sub_address_leaves_the_link_failed_with_the_reason() {
    let s = sim::start(HislipSimConfig::default(), analyzer())
        .await
        .unwrap();
    let dir = common::test_dir();
    let bench = common::load_config(
        dir.path(),
        &hislip_config(s.addr.port(), "hislip3", dir.path()),
    );
    let gw = labgate::gateway::Gateway::start(&bench);
    let pa = gw.instrument("pa1").unwrap();
    let st = common::wait_status(pa.link(), |s| s.last_error.is_some()).await;
    assert_eq!(st.state, labgate::link::LinkState::Failed, "{st:?}");
    let err = st.last_error.unwrap();
    assert!(
        err.contains("hislip3") && err.contains("fatal error"),
        "{err}"
    );
}

/// A triggered measurement over HiSLIP: the `*OPC?` reply comes later than the link timeout, so
/// this passes only if the read waits for the query's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sphere_measurement_waits_for_opc_over_hislip() {
    use labgate::sim::sphere::{Sphere, SphereConfig};
    let sphere = Sphere::new(
        Plant::new(PlantConfig::default()),
        SphereConfig {
            integration_time: Duration::from_millis(1500),
        },
    );
    let factory: DeviceFactory =
        Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(sphere.clone()) });
    let s = sim::start(HislipSimConfig::default(), factory)
        .await
        .unwrap();
    let dir = common::test_dir();
    let text = hislip_config(s.addr.port(), "hislip0", dir.path())
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
    let src = labgate::sim::ac_source::AcSource::new(plant);
    let src: DeviceFactory = Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(src.clone()) });
    let silent = Faults {
        silent: true,
        ..Faults::default()
    };
    let devices = vec![
        NamedDevice::new("hislip0", analyzer(), Faults::default()),
        NamedDevice::new("HISLIP1", src.clone(), Faults::default()),
        NamedDevice::new("hislip2", src, silent),
    ];
    let s = sim::start_named(HislipSimConfig::default(), devices)
        .await
        .unwrap();
    let connect = |device: &str| {
        let mut o = opts(&s);
        o.device = device.into();
        HislipClient::connect(o)
    };
    let mut c0 = connect("hislip0").await.unwrap();
    let mut c1 = connect("hislip1").await.unwrap();
    assert!(
        query(&mut c0, "*IDN?")
            .await
            .unwrap()
            .starts_with("YOKOGAWA")
    );
    assert!(query(&mut c1, "*IDN?").await.unwrap().starts_with("Chroma"));
    let mut c2 = connect("hislip2").await.unwrap();
    let e = query(&mut c2, "*IDN?").await.unwrap_err();
    assert!(matches!(e, HislipError::Timeout { .. }), "{e}");
    let e = connect("hislip3").await.unwrap_err();
    assert!(e.to_string().contains("hislip3"), "{e}");
}
