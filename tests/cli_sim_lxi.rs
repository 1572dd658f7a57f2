//! `labgate sim --vxi11-port --hislip-port` as a user runs it (ephemeral ports here: 0 for
//! every option): the start-up lines name the VXI-11 and HiSLIP endpoints, `labgate` with the
//! docs/links.md config reaches the instruments through them (switching the source on over
//! VXI-11 lights the lamp read over HiSLIP), and PyVISA-py reads `*IDN?` from both.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{BOUND, docs_sim_lxi_config, labgate_bin};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

fn labgate() -> Command {
    let mut cmd = Command::new(labgate_bin());
    cmd.env_remove("LABGATE_CONFIG")
        .env_remove("LABGATE_LOG")
        .kill_on_drop(true);
    cmd
}

/// A running `labgate sim` and the endpoints it printed.
struct Sim {
    child: Child,
    printed: String,
    portmap: SocketAddr,
    core: SocketAddr,
    hislip: SocketAddr,
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
}

/// Start `labgate sim` on ephemeral ports and read its start-up lines (bounded).
async fn start_sim() -> Sim {
    let mut child = labgate()
        .args([
            "sim",
            "--scpi-port",
            "0",
            "--modbus-port",
            "0",
            "--vxi11-port",
            "0",
            "--hislip-port",
            "0",
            "--tau",
            "500ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn labgate sim");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let read = timeout(BOUND, async {
        while let Some(line) = lines.next_line().await? {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("simulators running") {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await;
    if !matches!(read, Ok(Ok(true))) {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "labgate sim did not start ({read:?}); stdout so far:\n{printed}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The line under each heading holds the addresses.
    let under = |heading: &str| -> &str {
        let mut it = printed.lines();
        it.find(|l| l.starts_with(heading))
            .unwrap_or_else(|| panic!("no {heading:?} line in:\n{printed}"));
        it.next().unwrap_or("").trim()
    };
    let v = under("vxi-11 devices (analyzer inst0, source inst1, sphere inst2, logger inst3)");
    let (pm, core) = v
        .strip_prefix("portmapper ")
        .and_then(|r| r.split_once("  core "))
        .unwrap_or_else(|| panic!("vxi-11 endpoints {v:?}"));
    let (portmap, core) = (addr(pm), addr(core));
    let h = under(
        "hislip sub-addresses (analyzer hislip0, source hislip1, sphere hislip2, logger hislip3)",
    );
    let hislip = addr(
        h.strip_prefix("tcp")
            .unwrap_or_else(|| panic!("hislip endpoint {h:?}"))
            .trim(),
    );
    Sim {
        child,
        printed,
        portmap,
        core,
        hislip,
    }
}

impl Sim {
    /// Stop the simulator; it must still have been running (so the replies came from it).
    async fn stop(mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "labgate sim exited early; it printed:\n{}",
            self.printed
        );
        self.child.start_kill().unwrap();
        timeout(BOUND, self.child.wait()).await.unwrap().unwrap();
    }
}

async fn run(config: &Path, args: &[&str]) -> Output {
    timeout(
        BOUND,
        labgate().arg("--config").arg(config).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("labgate {args:?} did not finish"))
    .expect("run labgate")
}

fn ok(args: &[&str], o: &Output) -> String {
    assert!(
        o.status.success(),
        "labgate {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The docs block saved as docs/links.md says: `config/sim-lxi.toml` in a checkout, so the
/// default paths find `../drivers` (a link to the repository's here).
fn write_docs_config(dir: &Path, sim: &Sim) -> PathBuf {
    std::os::unix::fs::symlink(common::drivers_dir(), dir.join("drivers")).unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let path = dir.join("config").join("sim-lxi.toml");
    std::fs::write(
        &path,
        docs_sim_lxi_config(sim.portmap.port(), sim.hislip.port()),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labgate_through_the_documented_config_over_vxi11_and_hislip() {
    let sim = start_sim().await;
    assert_ne!(sim.portmap.port(), sim.core.port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_docs_config(dir.path(), &sim);

    ok(&["check"], &run(&cfg, &["check"]).await);
    let out = ok(&["links"], &run(&cfg, &["links"]).await);
    for (link, idn) in [
        ("vxi_pa", "YOKOGAWA"),
        ("vxi_src", "Chroma"),
        ("hislip_pa", "YOKOGAWA"),
        ("hislip_src", "Chroma"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(link))
            .unwrap_or_else(|| panic!("no {link} in:\n{out}"));
        assert!(line.contains("connected") && line.contains(idn), "{line}");
    }

    let r = ok(
        &["read"],
        &run(&cfg, &["read", "src_hislip", "output"]).await,
    );
    assert_eq!(r.trim(), "output = false");
    for args in [
        &["act", "src_vxi", "set_voltage", "volts=230"][..],
        &["act", "src_vxi", "output", "on=true"],
    ] {
        assert_eq!(ok(args, &run(&cfg, args).await).trim(), "ok");
    }
    let r = ok(
        &["read"],
        &run(&cfg, &["read", "src_hislip", "output"]).await,
    );
    assert_eq!(
        r.trim(),
        "output = true",
        "switched on over VXI-11, read over HiSLIP"
    );

    // The lamp warms up with tau 500 ms; the analyzer over HiSLIP sees it draw power.
    let deadline = Instant::now() + BOUND;
    loop {
        let args = ["read", "pa_hislip", "power"];
        let out = ok(&args, &run(&cfg, &args).await);
        let w: f64 = out
            .trim()
            .strip_prefix("power = ")
            .and_then(|r| r.strip_suffix(" W"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{args:?} printed {out:?}"));
        if w > 5.0 {
            assert!(w < 20.0, "a 9.5 W lamp: {w}");
            break;
        }
        assert!(Instant::now() < deadline, "power stayed at {w} W");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyvisa_py_reads_idn_from_labgate_sims_vxi11_and_hislip() {
    let sim = start_sim().await;
    let (pm, core, hs) = (sim.portmap.port(), sim.core.port(), sim.hislip.port());
    let resources = [
        // Through the portmapper (the script points PyVISA-py's at the printed port)...
        (
            "TCPIP::127.0.0.1::inst0::INSTR".to_string(),
            "YOKOGAWA,WT310E",
        ),
        // ...and on the core port, as unmodified PyVISA-py reaches a non-root `labgate sim`.
        (
            format!("TCPIP::127.0.0.1,{core}::inst1::INSTR"),
            "Chroma ATE,61502",
        ),
        (
            format!("TCPIP::127.0.0.1::hislip2,{hs}::INSTR"),
            "LABGATE,SIM-SPHERE",
        ),
        (
            format!("TCPIP::127.0.0.1::hislip3,{hs}::INSTR"),
            "HEWLETT-PACKARD,34970A",
        ),
    ];
    let pm = pm.to_string();
    let args = ["--idn-only", "--portmap-port", pm.as_str()]
        .into_iter()
        .chain(resources.iter().map(|(r, _)| r.as_str()));
    let v = common::run_peer_json("pyvisa_client.py", args).await;
    for (resource, idn) in &resources {
        let got = v[resource.as_str()].as_str().unwrap_or_default();
        assert!(got.starts_with(idn), "{resource}: {got:?}, wanted {idn}");
    }
    sim.stop().await;
}
