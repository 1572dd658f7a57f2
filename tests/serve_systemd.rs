//! systemd/labgate.service: `systemd-analyze verify` accepts it without a single complaint, and
//! it keeps the settings the daemon relies on.

use std::process::Command;

const UNIT: &str = include_str!("../systemd/labgate.service");

#[test]
fn unit_has_the_settings_the_daemon_relies_on() {
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "SupplementaryGroups=dialout",
        "StateDirectory=labgate",
        "ConfigurationDirectory=labgate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "DeviceAllow=char-ttyUSB rw",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "unit lacks {line:?}"
        );
    }
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if probe.is_err() {
        let why = "systemd-analyze is not installed (apt-get install -y systemd)";
        // CI must run the real check; a developer machine without systemd is told why.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("NOTE: unit not verified: {why}");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("labgate.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/labgate", env!("CARGO_BIN_EXE_labgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values (it only warns): any line naming our unit
    // is a problem.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("labgate.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
}
