//! The HiSLIP client against the HiSLIP simulator on an ephemeral loopback port, fronting the
//! simulated WT310E: Initialize / AsyncInitialize, maximum message size, replies cut into Data
//! messages, message ids (a reply to an older message is skipped), device clear, and Error /
//! FatalError from the server.

use std::sync::Arc;
use std::time::Duration;

use labgate::hislip::{HislipClient, HislipError, HislipOptions};
use labgate::sim::fault::Faults;
use labgate::sim::hislip::{self as sim, HislipSimConfig};
use labgate::sim::plant::{Plant, PlantConfig};
use labgate::sim::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
use labgate::sim::scpi_server::ScpiDevice;
use labgate::sim::vxi11::DeviceFactory;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn analyzer() -> DeviceFactory {
    let pa = PowerAnalyzer::new(
        Plant::new(PlantConfig::default()),
        PowerAnalyzerConfig::default(),
    );
    Arc::new(move || -> Box<dyn ScpiDevice> { Box::new(pa.clone()) })
}

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
