//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The python interpreter of the peers' virtualenv (created on first use), so tests can run an
/// independent Modbus implementation (pymodbus) against ours.
pub fn peers_python() -> PathBuf {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/ensure_venv.py"
        ))
        .output()
        .expect("python3 must be installed to run the peer tests");
    assert!(
        out.status.success(),
        "could not prepare the peers virtualenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The labgate binary built for this test run.
pub fn labgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_labgate"))
}
