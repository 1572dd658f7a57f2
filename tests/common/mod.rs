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

/// A simulated WT310E on its own plant, as the VXI-11 and HiSLIP simulators serve it: every
/// connection gets a clone sharing its state.
pub fn lone_analyzer() -> labgate::sim::vxi11::DeviceFactory {
    use labgate::sim::plant::{Plant, PlantConfig};
    use labgate::sim::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
    labgate::sim::vxi11::shared_device(&PowerAnalyzer::new(
        Plant::new(PlantConfig::default()),
        PowerAnalyzerConfig::default(),
    ))
}

/// Python start-up and imports can take seconds on a loaded machine.
pub const PYTHON_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// [`peers_python`], made once per test process.
pub fn python() -> PathBuf {
    static PY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PY.get_or_init(peers_python).clone()
}

/// The path of a peer script in tests/peers.
pub fn peer(script: &str) -> String {
    format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a peer script to completion (bounded) and returns the JSON object it printed.
pub async fn run_peer_json<I, S>(script: &str, args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = tokio::time::timeout(
        PYTHON_WAIT,
        tokio::process::Command::new(python())
            .arg(peer(script))
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} timed out"))
    .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Starts a peer server script and returns it with the first line it printed (its ports),
/// waited for with a bound. The child is killed when dropped.
pub async fn start_peer_server(script: &str, stdin: bool) -> (tokio::process::Child, String) {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(python())
        .arg(peer(script))
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    let read = tokio::time::timeout(
        PYTHON_WAIT,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0),
        "{script} printed nothing: {read:?}"
    );
    (child, line.trim().to_string())
}

/// The labgate binary built for this test run.
pub fn labgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_labgate"))
}

// ---------------------------------------------------------------------------------------------
// A simulated bench behind a real config file and a real gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use labgate::config::{self, Bench};
use labgate::gateway::Gateway;
use labgate::link::{LinkHandle, LinkState, LinkStatus};
use labgate::sim::bench::{self, BenchFaults, SimBench, SimBenchConfig};
use labgate::sim::plant::PlantConfig;
use tempfile::TempDir;

/// Upper bound for anything a test waits on.
pub const BOUND: Duration = Duration::from_secs(15);

/// The repository's shipped driver directory.
pub fn drivers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/drivers"))
}

/// A plant that warms up in about a second, so coupling tests do not wait 20 s.
pub fn quick_plant() -> PlantConfig {
    PlantConfig {
        tau: Duration::from_millis(500),
        ..PlantConfig::default()
    }
}

/// Where each simulated endpoint is reachable; tests may point one at a proxy instead.
#[derive(Debug, Clone)]
pub struct Ports {
    pub power_analyzer: u16,
    pub ac_source: u16,
    pub sphere: u16,
    pub logger: u16,
    pub modbus: u16,
}

impl Ports {
    pub fn of(bench: &SimBench) -> Ports {
        Ports {
            power_analyzer: bench.power_analyzer.port(),
            ac_source: bench.ac_source.port(),
            sphere: bench.sphere.port(),
            logger: bench.logger.port(),
            modbus: bench.modbus.port(),
        }
    }
}

fn toml_path(p: &Path) -> String {
    // TOML basic strings need backslashes and quotes escaped.
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A config like config/demo.toml on the given ports, with short timeouts and backoff so fault
/// tests recover quickly, drivers from the repository and from `dir/drivers`, no polls.
pub fn bench_toml(ports: &Ports, dir: &Path) -> String {
    format!(
        r#"[paths]
drivers = ["{repo}", "{extra}"]
data = "{data}"

[links.pa_link]
protocol = "scpi"
kind = "tcp"
host = "127.0.0.1"
port = {pa}
timeout = "2s"
connect_timeout = "3s"
backoff_initial = "50ms"
backoff_max = "300ms"

[links.src_link]
protocol = "scpi"
kind = "tcp"
host = "127.0.0.1"
port = {src}
backoff_initial = "50ms"
backoff_max = "300ms"

[links.sphere_link]
protocol = "scpi"
kind = "tcp"
host = "127.0.0.1"
port = {sphere}
timeout = "5s"
backoff_initial = "50ms"
backoff_max = "300ms"

[links.tc_link]
protocol = "scpi"
kind = "tcp"
host = "127.0.0.1"
port = {tc}
backoff_initial = "50ms"
backoff_max = "300ms"

[links.plc_link]
protocol = "modbus-tcp"
kind = "tcp"
host = "127.0.0.1"
port = {mb}
timeout = "1s"
backoff_initial = "50ms"
backoff_max = "300ms"

[instruments.pa1]
driver = "yokogawa-wt310e"
link = "pa_link"

[instruments.src1]
driver = "chroma-61500"
link = "src_link"

[instruments.sphere1]
driver = "labgate-sim-sphere"
link = "sphere_link"

[instruments.tc1]
driver = "keysight-34970a"
link = "tc_link"

[instruments.chamber1]
driver = "watlow-f4t"
link = "plc_link"
unit = 1

[instruments.ctrl1]
driver = "eurotherm-3200"
link = "plc_link"
unit = 2

[instruments.rack1]
driver = "relay-rack"
link = "plc_link"
unit = 3
"#,
        repo = toml_path(&drivers_dir()),
        extra = toml_path(&dir.join("drivers")),
        data = toml_path(&dir.join("data")),
        pa = ports.power_analyzer,
        src = ports.ac_source,
        sphere = ports.sphere,
        tc = ports.logger,
        mb = ports.modbus,
    )
}

/// A fresh tempdir with an (empty) `drivers` directory for test-only driver files.
pub fn test_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("drivers")).expect("drivers dir");
    dir
}

/// Write a test-only driver file into `dir/drivers`.
pub fn write_driver(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join("drivers").join(file), text).expect("write driver");
}

/// Write `labgate.toml` into `dir` and load it; a config problem fails the test with every
/// diagnostic.
pub fn load_config(dir: &Path, text: &str) -> Bench {
    let path = dir.join("labgate.toml");
    std::fs::write(&path, text).expect("write config");
    match config::load(&path) {
        Ok(b) => b,
        Err(d) => panic!("test config does not load:\n{d}\n--- config ---\n{text}"),
    }
}

/// Start a simulated bench (bounded).
pub async fn start_bench(cfg: SimBenchConfig) -> SimBench {
    tokio::time::timeout(BOUND, bench::start(cfg))
        .await
        .expect("sim bench start timed out")
        .expect("sim bench start")
}

/// A simulated bench on ephemeral ports with `faults`, a config pointing at it and a running
/// gateway.
pub async fn sim_gateway(faults: BenchFaults) -> (SimBench, Gateway, TempDir) {
    sim_gateway_with(
        SimBenchConfig {
            faults,
            plant: quick_plant(),
            ..SimBenchConfig::ephemeral()
        },
        |_, _| String::new(),
    )
    .await
}

/// Like [`sim_gateway`] with a whole bench config; `extra(bench, dir)` returns TOML appended to
/// the generated config (more links and instruments) and may write driver files into `dir`.
pub async fn sim_gateway_with(
    cfg: SimBenchConfig,
    extra: impl FnOnce(&SimBench, &Path) -> String,
) -> (SimBench, Gateway, TempDir) {
    let bench = start_bench(cfg).await;
    let dir = test_dir();
    let mut text = bench_toml(&Ports::of(&bench), dir.path());
    text.push('\n');
    text.push_str(&extra(&bench, dir.path()));
    let cfg = load_config(dir.path(), &text);
    let gw = Gateway::start(&cfg);
    (bench, gw, dir)
}

/// Wait (bounded) until the link's status satisfies `f`; returns that status.
pub async fn wait_status(link: &LinkHandle, f: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
    let mut w = link.watch();
    match tokio::time::timeout(BOUND, w.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!(
            "link {} never reached the wanted state; last: {:?}",
            link.name(),
            link.status()
        ),
    }
}

/// Wait (bounded) until the link is connected.
pub async fn wait_connected(link: &LinkHandle) -> LinkStatus {
    wait_status(link, |s| s.state == LinkState::Connected).await
}

/// Retry `f` (bounded, with a short pause) until it succeeds: used after a fault, while the
/// link reconnects with backoff. Returns the value and how many attempts failed first.
pub async fn until_ok<T, E: std::fmt::Debug, Fut>(mut f: impl FnMut() -> Fut) -> (T, usize)
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut failed = 0;
    loop {
        match f().await {
            Ok(v) => return (v, failed),
            Err(e) => {
                failed += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still failing after {failed} attempts: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A switchable TCP proxy, so a fault can be "lifted": new connections go to whichever target
// is selected now, existing ones keep their target until they close.

pub struct Switch {
    pub addr: SocketAddr,
    selected: Arc<AtomicUsize>,
    lines: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    /// Listen on an ephemeral loopback port and forward to `targets[0]` until told otherwise.
    pub async fn start(targets: Vec<SocketAddr>) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind switch");
        let addr = listener.local_addr().expect("switch addr");
        let selected = Arc::new(AtomicUsize::new(0));
        let sel = selected.clone();
        let lines = Arc::new(AtomicUsize::new(0));
        let counted = lines.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { return };
                        let target = targets[sel.load(Ordering::SeqCst)];
                        let counted = counted.clone();
                        conns.spawn(async move {
                            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (mut cr, mut cw) = client.split();
                            let (mut sr, mut sw) = server.into_split();
                            let up = async {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                let mut buf = [0u8; 4096];
                                loop {
                                    let n = match cr.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => n,
                                    };
                                    let nl = buf[..n].iter().filter(|b| **b == b'\n').count();
                                    counted.fetch_add(nl, Ordering::SeqCst);
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                                let _ = sw.shutdown().await;
                            };
                            let down = tokio::io::copy(&mut sr, &mut cw);
                            // Either side closing ends the proxied connection.
                            tokio::select! {
                                _ = up => {}
                                _ = down => {}
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Switch {
            addr,
            selected,
            lines,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Newline bytes sent by clients so far: SCPI request lines, through every connection.
    pub fn lines_sent(&self) -> usize {
        self.lines.load(Ordering::SeqCst)
    }

    /// New connections go to `targets[i]`.
    pub fn select(&self, i: usize) {
        self.selected.store(i, Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which closes every proxied connection.
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The ready-to-copy config of docs/links.md for `labgate sim --vxi11-port --hislip-port`.

/// The `config/sim-lxi.toml` block of docs/links.md, exactly as documented.
pub fn docs_sim_lxi_snippet() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/links.md"))
        .expect("read docs/links.md");
    let start = doc
        .find("```toml\n# config/sim-lxi.toml")
        .expect("docs/links.md has the config/sim-lxi.toml block");
    let body = &doc[start + "```toml\n".len()..];
    let end = body.find("```").expect("the block is closed");
    body[..end].to_string()
}

/// The documented ports of that block.
pub const DOCS_VXI11_PORT: u16 = 11111;
pub const DOCS_HISLIP_PORT: u16 = 4880;

/// The docs/links.md block on other ports (the documented ones may be taken on a test machine):
/// only the port values change, and each must be there as documented.
pub fn docs_sim_lxi_config(portmap_port: u16, hislip_port: u16) -> String {
    let text = docs_sim_lxi_snippet();
    let vxi = format!("portmap_port = {DOCS_VXI11_PORT}");
    let hs = format!("\nport = {DOCS_HISLIP_PORT}");
    assert_eq!(text.matches(&vxi).count(), 2, "two vxi11 links:\n{text}");
    assert_eq!(text.matches(&hs).count(), 2, "two hislip links:\n{text}");
    text.replace(&vxi, &format!("portmap_port = {portmap_port}"))
        .replace(&hs, &format!("\nport = {hislip_port}"))
}
