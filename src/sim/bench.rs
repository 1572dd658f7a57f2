//! The simulated SCPI bench: power analyzer, AC source, sphere and logger around one shared
//! [`Plant`], each served on a loopback TCP port (and optionally on its own pseudo-terminal,
//! behind a simulated Prologix adapter, as VXI-11 devices and as HiSLIP sub-addresses).
//!
//! Every connection to one instrument (TCP, pty, GPIB, VXI-11 or HiSLIP) shares that
//! instrument's state, exactly as several clients of a real LAN instrument would.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_serial::SerialStream;

use super::ac_source::AcSource;
use super::fault::Faults;
use super::hislip::{self, HislipSim, HislipSimConfig};
use super::logger::{Logger, LoggerConfig};
use super::modbus::{ModbusBench, RtuPty, serve_rtu_pty};
use super::plant::{Plant, PlantConfig};
use super::power_analyzer::{PowerAnalyzer, PowerAnalyzerConfig};
use super::prologix::{Bus, BusFaults, PrologixStats};
use super::pty::open_pty;
use super::scpi_server::{ScpiDevice, serve_stream, serve_tcp};
use super::sphere::{Sphere, SphereConfig};
use super::vxi11::{self, DeviceFactory, NamedDevice, Vxi11Sim, Vxi11SimConfig};

/// Faults per instrument.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchFaults {
    pub power_analyzer: Faults,
    pub ac_source: Faults,
    pub sphere: Faults,
    pub logger: Faults,
    pub modbus: Faults,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimBenchConfig {
    /// Must be a loopback address: the simulators have no access control.
    pub host: IpAddr,
    /// 0 picks an ephemeral port.
    pub power_analyzer_port: u16,
    pub ac_source_port: u16,
    pub sphere_port: u16,
    pub logger_port: u16,
    /// Modbus TCP server carrying unit 1 (chamber), 2 (Eurotherm) and 3 (relay rack).
    pub modbus_port: u16,
    /// Serve a simulated Prologix GPIB-Ethernet adapter on this port, with the four SCPI
    /// instruments on its bus at [`GPIB_ADDRESSES`] (0 picks an ephemeral port; `None`: none).
    /// Their [`BenchFaults`] show at their addresses, except `drop_after`.
    pub prologix_port: Option<u16>,
    /// Serve the four SCPI instruments as VXI-11 devices [`VXI11_DEVICES`], with the
    /// portmapper on this port (0 picks an ephemeral port; `None`: no VXI-11).
    pub vxi11_port: Option<u16>,
    /// The VXI-11 core channel's port, which clients learn from the portmapper (0: ephemeral).
    pub vxi11_core_port: u16,
    /// Serve the four SCPI instruments as HiSLIP sub-addresses [`HISLIP_DEVICES`] on this port
    /// (0 picks an ephemeral port; `None`: no HiSLIP).
    pub hislip_port: Option<u16>,
    /// Pace the Modbus RTU pseudo-terminal to this baud rate's wire time.
    pub rtu_pace_baud: Option<u32>,
    pub plant: PlantConfig,
    pub faults: BenchFaults,
    /// Also serve each instrument on its own pseudo-terminal.
    pub pty: bool,
    pub power_analyzer: PowerAnalyzerConfig,
    pub sphere: SphereConfig,
    pub logger: LoggerConfig,
}

impl Default for SimBenchConfig {
    fn default() -> Self {
        SimBenchConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            power_analyzer_port: 15025,
            ac_source_port: 15026,
            sphere_port: 15027,
            logger_port: 15028,
            modbus_port: 15502,
            prologix_port: None,
            vxi11_port: None,
            vxi11_core_port: 0,
            hislip_port: None,
            rtu_pace_baud: None,
            plant: PlantConfig::default(),
            faults: BenchFaults::default(),
            pty: false,
            power_analyzer: PowerAnalyzerConfig::default(),
            sphere: SphereConfig::default(),
            logger: LoggerConfig::default(),
        }
    }
}

impl SimBenchConfig {
    /// The default bench on ephemeral ports (for tests running in parallel).
    pub fn ephemeral() -> SimBenchConfig {
        SimBenchConfig {
            power_analyzer_port: 0,
            ac_source_port: 0,
            sphere_port: 0,
            logger_port: 0,
            modbus_port: 0,
            ..SimBenchConfig::default()
        }
    }
}

/// GPIB addresses of the simulated instruments behind the simulated Prologix adapter:
/// power analyzer, AC source, sphere, logger.
pub const GPIB_ADDRESSES: [u8; 4] = [5, 6, 7, 9];

/// VXI-11 device names of the power analyzer, AC source, sphere and logger.
pub const VXI11_DEVICES: [&str; 4] = ["inst0", "inst1", "inst2", "inst3"];

/// HiSLIP sub-addresses of the power analyzer, AC source, sphere and logger.
pub const HISLIP_DEVICES: [&str; 4] = ["hislip0", "hislip1", "hislip2", "hislip3"];

/// Where the bench's VXI-11 server listens. Clients ask the portmapper for the core port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxi11Endpoint {
    pub portmap: SocketAddr,
    pub core: SocketAddr,
}

/// Device paths of the pseudo-terminals, when the bench serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchPtys {
    pub power_analyzer: PathBuf,
    pub ac_source: PathBuf,
    pub sphere: PathBuf,
    pub logger: PathBuf,
    /// The Modbus devices as one RTU bus (same unit ids as on TCP).
    pub modbus_rtu: PathBuf,
    /// A Prologix GPIB-USB adapter with the SCPI instruments at [`GPIB_ADDRESSES`], when the
    /// bench also serves the GPIB-Ethernet one.
    pub prologix: Option<PathBuf>,
}

/// A running bench. Dropping it (or [`SimBench::shutdown`]) stops every server and closes every
/// connection and pseudo-terminal.
#[derive(Debug)]
pub struct SimBench {
    pub power_analyzer: SocketAddr,
    pub ac_source: SocketAddr,
    pub sphere: SocketAddr,
    pub logger: SocketAddr,
    pub modbus: SocketAddr,
    /// The simulated Prologix GPIB-Ethernet adapter, when configured.
    pub prologix: Option<SocketAddr>,
    /// What the adapter saw (address switches, reads); tests inspect it.
    pub prologix_stats: Arc<PrologixStats>,
    /// The VXI-11 server, when configured.
    pub vxi11: Option<Vxi11Endpoint>,
    /// The HiSLIP server, when configured.
    pub hislip: Option<SocketAddr>,
    pub ptys: Option<BenchPtys>,
    /// The simulated Modbus devices; tests inspect their state.
    pub modbus_devices: Arc<ModbusBench>,
    rtu_pty: Option<RtuPty>,
    /// The shared physics; tests inspect it (`plant.output_on()`).
    pub plant: Plant,
    tasks: Vec<JoinHandle<()>>,
    vxi11_sim: Option<Vxi11Sim>,
    hislip_sim: Option<HislipSim>,
}

/// Bind every listener before spawning anything so a port clash fails the whole start cleanly.
async fn bind(host: IpAddr, port: u16, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("sim {what}: cannot listen on {host}:{port}: {e}"),
        )
    })
}

/// Start the bench. Must be called inside a tokio runtime.
pub async fn start(cfg: SimBenchConfig) -> io::Result<SimBench> {
    if !cfg.host.is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sim bench host {} is not a loopback address", cfg.host),
        ));
    }
    let pa_l = bind(cfg.host, cfg.power_analyzer_port, "power analyzer").await?;
    let ac_l = bind(cfg.host, cfg.ac_source_port, "ac source").await?;
    let sp_l = bind(cfg.host, cfg.sphere_port, "sphere").await?;
    let lg_l = bind(cfg.host, cfg.logger_port, "logger").await?;
    let mb_l = bind(cfg.host, cfg.modbus_port, "modbus").await?;
    let pg_l = match cfg.prologix_port {
        Some(port) => Some(bind(cfg.host, port, "prologix adapter").await?),
        None => None,
    };
    let modbus_devices = Arc::new(ModbusBench::default());

    let plant = Plant::new(cfg.plant.clone());
    let analyzer = PowerAnalyzer::new(plant.clone(), cfg.power_analyzer.clone());
    let source = AcSource::new(plant.clone());
    let sphere = Sphere::new(plant.clone(), cfg.sphere.clone());
    let logger = Logger::new(plant.clone(), cfg.logger.clone());

    // Open the ptys before spawning so a failure leaves nothing running.
    let ptys = if cfg.pty {
        Some([open_pty()?, open_pty()?, open_pty()?, open_pty()?])
    } else {
        None
    };

    // The message-based servers bind and spawn in one go; if a later one fails, dropping the
    // earlier ones stops them, so a failed start still leaves nothing running.
    let f = &cfg.faults;
    let named = |names: [&str; 4]| -> Vec<NamedDevice> {
        let factories: [(DeviceFactory, &Faults); 4] = [
            (vxi11::shared_device(&analyzer), &f.power_analyzer),
            (vxi11::shared_device(&source), &f.ac_source),
            (vxi11::shared_device(&sphere), &f.sphere),
            (vxi11::shared_device(&logger), &f.logger),
        ];
        names
            .into_iter()
            .zip(factories)
            .map(|(n, (fac, faults))| NamedDevice::new(n, fac, faults.clone()))
            .collect()
    };
    let vxi11_sim = match cfg.vxi11_port {
        Some(port) => Some(
            vxi11::start_named(
                Vxi11SimConfig {
                    host: cfg.host,
                    portmap_port: port,
                    core_port: cfg.vxi11_core_port,
                    ..Vxi11SimConfig::default()
                },
                named(VXI11_DEVICES),
            )
            .await?,
        ),
        None => None,
    };
    let hislip_sim = match cfg.hislip_port {
        Some(port) => Some(
            hislip::start_named(
                HislipSimConfig {
                    host: cfg.host,
                    port,
                    ..HislipSimConfig::default()
                },
                named(HISLIP_DEVICES),
            )
            .await?,
        ),
        None => None,
    };

    let mut bench = SimBench {
        power_analyzer: pa_l.local_addr()?,
        ac_source: ac_l.local_addr()?,
        sphere: sp_l.local_addr()?,
        logger: lg_l.local_addr()?,
        modbus: mb_l.local_addr()?,
        prologix: match &pg_l {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
        prologix_stats: Arc::new(PrologixStats::default()),
        vxi11: vxi11_sim.as_ref().map(|v| Vxi11Endpoint {
            portmap: v.portmap,
            core: v.core,
        }),
        hislip: hislip_sim.as_ref().map(|h| h.addr),
        ptys: None,
        modbus_devices: modbus_devices.clone(),
        rtu_pty: None,
        plant,
        tasks: Vec::new(),
        vxi11_sim,
        hislip_sim,
    };
    let mut prologix_pty = None;
    if let Some(l) = pg_l {
        let (pa, ac, sp, lg) = (
            analyzer.clone(),
            source.clone(),
            sphere.clone(),
            logger.clone(),
        );
        let [a_pa, a_ac, a_sp, a_lg] = GPIB_ADDRESSES;
        let bus = move || -> Bus {
            let mut b: Bus = BTreeMap::new();
            b.insert(a_pa, Box::new(pa.clone()));
            b.insert(a_ac, Box::new(ac.clone()));
            b.insert(a_sp, Box::new(sp.clone()));
            b.insert(a_lg, Box::new(lg.clone()));
            b
        };
        // drop_after does not apply behind the adapter (see the prologix module doc).
        let faults: BusFaults = BTreeMap::from([
            (a_pa, f.power_analyzer.clone()),
            (a_ac, f.ac_source.clone()),
            (a_sp, f.sphere.clone()),
            (a_lg, f.logger.clone()),
        ]);
        let stats = bench.prologix_stats.clone();
        if cfg.pty {
            let (path, task) =
                super::prologix::serve_pty(bus.clone(), faults.clone(), stats.clone())?;
            bench.tasks.push(task);
            prologix_pty = Some(path);
        }
        bench.tasks.push(tokio::spawn(async move {
            if let Err(e) = super::prologix::serve_tcp(l, bus, faults, stats).await {
                tracing::warn!(message = "sim prologix adapter stopped", error = %e);
            }
        }));
    }
    bench.spawn_tcp(pa_l, analyzer.clone(), f.power_analyzer.clone());
    bench.spawn_tcp(ac_l, source.clone(), f.ac_source.clone());
    bench.spawn_tcp(sp_l, sphere.clone(), f.sphere.clone());
    bench.spawn_tcp(lg_l, logger.clone(), f.logger.clone());
    let mb_faults = f.modbus.clone();
    let mb_devices = modbus_devices.clone();
    bench.tasks.push(tokio::spawn(async move {
        if let Err(e) = super::modbus::serve_tcp(mb_l, mb_devices, mb_faults).await {
            tracing::warn!(message = "sim modbus server stopped", error = %e);
        }
    }));

    if let Some([(pa_m, pa_p), (ac_m, ac_p), (sp_m, sp_p), (lg_m, lg_p)]) = ptys {
        bench.tasks.push(tokio::spawn(serve_pty(
            pa_m,
            analyzer,
            f.power_analyzer.clone(),
        )));
        bench
            .tasks
            .push(tokio::spawn(serve_pty(ac_m, source, f.ac_source.clone())));
        bench
            .tasks
            .push(tokio::spawn(serve_pty(sp_m, sphere, f.sphere.clone())));
        bench
            .tasks
            .push(tokio::spawn(serve_pty(lg_m, logger, f.logger.clone())));
        let rtu = serve_rtu_pty(modbus_devices, f.modbus.clone(), cfg.rtu_pace_baud)?;
        bench.ptys = Some(BenchPtys {
            power_analyzer: pa_p,
            ac_source: ac_p,
            sphere: sp_p,
            logger: lg_p,
            modbus_rtu: PathBuf::from(rtu.path()),
            prologix: prologix_pty,
        });
        bench.rtu_pty = Some(rtu);
    }
    Ok(bench)
}

impl SimBench {
    /// Start the bench (same as [`start`]).
    pub async fn start(cfg: SimBenchConfig) -> io::Result<SimBench> {
        start(cfg).await
    }

    /// What is served where, one line per endpoint, for a person.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "power analyzer (yokogawa-wt310e)   scpi  {}\n\
             ac source (chroma-61500)           scpi  {}\n\
             sphere (labgate-sim-sphere)        scpi  {}\n\
             logger (keysight-34970a)           scpi  {}\n\
             modbus units 1 chamber (watlow-f4t), 2 controller (eurotherm-3200), 3 rack (relay-rack)\n\
             \x20                                  tcp   {}\n",
            self.power_analyzer, self.ac_source, self.sphere, self.logger, self.modbus
        );
        if let Some(p) = self.prologix {
            let [a, b, c, d] = GPIB_ADDRESSES;
            s.push_str(&format!(
                "prologix gpib-ethernet adapter (analyzer @{a}, source @{b}, sphere @{c}, logger @{d})\n\
                 \x20                                  tcp   {p}\n"
            ));
        }
        if let Some(v) = self.vxi11 {
            let [a, b, c, d] = VXI11_DEVICES;
            s.push_str(&format!(
                "vxi-11 devices (analyzer {a}, source {b}, sphere {c}, logger {d})\n\
                 \x20                                  portmapper {}  core {}\n",
                v.portmap, v.core
            ));
        }
        if let Some(h) = self.hislip {
            let [a, b, c, d] = HISLIP_DEVICES;
            s.push_str(&format!(
                "hislip sub-addresses (analyzer {a}, source {b}, sphere {c}, logger {d})\n\
                 \x20                                  tcp   {h}\n"
            ));
        }
        if let Some(p) = &self.ptys {
            s.push_str(&format!(
                "pseudo-terminals: analyzer {}, source {}, sphere {}, logger {}, modbus rtu {}\n",
                p.power_analyzer.display(),
                p.ac_source.display(),
                p.sphere.display(),
                p.logger.display(),
                p.modbus_rtu.display()
            ));
            if let Some(g) = &p.prologix {
                s.push_str(&format!(
                    "prologix gpib-usb adapter (same addresses) on pseudo-terminal {}\n",
                    g.display()
                ));
            }
        }
        s
    }

    fn spawn_tcp<D>(&mut self, listener: TcpListener, device: D, faults: Faults)
    where
        D: ScpiDevice + Clone + Sync + 'static,
    {
        self.tasks.push(tokio::spawn(async move {
            let factory = move || -> Box<dyn ScpiDevice> { Box::new(device.clone()) };
            if let Err(e) = serve_tcp(listener, factory, faults).await {
                tracing::warn!(message = "sim server stopped", error = %e);
            }
        }));
    }

    /// Stop every server and wait until they are gone.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        self.rtu_pty = None;
        if let Some(v) = self.vxi11_sim.take() {
            v.shutdown().await;
        }
        if let Some(h) = self.hislip_sim.take() {
            h.shutdown().await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for SimBench {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A pty cannot be "closed" towards the client, so after the stream ends (a `drop_after` fault,
/// a transient error) the same device is served again on the same master.
async fn serve_pty<D>(mut master: SerialStream, device: D, faults: Faults)
where
    D: ScpiDevice + Clone,
{
    loop {
        if let Err(e) = serve_stream(&mut master, device.clone(), faults.clone()).await {
            tracing::debug!(message = "sim pty stream error", error = %e);
        }
        // Never spin if the master keeps failing.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
