//! I/O figures of the instrument core: how close labgate's link and instrument layers come to a
//! bare client on the same simulator, what 500 polled instruments cost, and how near a Modbus RTU
//! link gets to the wire's ceiling. Prints figures and ratios measured in the same run; asserts
//! nothing (timing on a shared machine is not a pass/fail property).
//!
//! Scenarios (all on loopback / pseudo-terminals, ephemeral ports):
//! - `fleet`:  500 instruments on 50 Modbus TCP links polled at 1 Hz; CPU % of one core and
//!   resident memory of this process, against the same process idle. The simulators run in a
//!   child process (this binary re-executed with `LABGATE_BENCH_ROLE=modbus-sim`) so neither
//!   their CPU nor their memory is counted.
//! - `modbus`: sequential Modbus TCP reads, bare tokio-modbus vs `LinkHandle::modbus` vs
//!   `Instrument::read`.
//! - `scpi`:   sequential SCPI queries, bare `TcpStream` line loop vs `LinkHandle::scpi` vs
//!   `Instrument::read`.
//! - `rtu`:    Modbus RTU at 9600 baud over a pseudo-terminal against the paced simulator, vs the
//!   wire ceiling of the Modbus serial line timing.
//!
//! Environment (small defaults: a full run takes about a minute):
//! - `LABGATE_BENCH_ONLY`   comma list of scenarios (default: all)
//! - `LABGATE_BENCH_SECS`   seconds per slice in `modbus`/`scpi` (default 0.25)
//! - `LABGATE_BENCH_ROUNDS` rounds of slices, alternating the variants (default 12)
//! - `LABGATE_BENCH_CLIENT_THREADS` worker threads of the client runtime; 0 = a
//!   current-thread runtime (default: tokio's multi-thread default, one per core)
//! - `LABGATE_BENCH_FLEET_SECS` measured window of `fleet` (default 10), `..._IDLE_SECS` (3)
//! - `LABGATE_BENCH_FLEET_LINKS` / `..._UNITS` links and unit ids per link (default 50 / 10)
//! - `LABGATE_BENCH_RTU_SECS` seconds per RTU loop (default 5), `LABGATE_BENCH_RTU_REGS` (10)
//!
//! Run: `cargo bench --bench io`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labgate::config::schema::{FlowControl, LinkConfig, LinkProtocol, Parity, Transport};
use labgate::driver::{Driver, load_file};
use labgate::instrument::{Instrument, scpi_setup};
use labgate::link::{self, LinkHandle, LinkSpec, ScpiStep};
use labgate::modbus::ops::ModbusOp;
use labgate::modbus::value::Table;
use labgate::poll::{self, Latest};
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{Eurotherm, ModbusBench, RelayRack, serve_rtu_pty, serve_tcp};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const ROLE_ENV: &str = "LABGATE_BENCH_ROLE";
const ROLE_MODBUS_SIM: &str = "modbus-sim";
/// Upper bound on any setup wait (connecting, a child printing its port, a first poll).
const SETUP_WAIT: Duration = Duration::from_secs(15);

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|v: &f64| *v > 0.0)
        .unwrap_or(default)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|v: &usize| *v > 0)
        .unwrap_or(default)
}

fn secs(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(env_f64(name, default))
}

fn wanted(scenario: &str) -> bool {
    match std::env::var("LABGATE_BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == scenario),
        _ => true,
    }
}

fn driver(name: &str) -> Arc<Driver> {
    let path = format!("{}/drivers/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    match load_file(path.as_ref()) {
        Ok(d) => Arc::new(d),
        Err(diags) => {
            eprintln!("{diags}");
            std::process::exit(2);
        }
    }
}

fn tcp_link(name: &str, protocol: LinkProtocol, addr: SocketAddr) -> LinkSpec {
    LinkSpec::from_config(
        name,
        &LinkConfig {
            protocol,
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
    )
}

/// Waits (bounded) until the link reports connected.
async fn connected(handle: &LinkHandle) {
    let mut rx = handle.watch();
    let ok = tokio::time::timeout(
        SETUP_WAIT,
        rx.wait_for(|s| s.state == link::LinkState::Connected),
    )
    .await;
    if !matches!(ok, Ok(Ok(_))) {
        panic!(
            "link {} did not connect: {:?}",
            handle.name(),
            handle.status()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Process figures

/// User + system CPU time of this whole process (all threads).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `VmRSS` and `VmHWM` of this process in MiB, from /proc/self/status (kB there).
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU used over a wall-clock window, as % of one core.
struct CpuWindow {
    wall: Instant,
    cpu: Duration,
}

impl CpuWindow {
    fn start() -> CpuWindow {
        CpuWindow {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }
    fn percent(&self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = cpu_time().saturating_sub(self.cpu).as_secs_f64();
        100.0 * cpu / wall
    }
}

fn machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {model}, {cores} cores, linux {}, load average {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug (figures not representative)"
        } else {
            "release"
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Comparison plumbing

/// Runs the async block `op` back to back for `window`; evaluates to operations per second.
/// Stops at the first error, which is reported: a benchmark that silently measures failures is
/// worse than none. A macro rather than a function taking a closure, so the block may borrow the
/// bare clients mutably.
macro_rules! rate {
    ($label:expr, $window:expr, $op:expr) => {{ rate!($label, $window, &mut Vec::new(), $op) }};
    ($label:expr, $window:expr, $latencies:expr, $op:expr) => {{
        let latencies: &mut Vec<f64> = $latencies;
        let (label, window): (&str, Duration) = ($label, $window);
        // Warm-up: connection setup and first allocations are not timed.
        for _ in 0..20 {
            let r: Result<(), String> = $op.await;
            if let Err(e) = r {
                panic!("{label}: warm-up failed: {e}");
            }
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            for _ in 0..16 {
                let t = Instant::now();
                let r: Result<(), String> = $op.await;
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
                if let Err(e) = r {
                    panic!("{label}: failed after {n} operations: {e}");
                }
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    }};
}

/// An `Instrument::read` outcome as the `rate!` loop wants it: every quantity read, or why not.
fn all_read(
    r: Result<Vec<labgate::reading::Reading>, labgate::instrument::InstrumentError>,
    wanted: usize,
) -> Result<(), String> {
    match r {
        Ok(r) if r.len() == wanted => Ok(()),
        Ok(r) => Err(format!("{} of {wanted} readings", r.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Prints each variant's median rate and, against the bare baseline, the median of the
/// per-round ratios: rounds alternate the variants in short slices, so a ratio compares slices
/// run seconds apart under the same background load, which the shared machine makes necessary.
fn report_rates(
    what: &str,
    unit: &str,
    names: &[&str],
    rounds: &[Vec<f64>],
    latencies: &mut [Vec<f64>],
    target: f64,
) {
    for (i, name) in names.iter().enumerate() {
        let mut rates = rounds[i].clone();
        let spread = format!(
            "{:.0}..{:.0}",
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max)
        );
        let ratio = if i == 0 {
            String::new()
        } else {
            let mut ratios: Vec<f64> = rounds[i]
                .iter()
                .zip(&rounds[0])
                .map(|(v, b)| v / b)
                .collect();
            let r = median(&mut ratios);
            format!(
                "  ratio {r:.3} ({} target >= {target})",
                if r >= target { "meets" } else { "MISSES" }
            )
        };
        println!(
            "  {what} {name:<10} median {:>7.0} {unit}/s  (rounds {spread}){ratio}",
            median(&mut rates)
        );
    }
    // Latency percentiles over every timed operation: the median is what a caller sees when
    // the machine is not preempting it, so its ratio is the steadier view of the overhead.
    let p = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let base_p50 = p(&mut latencies[0], 0.5);
    for (i, name) in names.iter().enumerate() {
        let v = &mut latencies[i];
        let (p50, p90, p99) = (p(v, 0.5), p(v, 0.9), p(v, 0.99));
        let ratio = if i == 0 {
            String::new()
        } else {
            let r = base_p50 / p50;
            format!(
                "  p50 ratio {r:.3} ({} target >= {target})",
                if r >= target { "meets" } else { "MISSES" }
            )
        };
        println!(
            "  {what} {name:<10} latency p50 {p50:6.1} us  p90 {p90:6.1} us  p99 {p99:7.1} us  ({} ops){ratio}",
            v.len()
        );
    }
}

/// Runs a scenario's client side as a task spawned on the client runtime, where labgate's
/// pollers and API handlers run. `block_on` alone would drive it on the main thread, outside the
/// worker pool: every hop to a link task would then cross threads (a futex wake each way) while
/// the bare client never leaves the main thread, and the ratio would measure that placement,
/// not labgate.
fn on_workers<F, T>(client: &Runtime, scenario: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    client
        .block_on(client.spawn(scenario))
        .expect("benchmark task failed")
}

/// A runtime for the simulators, on its own thread, so they do not share the client's workers.
fn sim_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim")
        .enable_all()
        .build()
        .expect("simulator runtime")
}

// ---------------------------------------------------------------------------------------------
// 1. Modbus TCP

fn bench_modbus(client: &Runtime) {
    println!(
        "\n[modbus] Modbus TCP, one caller, eurotherm unit 2: FC03 of holding 1..2 (temperature + target_setpoint)"
    );
    let sims = sim_runtime();
    let bench = Arc::new(ModbusBench::default());
    let addr = sims.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_tcp(listener, bench, Faults::default()));
        addr
    });
    let window = secs("LABGATE_BENCH_SECS", 0.25);
    let rounds = env_usize("LABGATE_BENCH_ROUNDS", 12);
    let quantities = ["temperature", "target_setpoint"];
    let op = ModbusOp::Read {
        table: Table::Holding,
        address: 1,
        count: 2,
    };
    let (results, mut latencies) = on_workers(client, async move {
        use tokio_modbus::client::Reader;
        let mut results = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut latencies = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut bare = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(2))
            .await
            .expect("bare modbus connect");
        let handle = link::spawn(tcp_link("plc", LinkProtocol::ModbusTcp, addr), None);
        connected(&handle).await;
        let ctrl = Instrument::new("ctrl1", driver("eurotherm-3200"), handle.clone(), Some(2));

        // The instrument must turn this read into exactly the one request the baselines send,
        // or the comparison is not like for like.
        let before = handle.status().requests_ok;
        ctrl.read(&quantities).await.expect("instrument read");
        let per_read = handle.status().requests_ok - before;
        println!(
            "  requests per Instrument::read: {per_read} (must be 1 for a like-for-like ratio)"
        );

        for round in 0..rounds {
            // Each round starts with a different variant, so none always runs right after
            // the same other one.
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => results[0].push(rate!(
                        "bare tokio-modbus",
                        window,
                        &mut latencies[0],
                        async {
                            match bare.read_holding_registers(1, 2).await {
                                Ok(Ok(w)) if w.len() == 2 => Ok(()),
                                other => Err(format!("{other:?}")),
                            }
                        }
                    )),
                    1 => results[1].push(rate!(
                        "LinkHandle::modbus",
                        window,
                        &mut latencies[1],
                        async {
                            handle
                                .modbus(2, op.clone(), None)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    )),
                    _ => results[2].push(rate!(
                        "Instrument::read",
                        window,
                        &mut latencies[2],
                        async { all_read(ctrl.read(&quantities).await, quantities.len()) }
                    )),
                }
            }
        }
        (results, latencies)
    });
    report_rates(
        "modbus",
        "req",
        &["bare", "link", "instrument"],
        &results,
        &mut latencies,
        0.9,
    );
    sims.shutdown_timeout(Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// 2. SCPI

fn bench_scpi(client: &Runtime) {
    println!(
        "\n[scpi] SCPI over TCP, one caller, simulated WT310E: `:NUMeric:NORMal:VALue? 1` (voltage)"
    );
    let sims = sim_runtime();
    let sim = sims
        .block_on(labgate::sim::bench::start(
            labgate::sim::bench::SimBenchConfig::ephemeral(),
        ))
        .expect("sim bench");
    let addr = sim.power_analyzer;
    let window = secs("LABGATE_BENCH_SECS", 0.25);
    let rounds = env_usize("LABGATE_BENCH_ROUNDS", 12);
    let pa = driver("yokogawa-wt310e");
    let query = pa.file.quantities["voltage"]
        .query
        .clone()
        .expect("voltage query");
    let (results, mut latencies) = on_workers(client, async move {
        let mut results = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut latencies = vec![Vec::new(), Vec::new(), Vec::new()];
        // The bare client prepares the instrument the way the link does (same init lines), so
        // both ask the same question of an instrument in the same state.
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("bare connect");
        stream.set_nodelay(true).expect("nodelay");
        let (rd, mut wr) = stream.into_split();
        let mut rd = tokio::io::BufReader::new(rd);
        for line in &pa.file.init {
            wr.write_all(format!("{line}\n").as_bytes())
                .await
                .expect("init");
        }
        let request = format!("{query}\n");
        let mut line = String::new();

        let spec = tcp_link("pa_link", LinkProtocol::Scpi, addr);
        let handle = link::spawn(spec, Some(scpi_setup(&pa.file, false)));
        connected(&handle).await;
        let pa1 = Instrument::new("pa1", pa.clone(), handle.clone(), None);
        let step = ScpiStep::Query {
            text: query.clone(),
            timeout: handle.timeout(),
        };

        for round in 0..rounds {
            // Each round starts with a different variant, so none always runs right after
            // the same other one.
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => {
                        results[0].push(rate!("bare TcpStream", window, &mut latencies[0], async {
                            wr.write_all(request.as_bytes())
                                .await
                                .map_err(|e| e.to_string())?;
                            line.clear();
                            let n = rd.read_line(&mut line).await.map_err(|e| e.to_string())?;
                            if n == 0 || !line.ends_with('\n') {
                                return Err("connection closed".to_string());
                            }
                            Ok(())
                        }))
                    }
                    1 => results[1].push(rate!(
                        "LinkHandle::scpi",
                        window,
                        &mut latencies[1],
                        async {
                            handle
                                .scpi(vec![step.clone()])
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    )),
                    _ => results[2].push(rate!(
                        "Instrument::read",
                        window,
                        &mut latencies[2],
                        async { all_read(pa1.read(&["voltage"]).await, 1) }
                    )),
                }
            }
        }
        (results, latencies)
    });
    report_rates(
        "scpi",
        "query",
        &["bare", "link", "instrument"],
        &results,
        &mut latencies,
        0.9,
    );
    sims.block_on(sim.shutdown());
    sims.shutdown_timeout(Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// 3. 500 instruments polled at 1 Hz

/// The simulator child: serves `units` eurotherms on one Modbus TCP port, prints
/// `PORT <n>`, and exits when its stdin closes (so it never outlives the bench).
fn modbus_sim_child() {
    let units = env_usize("LABGATE_BENCH_FLEET_UNITS", 10).min(247) as u8;
    let rt = sim_runtime();
    let port = rt.block_on(async {
        let mut bench = ModbusBench::empty();
        for unit in 1..=units {
            bench = bench.with_device(unit, Eurotherm::new());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(serve_tcp(listener, Arc::new(bench), Faults::default()));
        port
    });
    println!("PORT {port}");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
        sink.clear();
    }
}

/// The child process serving the fleet's devices; killed and reaped on drop.
struct SimChild {
    child: Child,
    port: u16,
}

impl SimChild {
    fn start() -> SimChild {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .env(ROLE_ENV, ROLE_MODBUS_SIM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn simulator child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(SETUP_WAIT).unwrap_or_default();
        let Some(port) = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("simulator child did not report its port (got {line:?})");
        };
        SimChild { child, port }
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_fleet(client: &Runtime) {
    let links = env_usize("LABGATE_BENCH_FLEET_LINKS", 50);
    let units = env_usize("LABGATE_BENCH_FLEET_UNITS", 10).min(247);
    let window = secs("LABGATE_BENCH_FLEET_SECS", 10.0);
    let idle = secs("LABGATE_BENCH_FLEET_IDLE_SECS", 3.0);
    println!(
        "\n[fleet] {} instruments on {links} Modbus TCP links ({units} unit ids each), polled at 1 Hz (2 quantities each)",
        links * units
    );
    println!("  simulators in a child process; figures below are this (client) process only");

    // Idle baseline: the same process with its runtime up and nothing to do.
    let (idle_cpu, (idle_rss, _)) = client.block_on(async {
        let w = CpuWindow::start();
        tokio::time::sleep(idle).await;
        (w.percent(), memory_mib())
    });

    let sim = SimChild::start();
    let addr: SocketAddr = ([127, 0, 0, 1], sim.port).into();
    let eurotherm = driver("eurotherm-3200");
    let latest = Latest::default();
    let quantities = vec!["temperature".to_string(), "target_setpoint".to_string()];
    let (cpu, rss, hwm, requests, errors, rate) = client.block_on(async {
        let mut handles = Vec::new();
        let mut polls = Vec::new();
        for l in 0..links {
            let handle = link::spawn(
                tcp_link(&format!("plc{l}"), LinkProtocol::ModbusTcp, addr),
                None,
            );
            for u in 1..=units {
                let inst = Instrument::new(
                    &format!("ctrl{l}_{u}"),
                    eurotherm.clone(),
                    handle.clone(),
                    Some(u as u8),
                );
                polls.push(poll::spawn(
                    inst,
                    quantities.clone(),
                    Duration::from_secs(1),
                    latest.clone(),
                ));
            }
            handles.push(handle);
        }
        // Warm-up: every instrument has read once, so the window sees steady polling only.
        let want = links * units * quantities.len();
        let deadline = Instant::now() + SETUP_WAIT;
        while latest.len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if latest.len() < want {
            println!(
                "  warning: only {} of {want} readings after warm-up",
                latest.len()
            );
        }
        let count = |handles: &[LinkHandle]| {
            handles.iter().fold((0u64, 0u64), |(ok, bad), h| {
                let s = h.status();
                (ok + s.requests_ok, bad + s.requests_failed)
            })
        };
        let (ok0, bad0) = count(&handles);
        let w = CpuWindow::start();
        tokio::time::sleep(window).await;
        let cpu = w.percent();
        let (ok1, bad1) = count(&handles);
        let (rss, hwm) = memory_mib();
        for p in &polls {
            p.abort();
        }
        (
            cpu,
            rss,
            hwm,
            ok1 - ok0,
            bad1 - bad0,
            (ok1 - ok0) as f64 / window.as_secs_f64(),
        )
    });
    drop(sim);
    println!("  idle:   cpu {idle_cpu:6.2} % of one core   VmRSS {idle_rss:6.1} MiB");
    println!(
        "  polled: cpu {cpu:6.2} % of one core   VmRSS {rss:6.1} MiB   VmHWM {hwm:6.1} MiB   ({} requests ok, {errors} failed, {rate:.0} req/s over {:?})",
        requests, window
    );
    println!(
        "  delta:  cpu {:+.2} points  VmRSS {:+.1} MiB   targets: cpu < 5 % ({}), memory < 40 MB ({})",
        cpu - idle_cpu,
        rss - idle_rss,
        if cpu < 5.0 { "meets" } else { "MISSES" },
        // 40 MB = 38.1 MiB
        if hwm * 1.048_576 < 40.0 {
            "meets"
        } else {
            "MISSES"
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Modbus RTU at 9600 baud over a pseudo-terminal

fn bench_rtu(client: &Runtime) {
    const BAUD: u32 = 9600;
    let regs = env_usize("LABGATE_BENCH_RTU_REGS", 10).min(16) as u16;
    let window = secs("LABGATE_BENCH_RTU_SECS", 5.0);
    // 8-byte request + (5 + 2N)-byte reply, 11 bits a character, two t3.5 silences; the
    // simulator's turnaround is zero beyond that.
    let t35 = 3.5 * 11.0 / f64::from(BAUD);
    let transaction = 11.0 * (13.0 + 2.0 * f64::from(regs)) / f64::from(BAUD) + 2.0 * t35;
    let ceiling = 1.0 / transaction;
    println!(
        "\n[rtu] Modbus RTU {BAUD} 8N1 over a pseudo-terminal, paced simulator; FC04 of {regs} input registers (relay rack, unit 3; same frame sizes as FC03)"
    );
    println!(
        "  wire ceiling: 11*(13+2*{regs})/{BAUD} + 2*t3.5 = {:.2} ms -> {ceiling:.2} transactions/s",
        transaction * 1e3
    );
    let sims = sim_runtime();
    let bench = Arc::new(ModbusBench::empty().with_device(3, RelayRack::new()));
    let op = ModbusOp::Read {
        table: Table::Input,
        address: 0,
        count: regs,
    };
    let transport = |device: &str| Transport::Serial {
        device: device.into(),
        baud: BAUD,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
        flow_control: FlowControl::None,
    };
    // A fresh bus for each variant, so one client's leftovers cannot reach the other.
    let pty_bare = sims
        .block_on(async { serve_rtu_pty(bench.clone(), Faults::default(), Some(BAUD)) })
        .expect("rtu pty");
    let pty_link = sims
        .block_on(async { serve_rtu_pty(bench.clone(), Faults::default(), Some(BAUD)) })
        .expect("rtu pty");
    let (bare, through_link) = client.block_on(async {
        use tokio_modbus::client::Reader;
        // Bare: tokio-modbus on the port directly, no inter-frame silence of its own.
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(pty_bare.path(), BAUD))
            .expect("open pty");
        let mut ctx = tokio_modbus::client::rtu::attach_slave(port, tokio_modbus::Slave(3));
        let bare = rate!("bare tokio-modbus rtu", window, async {
            let f = ctx.read_input_registers(0, regs);
            match tokio::time::timeout(Duration::from_secs(2), f).await {
                Ok(Ok(Ok(w))) if w.len() == usize::from(regs) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });

        let spec = LinkSpec::from_config(
            "bus",
            &LinkConfig {
                protocol: LinkProtocol::ModbusRtu,
                transport: transport(pty_link.path()),
                timeout: None,
                connect_timeout: None,
                backoff_initial: None,
                backoff_max: None,
                inter_frame_delay: None,
            },
        );
        println!(
            "  link inter-frame silence: {:.3} ms",
            spec.inter_frame.as_secs_f64() * 1e3
        );
        let handle = link::spawn(spec, None);
        connected(&handle).await;
        let through_link = rate!("LinkHandle::modbus rtu", window, async {
            handle
                .modbus(3, op.clone(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        (bare, through_link)
    });
    let verdict = |r: f64| {
        if (r - 1.0).abs() <= 0.1 {
            "meets"
        } else {
            "MISSES"
        }
    };
    println!(
        "  rtu bare  {bare:6.2} transactions/s  ({:.1} ms each)  ratio to ceiling {:.3} ({})",
        1e3 / bare,
        bare / ceiling,
        verdict(bare / ceiling)
    );
    println!(
        "  rtu link  {through_link:6.2} transactions/s  ({:.1} ms each)  ratio to ceiling {:.3} ({} target within 10 %)",
        1e3 / through_link,
        through_link / ceiling,
        verdict(through_link / ceiling)
    );
    drop((pty_bare, pty_link));
    sims.shutdown_timeout(Duration::from_secs(1));
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok(ROLE_MODBUS_SIM) {
        modbus_sim_child();
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument is not supported, use LABGATE_BENCH_ONLY.
    machine();
    let client = match std::env::var("LABGATE_BENCH_CLIENT_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("client runtime");
    // The fleet runs first, so its memory figures are not inflated by the other scenarios.
    if wanted("fleet") {
        bench_fleet(&client);
    }
    if wanted("modbus") {
        bench_modbus(&client);
    }
    if wanted("scpi") {
        bench_scpi(&client);
    }
    if wanted("rtu") {
        bench_rtu(&client);
    }
}
