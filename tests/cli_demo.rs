//! The newcomer's tour exactly as the README shows it: `labgate sim` on the demo ports, then
//! `labgate read` with no config (the embedded demo bench). This is the only test that uses the
//! fixed demo ports (15025..15028, 15502), and the only test in this binary.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BOUND, labgate_bin};

fn labgate() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(labgate_bin());
    cmd.env_remove("LABGATE_CONFIG")
        .env_remove("LABGATE_LOG")
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_tour_sim_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = labgate()
        .arg("sim")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn labgate sim");

    // Wait until every demo port accepts (bounded); a sim that exits early says why.
    let deadline = tokio::time::Instant::now() + BOUND;
    for port in [15025u16, 15026, 15027, 15028, 15502] {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Some(status) = sim.try_wait().unwrap() {
                let out = sim.wait_with_output().await.unwrap();
                panic!(
                    "labgate sim exited ({status}) before serving port {port}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {port} never accepted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for (args, prefix, unit) in [
        (["read", "pa1", "voltage"], "voltage = ", " V"),
        (
            ["read", "chamber1", "temperature"],
            "temperature = ",
            " degC",
        ),
    ] {
        let out =
            tokio::time::timeout(BOUND, labgate().args(args).current_dir(dir.path()).output())
                .await
                .expect("bounded")
                .expect("run labgate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "labgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.trim();
        let num = line
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(unit))
            .unwrap_or_else(|| panic!("{args:?} printed {line:?}"));
        num.parse::<f64>()
            .unwrap_or_else(|_| panic!("{args:?} printed {line:?}"));
    }

    // An action whose argument picks the coil, as the README shows it.
    for (args, expect) in [
        (&["act", "rack1", "relay_on", "position=5"][..], "ok"),
        (
            &["read", "rack1", "relay_05", "relay_04"][..],
            "relay_05 = true\nrelay_04 = false",
        ),
    ] {
        let out =
            tokio::time::timeout(BOUND, labgate().args(args).current_dir(dir.path()).output())
                .await
                .expect("bounded")
                .expect("run labgate");
        assert!(
            out.status.success(),
            "labgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "{args:?}"
        );
    }

    // The replies came from this simulator, not from another process holding the demo ports.
    if let Some(status) = sim.try_wait().unwrap() {
        let out = sim.wait_with_output().await.unwrap();
        panic!(
            "labgate sim exited ({status}); the demo ports are held by another process: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sim.start_kill().expect("stop the simulator");
    let status = tokio::time::timeout(BOUND, sim.wait())
        .await
        .expect("simulator stops")
        .unwrap();
    assert!(!status.success(), "killed, not exited on its own");
}
