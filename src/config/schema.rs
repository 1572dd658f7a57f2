//! The shape of `labgate.toml`: links, instruments, stations, polls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub links: BTreeMap<String, LinkConfig>,
    #[serde(default)]
    pub instruments: BTreeMap<String, InstrumentConfig>,
    #[serde(default)]
    pub stations: BTreeMap<String, StationConfig>,
    #[serde(default)]
    pub polls: Vec<PollConfig>,
    #[serde(default)]
    pub api: ApiConfig,
}

/// The daemon's HTTP API (`labgate serve`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, e.g. `127.0.0.1:8470`; `--listen` overrides it.
    #[serde(default)]
    pub listen: Option<String>,
    /// Bearer token for mutating endpoints; required when listening on a non-loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// Allow raw SCPI/Modbus passthrough over the API.
    #[serde(default)]
    pub allow_raw: bool,
}

/// Directories, relative to the config file's own directory unless absolute.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    #[serde(default = "default_drivers")]
    pub drivers: Vec<PathBuf>,
    #[serde(default = "default_recipes")]
    pub recipes: PathBuf,
    #[serde(default = "default_data")]
    pub data: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            drivers: default_drivers(),
            recipes: default_recipes(),
            data: default_data(),
        }
    }
}

fn default_drivers() -> Vec<PathBuf> {
    vec![PathBuf::from("../drivers")]
}
fn default_recipes() -> PathBuf {
    PathBuf::from("recipes")
}
fn default_data() -> PathBuf {
    PathBuf::from("../data")
}

/// What the bytes on a link mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkProtocol {
    /// Line-based SCPI (raw socket port 5025, RS-232).
    Scpi,
    /// Modbus TCP (MBAP header).
    ModbusTcp,
    /// Modbus RTU framing: on a serial line, or through a serial device server over TCP.
    ModbusRtu,
}

impl std::fmt::Display for LinkProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkProtocol::Scpi => "scpi",
            LinkProtocol::ModbusTcp => "modbus-tcp",
            LinkProtocol::ModbusRtu => "modbus-rtu",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub protocol: LinkProtocol,
    #[serde(flatten)]
    pub transport: Transport,
    /// Default timeout of one request; a driver or quantity may set its own.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// First reconnect delay after a failure; doubles up to `backoff_max`.
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// Modbus RTU: extra pause between frames on top of t3.5 (slow devices).
    #[serde(default, with = "humantime_serde")]
    pub inter_frame_delay: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transport {
    Tcp {
        host: String,
        port: u16,
    },
    Serial {
        device: PathBuf,
        baud: u32,
        #[serde(default = "default_data_bits")]
        data_bits: u8,
        #[serde(default)]
        parity: Parity,
        #[serde(default = "default_stop_bits")]
        stop_bits: u8,
        #[serde(default)]
        flow_control: FlowControl,
    },
    /// A serial line behind a device server (a TCP port per serial line). Written as
    /// `kind = "tcp"` with a `baud` key: the baud rate is the serial side's, so Modbus RTU keeps
    /// its t3.5 silence and a late reply gets time to arrive before the next connection.
    SerialServer {
        host: String,
        port: u16,
        baud: u32,
    },
    /// The Linux usbtmc kernel driver's character device, `/dev/usbtmcN`.
    Usbtmc {
        device: PathBuf,
    },
    /// A Prologix GPIB-Ethernet adapter; instruments on it set `address` (their GPIB address).
    Prologix {
        host: String,
        #[serde(default = "default_prologix_port")]
        port: u16,
    },
    /// A Prologix GPIB-USB adapter (an FTDI serial port; the adapter ignores the baud rate).
    PrologixSerial {
        device: PathBuf,
        #[serde(default = "default_prologix_baud")]
        baud: u32,
    },
    /// VXI-11 (ONC RPC) to a LAN instrument or a LAN/GPIB gateway.
    Vxi11 {
        host: String,
        #[serde(default = "default_vxi11_device")]
        device: String,
        /// Where the instrument's portmapper listens; 111 everywhere but in tests.
        #[serde(default = "default_portmap_port")]
        portmap_port: u16,
    },
    /// HiSLIP (IVI-6.1).
    Hislip {
        host: String,
        #[serde(default = "default_hislip_port")]
        port: u16,
        #[serde(default = "default_hislip_device")]
        device: String,
    },
}

pub const DEFAULT_PROLOGIX_PORT: u16 = 1234;
pub const DEFAULT_PROLOGIX_BAUD: u32 = 115_200;
pub const DEFAULT_VXI11_DEVICE: &str = "inst0";
pub const DEFAULT_HISLIP_PORT: u16 = 4880;
pub const DEFAULT_PORTMAP_PORT: u16 = 111;
pub const DEFAULT_HISLIP_DEVICE: &str = "hislip0";

fn default_prologix_port() -> u16 {
    DEFAULT_PROLOGIX_PORT
}
fn default_prologix_baud() -> u32 {
    DEFAULT_PROLOGIX_BAUD
}
fn default_vxi11_device() -> String {
    DEFAULT_VXI11_DEVICE.into()
}
fn default_portmap_port() -> u16 {
    DEFAULT_PORTMAP_PORT
}
fn default_hislip_port() -> u16 {
    DEFAULT_HISLIP_PORT
}
fn default_hislip_device() -> String {
    DEFAULT_HISLIP_DEVICE.into()
}

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentConfig {
    /// Name of a driver file's `[driver] name`.
    pub driver: String,
    pub link: String,
    /// Modbus unit id (slave address); required on Modbus links.
    #[serde(default)]
    pub unit: Option<u8>,
    /// Bus address behind a shared adapter: the GPIB primary address (0..=30) on a prologix
    /// link; required there, refused elsewhere.
    #[serde(default)]
    pub address: Option<u8>,
    #[serde(default)]
    pub description: String,
    /// Skip the identity check (an instrument that answers *IDN? oddly).
    #[serde(default)]
    pub skip_identity: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    #[serde(default)]
    pub description: String,
    /// Role name -> instrument id, e.g. `analyzer = "pa1"`. Recipes name roles.
    pub roles: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    pub instrument: String,
    pub quantities: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}
