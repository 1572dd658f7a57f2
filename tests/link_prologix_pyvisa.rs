//! Against a Prologix client we did not write: PyVISA-py (`PRLGX-TCPIP::host::port::INTFC`
//! with `GPIB::N::INSTR` resources) talking to labgate's simulated GPIB-Ethernet adapter, so the
//! adapter simulation that the link tests rely on is checked by an independent hand. PyVISA-py
//! lives in the peers virtualenv (tests/peers/ensure_venv.py, tests/peers/requirements.txt); if
//! it cannot be made the test fails rather than skips.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use labgate::sim::bench::{GPIB_ADDRESSES, SimBenchConfig};
use tokio::process::Command;

/// Creating the virtualenv the first time installs packages; later runs only start python.
const VENV_WAIT: Duration = Duration::from_secs(300);
const SCRIPT_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_drives_the_simulated_prologix_adapter() {
    let python = tokio::time::timeout(VENV_WAIT, tokio::task::spawn_blocking(common::peers_python))
        .await
        .expect("preparing the peers virtualenv timed out")
        .unwrap();
    let bench = common::start_bench(SimBenchConfig {
        prologix_port: Some(0),
        ..SimBenchConfig::ephemeral()
    })
    .await;
    let port = bench.prologix.unwrap().port();
    let [pa, src, ..] = GPIB_ADDRESSES;
    let out = tokio::time::timeout(
        SCRIPT_WAIT,
        Command::new(python)
            .arg(format!(
                "{}/tests/peers/pyvisa_prologix.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args([port.to_string(), pa.to_string(), src.to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pyvisa_prologix.py timed out")
    .expect("run pyvisa_prologix.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pyvisa_prologix.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json from the script");
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_uppercase();
    assert!(s("idn_a").contains("YOKOGAWA"), "{v}");
    assert!(s("idn_b").contains("CHROMA"), "{v}");
    let setpoint: f64 = s("setpoint_b").parse().expect("a number");
    assert!((setpoint - 115.0).abs() < 1e-6, "{v}");
    let who: Vec<String> = v["alternating"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_uppercase())
        .collect();
    assert!(
        who[0].contains("YOKOGAWA") && who[2].contains("YOKOGAWA"),
        "{v}"
    );
    assert!(
        who[1].contains("CHROMA") && who[3].contains("CHROMA"),
        "{v}"
    );
    // PyVISA-py also switches the address only on a change: a, b, b, b, a, b, a, b.
    let switches = bench
        .prologix_stats
        .address_switches
        .load(Ordering::Relaxed);
    assert_eq!(switches, 6, "{v}");
}
