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
    /// Port of the power analyzer; the AC source, sphere and logger take the next three
    /// (0: four ephemeral ports, printed at start).
    #[arg(long, default_value_t = 15025)]
    pub scpi_port: u16,
    /// Port of the Modbus TCP controllers (unit 1 chamber, 2 Eurotherm, 3 relay rack).
    #[arg(long, default_value_t = 15502)]
    pub modbus_port: u16,
    /// Also serve a simulated Prologix GPIB-Ethernet adapter on this port (e.g. 11234), with
    /// the four SCPI instruments on its bus at GPIB addresses 5, 6, 7 and 9.
    #[arg(long)]
    pub prologix_port: Option<u16>,
    /// Also serve the four SCPI instruments over VXI-11 as devices inst0 (analyzer), inst1
    /// (source), inst2 (sphere) and inst3 (logger), with the portmapper on this port (e.g.
    /// 11111; a config's vxi11 link sets `portmap_port` to it) and the core channel on the next
    /// one (0: both ephemeral).
    #[arg(long)]
    pub vxi11_port: Option<u16>,
    /// Also serve the four SCPI instruments over HiSLIP as sub-addresses hislip0 (analyzer),
    /// hislip1 (source), hislip2 (sphere) and hislip3 (logger) on this port (e.g. 4880, the
    /// standard one).
    #[arg(long)]
    pub hislip_port: Option<u16>,
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
    /// modbus); default all. They apply on raw TCP, the ptys, VXI-11, HiSLIP and behind the
    /// Prologix adapter alike, there only at the instrument's GPIB address: a silent one leaves
    /// `++read` empty after the adapter's read timeout, a delay longer than that timeout makes
    /// `++read` relay nothing. --fault-drop-after does not apply behind the adapter (an
    /// instrument has no connection of its own there; the adapter's carries every address).
    #[arg(long, value_delimiter = ',')]
    pub fault_on: Vec<String>,
}

/// Names `--fault-on` accepts.
const FAULT_TARGETS: [&str; 5] = ["analyzer", "source", "sphere", "logger", "modbus"];

/// The port `k` places after `base`, given by the option `what`; 0 stays 0 (ephemeral).
fn port_after(base: u16, k: u16, what: &str) -> Result<u16, String> {
    if base == 0 {
        return Ok(0);
    }
    base.checked_add(k)
        .ok_or_else(|| format!("{what} {base}: port {base}+{k} does not exist"))
}

/// The bench the options describe, or what is wrong with them.
fn bench_config(args: &SimArgs) -> Result<SimBenchConfig, String> {
    if !args.host.is_loopback() {
        return Err(format!(
            "the simulator serves on loopback only; {} is not",
            args.host
        ));
    }
    if let Some(bad) = args
        .fault_on
        .iter()
        .find(|f| !FAULT_TARGETS.contains(&f.as_str()))
    {
        return Err(format!(
            "--fault-on: no instrument `{bad}`; known: {}",
            FAULT_TARGETS.join(", ")
        ));
    }
    let scpi = |k| port_after(args.scpi_port, k, "--scpi-port");
    let vxi11_core_port = match args.vxi11_port {
        Some(p) => port_after(p, 1, "--vxi11-port")?,
        None => 0,
    };
    let faults = Faults {
        delay: args.fault_delay,
        drop_after: args.fault_drop_after,
        silent: args.fault_silent,
        garbage: args.fault_garbage,
    };
    let pick = |name: &str| {
        if args.fault_on.is_empty() || args.fault_on.iter().any(|f| f == name) {
            faults.clone()
        } else {
            Faults::default()
        }
    };
    let mut cfg = SimBenchConfig {
        host: args.host,
        power_analyzer_port: scpi(0)?,
        ac_source_port: scpi(1)?,
        sphere_port: scpi(2)?,
        logger_port: scpi(3)?,
        modbus_port: args.modbus_port,
        prologix_port: args.prologix_port,
        vxi11_port: args.vxi11_port,
        vxi11_core_port,
        hislip_port: args.hislip_port,
        pty: args.pty,
        ..SimBenchConfig::default()
    };
    cfg.plant.tau = args.tau;
    cfg.faults.power_analyzer = pick("analyzer");
    cfg.faults.ac_source = pick("source");
    cfg.faults.sphere = pick("sphere");
    cfg.faults.logger = pick("logger");
    cfg.faults.modbus = pick("modbus");
    Ok(cfg)
}

pub async fn run(args: SimArgs) -> ExitCode {
    let cfg = match bench_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn cfg(args: &[&str]) -> Result<SimBenchConfig, String> {
        let w = Wrap::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        bench_config(&w.sim)
    }

    #[test]
    fn vxi11_core_channel_takes_the_port_after_the_portmapper() {
        let c = cfg(&["--vxi11-port", "11111", "--hislip-port", "4880"]).unwrap();
        assert_eq!(
            (c.vxi11_port, c.vxi11_core_port, c.hislip_port),
            (Some(11111), 11112, Some(4880))
        );
        let c = cfg(&["--vxi11-port", "0"]).unwrap();
        assert_eq!((c.vxi11_port, c.vxi11_core_port), (Some(0), 0));
        let c = cfg(&[]).unwrap();
        assert_eq!((c.vxi11_port, c.hislip_port), (None, None));
        let e = cfg(&["--vxi11-port", "65535"]).unwrap_err();
        assert!(e.contains("--vxi11-port 65535"), "{e}");
    }

    #[test]
    fn scpi_port_zero_makes_all_four_ephemeral() {
        let c = cfg(&["--scpi-port", "0"]).unwrap();
        assert_eq!(
            [
                c.power_analyzer_port,
                c.ac_source_port,
                c.sphere_port,
                c.logger_port
            ],
            [0; 4]
        );
        let c = cfg(&["--scpi-port", "20000"]).unwrap();
        assert_eq!((c.power_analyzer_port, c.logger_port), (20000, 20003));
        let e = cfg(&["--scpi-port", "65534"]).unwrap_err();
        assert!(e.contains("--scpi-port 65534"), "{e}");
    }

    #[test]
    fn fault_on_names_are_checked() {
        let c = cfg(&["--fault-silent", "--fault-on", "source,modbus"]).unwrap();
        assert!(c.faults.ac_source.silent && c.faults.modbus.silent);
        assert!(!c.faults.power_analyzer.silent && !c.faults.logger.silent);
        let e = cfg(&["--fault-silent", "--fault-on", "analyser"]).unwrap_err();
        assert!(e.contains("`analyser`") && e.contains("analyzer"), "{e}");
        let e = cfg(&["--host", "10.0.0.1"]).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }
}
