//! `Instrument::read` and `drain_errors` on a SCPI instrument, through a real link to the
//! simulated power analyzer. The instrument borrows its driver's SCPI settings (and a shared
//! default when the driver has no `[scpi]` table) instead of cloning them per call: these
//! tests pin both paths.

use std::sync::Arc;
use std::time::Duration;

use labgate::config::schema::{LinkConfig, LinkProtocol, Transport};
use labgate::diag::Source;
use labgate::driver::{Driver, load_file, parse_driver};
use labgate::instrument::{Instrument, scpi_setup};
use labgate::link::{self, LinkSpec, LinkState};
use labgate::reading::Value;
use labgate::sim::bench::{SimBenchConfig, start};

const WAIT: Duration = Duration::from_secs(10);

async fn instrument(driver: Arc<Driver>, addr: std::net::SocketAddr) -> Instrument {
    let spec = LinkSpec::from_config(
        "pa_link",
        &LinkConfig {
            protocol: LinkProtocol::Scpi,
            transport: Transport::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            timeout: None,
            connect_timeout: None,
            backoff_initial: None,
            backoff_max: None,
            inter_frame_delay: None,
        },
    );
    let handle = link::spawn(spec, Some(scpi_setup(&driver.file, false)));
    let mut rx = handle.watch();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.state == LinkState::Connected))
        .await
        .expect("link connects in time")
        .expect("link task alive");
    Instrument::new("pa1", driver, handle, None)
}

#[tokio::test]
async fn reads_numbers_with_units_and_drains_the_error_queue() {
    let sim = start(SimBenchConfig::ephemeral()).await.expect("sim bench");
    let path = format!(
        "{}/drivers/yokogawa-wt310e.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let driver = Arc::new(load_file(path.as_ref()).expect("driver loads"));
    let pa1 = instrument(driver, sim.power_analyzer).await;

    let readings = tokio::time::timeout(WAIT, pa1.read(&["voltage", "current"]))
        .await
        .expect("bounded")
        .expect("read");
    assert_eq!(readings.len(), 2, "{readings:?}");
    assert_eq!(readings[0].quantity, "voltage");
    assert_eq!(readings[0].unit, "V");
    assert_eq!(readings[1].unit, "A");
    for r in &readings {
        assert!(
            matches!(r.value, Value::Number(v) if v.is_finite()),
            "{r:?}"
        );
    }

    // A command the analyzer does not know lands in its error queue (Yokogawa numbers it 113,
    // without the IEEE 488.2 sign); draining reads it once.
    tokio::time::timeout(WAIT, pa1.scpi_raw(":NOSUCH:COMMand 1"))
        .await
        .expect("bounded")
        .expect("write");
    let errors = tokio::time::timeout(WAIT, pa1.drain_errors())
        .await
        .expect("bounded")
        .expect("drain");
    assert!(errors.iter().any(|e| e.code == 113), "{errors:?}");
    let again = tokio::time::timeout(WAIT, pa1.drain_errors())
        .await
        .expect("bounded")
        .expect("drain");
    assert!(again.is_empty(), "{again:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_driver_without_scpi_settings_uses_the_defaults() {
    let sim = start(SimBenchConfig::ephemeral()).await.expect("sim bench");
    // No [scpi] table: newline framing, the link's timeout, no error query.
    let text = r#"
[driver]
name = "bare-wt310"
protocol = "scpi"

[quantities.voltage]
query = ":NUMeric:NORMal:VALue? 1"
unit = "V"
"#;
    let driver = parse_driver(&Source::new("bare-wt310.toml", text)).expect("driver parses");
    assert!(driver.file.scpi.is_none());
    let pa1 = instrument(Arc::new(driver), sim.power_analyzer).await;
    let readings = tokio::time::timeout(WAIT, pa1.read(&["voltage"]))
        .await
        .expect("bounded")
        .expect("read");
    assert_eq!(readings.len(), 1);
    assert!(
        matches!(readings[0].value, Value::Number(_)),
        "{readings:?}"
    );
    let errors = tokio::time::timeout(WAIT, pa1.drain_errors())
        .await
        .expect("bounded")
        .expect("drain");
    assert!(errors.is_empty(), "no error query configured: {errors:?}");
    sim.shutdown().await;
}
