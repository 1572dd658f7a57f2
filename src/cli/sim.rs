//! `labgate sim`: the built-in simulated bench, served until Ctrl-C / SIGTERM.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::sim::bench::{SimBench, SimBenchConfig};
use crate::sim::fault::Faults;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to serve on: loopback only (127.0.0.1 or ::1).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the power analyzer; the AC source, sphere and logger take the next three.
    #[arg(long, default_value_t = 15025)]
    pub scpi_port: u16,
    /// Port of the Modbus TCP controllers (unit 1 chamber, 2 Eurotherm, 3 relay rack).
    #[arg(long, default_value_t = 15502)]
    pub modbus_port: u16,
    /// Also serve a simulated Prologix GPIB-Ethernet adapter on this port (e.g. 11234), with
    /// the four SCPI instruments on its bus at GPIB addresses 5, 6, 7 and 9.
    #[arg(long)]
    pub prologix_port: Option<u16>,
    /// Also serve every instrument on a pseudo-terminal (prints the device paths).
    #[arg(long)]
    pub pty: bool,
    /// Time constant of the lamp's warm-up (power and flux settle exponentially).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub tau: Duration,
    /// Fault: answer every request this much later.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fault_delay: Option<Duration>,
    /// Fault: close each connection after this many requests.
    #[arg(long)]
    pub fault_drop_after: Option<u64>,
    /// Fault: read requests but never answer.
    #[arg(long)]
    pub fault_silent: bool,
    /// Fault: answer with garbage.
    #[arg(long)]
    pub fault_garbage: bool,
    /// Which instruments the faults apply to (comma list of analyzer, source, sphere, logger,
    /// modbus); default all.
    #[arg(long, value_delimiter = ',')]
    pub fault_on: Vec<String>,
}

pub async fn run(args: SimArgs) -> ExitCode {
    if !args.host.is_loopback() {
        eprintln!(
            "error: the simulator serves on loopback only; {} is not",
            args.host
        );
        return ExitCode::from(2);
    }
    let faults = Faults {
        delay: args.fault_delay,
        drop_after: args.fault_drop_after,
        silent: args.fault_silent,
        garbage: args.fault_garbage,
    };
    let applies = |name: &str| args.fault_on.is_empty() || args.fault_on.iter().any(|f| f == name);
    let pick = |name: &str| {
        if applies(name) {
            faults.clone()
        } else {
            Faults::default()
        }
    };
    let mut cfg = SimBenchConfig {
        host: args.host,
        power_analyzer_port: args.scpi_port,
        ac_source_port: args.scpi_port.saturating_add(1),
        sphere_port: args.scpi_port.saturating_add(2),
        logger_port: args.scpi_port.saturating_add(3),
        modbus_port: args.modbus_port,
        prologix_port: args.prologix_port,
        pty: args.pty,
        ..SimBenchConfig::default()
    };
    cfg.plant.tau = args.tau;
    cfg.faults.power_analyzer = pick("analyzer");
    cfg.faults.ac_source = pick("source");
    cfg.faults.sphere = pick("sphere");
    cfg.faults.logger = pick("logger");
    cfg.faults.modbus = pick("modbus");
    let bench = match SimBench::start(cfg).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot start the simulators: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", bench.describe());
    println!("simulators running; Ctrl-C to stop");
    wait_for_shutdown().await;
    bench.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
