//! Idle resident memory of `labgate serve` on the demo config (issue 4 target: < 20 MB).
//!
//! Starts the built `labgate` binary (same profile as this bench) on the demo config rewritten to
//! an ephemeral simulator bench that runs in this process (so the simulators are not counted),
//! waits until `/api/v1/ready` answers 200, idles, then reads VmRSS / VmHWM / Threads from
//! `/proc/<pid>/status`. Baselines in the same run: a minimal tokio (multi-thread, default
//! workers) + axum "hello" server (this bench binary re-executed with
//! `LABGATE_BENCH_ROLE=hello`), and `sleep` as the floor of any process. Prints figures and
//! ratios; asserts nothing.
//!
//! `cargo bench --bench daemon_memory`. Knobs: `LABGATE_BENCH_IDLE_SECS` (5).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labgate::config;
use labgate::sim::bench::{SimBenchConfig, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROLE_ENV: &str = "LABGATE_BENCH_ROLE";
const SETUP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    /// Heap and other private memory, vs mapped files (the binary's own pages, shared libs).
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

fn status(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        threads: field("Threads:"),
    }
}

fn free_port() -> SocketAddr {
    // Bind and release: the tiny race with another process is acceptable in a bench.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Status code of a GET, or None while nothing listens.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_ok(addr: SocketAddr, path: &str, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        if get_status(addr, path).await == Some(200) {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("process exited before {path} answered: {st}");
        }
        assert!(
            t0.elapsed() < SETUP_WAIT,
            "{path} did not answer 200 in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

/// The baseline server: what tokio's default runtime and axum cost with no labgate in them.
fn hello_server(addr: SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let app =
            axum::Router::new().route("/api/v1/ready", axum::routing::get(|| async { "hello" }));
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(l, app).await.unwrap();
    });
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn measure(mut cmd: Command, addr: Option<SocketAddr>, idle: Duration) -> Mem {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    if let Some(addr) = addr {
        wait_ok(addr, "/api/v1/ready", &mut child.0).await;
    }
    tokio::time::sleep(idle).await;
    let pid = child.0.id();
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    println!("threads of pid {pid}: {}", names.join(", "));
    status(pid)
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let addr = role
            .strip_prefix("hello=")
            .and_then(|a| a.parse().ok())
            .expect("LABGATE_BENCH_ROLE=hello=<addr>");
        hello_server(addr);
        return;
    }
    let idle = Duration::from_secs_f64(
        std::env::var("LABGATE_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|s: &f64| *s > 0.0)
            .unwrap_or(5.0),
    );
    // The simulators on a small runtime of their own; the daemon is a separate process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = config::DEMO_CONFIG
            .replace(
                "port = 15025",
                &format!("port = {}", sim.power_analyzer.port()),
            )
            .replace("port = 15026", &format!("port = {}", sim.ac_source.port()))
            .replace("port = 15027", &format!("port = {}", sim.sphere.port()))
            .replace("port = 15028", &format!("port = {}", sim.logger.port()))
            .replace("port = 15502", &format!("port = {}", sim.modbus.port()));
        let text = format!(
            "[paths]\ndrivers = [{:?}]\nrecipes = {:?}\ndata = {:?}\n\n{text}",
            root.join("drivers").display().to_string(),
            root.join("config/recipes").display().to_string(),
            dir.path().join("data").display().to_string(),
        );
        let cfg = dir.path().join("labgate.toml");
        std::fs::write(&cfg, text).unwrap();

        println!(
            "idle {:.1} s after ready; cores available: {}",
            idle.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let addr = free_port();
        let mut serve = Command::new(env!("CARGO_BIN_EXE_labgate"));
        serve
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", &addr.to_string()])
            .env_remove("LABGATE_CONFIG");
        let daemon = measure(serve, Some(addr), idle).await;

        let addr = free_port();
        let mut hello = Command::new(std::env::current_exe().unwrap());
        hello.env(ROLE_ENV, format!("hello={addr}"));
        let base = measure(hello, Some(addr), idle).await;

        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let floor = measure(sleep, None, Duration::from_millis(300)).await;

        for (label, m) in [
            ("labgate serve (demo config)", daemon),
            ("tokio + axum hello server", base),
            ("sleep", floor),
        ] {
            println!(
                "{label:<28} VmRSS {:>9}  VmHWM {:>9}  (anon {:>9}, files {:>9})  threads {:>3}",
                kib(m.rss_kib),
                kib(m.hwm_kib),
                kib(m.anon_kib),
                kib(m.file_kib),
                m.threads
            );
        }
        println!(
            "ratio daemon/hello (RSS): {:.2}; daemon beyond hello: {}",
            daemon.rss_kib as f64 / base.rss_kib.max(1) as f64,
            kib(daemon.rss_kib.saturating_sub(base.rss_kib))
        );
        println!(
            "target < 20 MB resident: {}",
            if (daemon.rss_kib as f64) * 1024.0 < 20e6 {
                "ok"
            } else {
                "MISSED"
            }
        );
    });
}
