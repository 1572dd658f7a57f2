//! Per-instrument faults behind the simulated Prologix adapter, seen through labgate's own
//! prologix link: each fault shows at its GPIB address only, the way a real instrument's would
//! through a real adapter.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{BOUND, load_config, start_bench, test_dir, until_ok, wait_connected};
use labgate::config::schema::Transport;
use labgate::gateway::Gateway;
use labgate::link::LinkError;
use labgate::link::message::{self, MessageError, MessageIo, ReadSpec};
use labgate::reading::Value;
use labgate::sim::bench::{BenchFaults, GPIB_ADDRESSES, SimBench, SimBenchConfig};
use labgate::sim::fault::Faults;

async fn bench_with(faults: BenchFaults) -> SimBench {
    start_bench(SimBenchConfig {
        prologix_port: Some(0),
        plant: common::quick_plant(),
        faults,
        ..SimBenchConfig::ephemeral()
    })
    .await
}

async fn open(bench: &SimBench, timeout: Duration) -> Box<dyn MessageIo> {
    let t = Transport::Prologix {
        host: "127.0.0.1".into(),
        port: bench.prologix.expect("adapter configured").port(),
    };
    tokio::time::timeout(BOUND, message::open(&t, timeout))
        .await
        .expect("bounded")
        .unwrap_or_else(|(e, _)| panic!("open: {e}"))
}

/// `*IDN?` to `address`, its reply within `timeout`.
async fn idn(
    io: &mut Box<dyn MessageIo>,
    address: u8,
    timeout: Duration,
) -> Result<String, MessageError> {
    let exchange = async {
        io.select(Some(address)).await?;
        io.write_msg(b"*IDN?\n").await?;
        let reply = io
            .read_msg(ReadSpec {
                timeout,
                max: 4096,
                terminator: b"\n",
            })
            .await?;
        Ok(String::from_utf8_lossy(&reply).trim().to_string())
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("bounded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_instrument_is_named_by_address_and_its_neighbours_keep_answering() {
    let [pa, src, sphere, _] = GPIB_ADDRESSES;
    let bench = bench_with(BenchFaults {
        sphere: Faults {
            silent: true,
            ..Faults::default()
        },
        ..BenchFaults::default()
    })
    .await;
    let timeout = Duration::from_millis(250);
    let mut io = open(&bench, timeout).await;

    let e = idn(&mut io, sphere, timeout).await.unwrap_err();
    // The adapter itself answers its `++ver` probe: the fault is the instrument's.
    assert!(
        matches!(e, MessageError::NotListening { address } if address == sphere),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains(&format!("no instrument listening at GPIB address {sphere}")),
        "{e}"
    );

    // Same adapter connection, other addresses: unaffected, and promptly so.
    let started = Instant::now();
    let a = idn(&mut io, pa, timeout).await.unwrap();
    assert!(a.to_uppercase().contains("YOKOGAWA"), "{a}");
    let s = idn(&mut io, src, timeout).await.unwrap();
    assert!(s.to_uppercase().contains("CHROMA"), "{s}");
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());

    // And the silent one stays silent, not a dead adapter.
    let e = idn(&mut io, sphere, timeout).await.unwrap_err();
    assert!(
        matches!(e, MessageError::NotListening { address } if address == sphere),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_instrument_answers_late_within_the_timeout_and_times_out_cleanly_beyond_it() {
    let [pa, src, ..] = GPIB_ADDRESSES;
    let delay = Duration::from_millis(150);
    let bench = bench_with(BenchFaults {
        power_analyzer: Faults {
            delay: Some(delay),
            ..Faults::default()
        },
        ..BenchFaults::default()
    })
    .await;
    let long = Duration::from_millis(600);
    let mut io = open(&bench, long).await;

    // Within the timeout: late, but the right reply.
    let started = Instant::now();
    let a = idn(&mut io, pa, long).await.unwrap();
    assert!(a.to_uppercase().contains("YOKOGAWA"), "{a}");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

    // The delay is the analyzer's alone.
    let started = Instant::now();
    let s = idn(&mut io, src, long).await.unwrap();
    assert!(s.to_uppercase().contains("CHROMA"), "{s}");
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());

    // Beyond the timeout (the adapter's `++read_tmo_ms` follows it): the adapter relays
    // nothing and still answers, so the error names the address.
    let short = Duration::from_millis(60);
    let started = Instant::now();
    let e = idn(&mut io, pa, short).await.unwrap_err();
    assert!(
        matches!(e, MessageError::NotListening { address } if address == pa),
        "{e:?}"
    );
    assert!(
        started.elapsed() < delay + Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // The next request succeeds: on this connection at another address, and at the late
    // instrument after a reconnect (what the link does after any timeout).
    let s = idn(&mut io, src, long).await.unwrap();
    assert!(s.to_uppercase().contains("CHROMA"), "{s}");
    drop(io);
    let mut io = open(&bench, long).await;
    let a = idn(&mut io, pa, long).await.unwrap();
    assert!(a.to_uppercase().contains("YOKOGAWA"), "{a}");
}

fn gateway_config(dir: &Path, port: u16) -> String {
    let [pa, src, ..] = GPIB_ADDRESSES;
    format!(
        r#"[paths]
drivers = ["{repo}"]
data = "{data}"

[links.gpib]
protocol = "scpi"
kind = "prologix"
host = "127.0.0.1"
port = {port}
timeout = "400ms"
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.pa_noid]
driver = "yokogawa-wt310e"
link = "gpib"
address = {pa}
skip_identity = true

[instruments.src1]
driver = "chroma-61500"
link = "gpib"
address = {src}
"#,
        repo = common::drivers_dir().display(),
        data = dir.join("data").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_one_gpib_instrument_is_a_parse_error_and_its_neighbour_still_reads() {
    let bench = bench_with(BenchFaults {
        power_analyzer: Faults {
            garbage: true,
            ..Faults::default()
        },
        ..BenchFaults::default()
    })
    .await;
    let dir = test_dir();
    let text = gateway_config(dir.path(), bench.prologix.unwrap().port());
    let gw = Gateway::start(&load_config(dir.path(), &text));
    wait_connected(&gw.links["gpib"]).await;
    let pa = gw.instrument("pa_noid").unwrap();
    let src = gw.instrument("src1").unwrap();

    for _ in 0..2 {
        let e = tokio::time::timeout(BOUND, pa.read(&["voltage"]))
            .await
            .expect("bounded")
            .unwrap_err();
        let link = e
            .link_error()
            .unwrap_or_else(|| panic!("expected a link error, got {e:?}"));
        assert!(matches!(link, LinkError::Mismatch { .. }), "{e:?}");
    }
    let (r, _) = until_ok(|| src.read(&["voltage_setpoint"])).await;
    assert!(
        matches!(r[0].value, Value::Number(v) if v.is_finite()),
        "{r:?}"
    );
}
