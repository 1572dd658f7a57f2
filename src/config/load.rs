//! Loading and checking the bench configuration against the driver set.
//!
//! Everything is checked before anything connects: dangling names, protocol mismatches,
//! impossible serial settings, Modbus unit clashes. Every problem is reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::schema::*;
use crate::diag::{DeTable, DeValue, Diagnostics, Doc, Source, suggest_or_list};
use crate::driver::schema::Protocol;
use crate::driver::{Driver, DriverSet, load as driver_load};

/// A loaded, checked bench: every name refers to something that exists.
#[derive(Debug, Clone)]
pub struct Bench {
    /// The config file this came from.
    pub source: PathBuf,
    pub paths: ResolvedPaths,
    pub links: BTreeMap<String, LinkConfig>,
    pub instruments: BTreeMap<String, InstrumentDef>,
    pub stations: BTreeMap<String, StationConfig>,
    pub polls: Vec<PollConfig>,
    pub api: ApiConfig,
    pub drivers: DriverSet,
    /// Problems that do not stop the bench (an unused link); print them at startup.
    pub warnings: Diagnostics,
}

/// [`Paths`] made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPaths {
    pub drivers: Vec<PathBuf>,
    pub recipes: PathBuf,
    pub data: PathBuf,
}

/// An instrument with its driver resolved.
#[derive(Debug, Clone)]
pub struct InstrumentDef {
    pub id: String,
    pub config: InstrumentConfig,
    pub driver: Arc<Driver>,
}

/// Shortest poll interval: faster polling only floods a slow link.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Load a config file and the drivers from its `paths.drivers` directories.
pub fn load(path: &Path) -> Result<Bench, Diagnostics> {
    let source = Source::read(path)?;
    let doc = source.parse_toml()?;
    let mut diags = Diagnostics::new();
    let paths: Paths = match doc.get_ref().get("paths") {
        Some(v) => source.decode("paths", v, &mut diags).unwrap_or_default(),
        None => Paths::default(),
    };
    let resolved = resolve(&source.path, &paths);
    let mut broken = BTreeSet::new();
    let drivers = match driver_load::load_dirs(&resolved.drivers) {
        Ok(d) => d,
        Err(d) => {
            diags.extend(d);
            // Still check the config itself so its problems show up in the same run, but
            // do not call a driver unknown when its file exists and was just reported.
            broken = driver_load::declared_names(&resolved.drivers);
            DriverSet::new()
        }
    };
    match check_bench(&source, drivers, &broken) {
        Ok(b) if !diags.has_errors() => Ok(b),
        Ok(_) => Err(diags),
        Err(d) => {
            diags.extend(d);
            Err(diags)
        }
    }
}

/// The built-in demo: config/demo.toml and every shipped driver, embedded in the binary.
/// Paths resolve as if `config/demo.toml` were loaded from the current directory: recipes from
/// `./config/recipes` (the shipped examples when run from a checkout), data to `./data`.
pub fn demo() -> Result<Bench, Diagnostics> {
    let sources: Vec<Source> = crate::driver::EMBEDDED_DRIVERS
        .iter()
        .map(|(name, text)| Source::new(*name, *text))
        .collect();
    let drivers = driver_load::load_sources(&sources)?;
    let source = Source::new("config/demo.toml", DEMO_CONFIG);
    let mut bench = load_with_drivers(&source, drivers)?;
    let cwd = std::env::current_dir().unwrap_or_default();
    bench.paths = ResolvedPaths {
        drivers: Vec::new(),
        recipes: cwd.join("config").join("recipes"),
        data: cwd.join("data"),
    };
    Ok(bench)
}

/// The demo config text, as shipped.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

fn resolve(config_path: &Path, p: &Paths) -> ResolvedPaths {
    let dir = config_path.parent().unwrap_or(Path::new(""));
    let abs = |q: &Path| -> PathBuf {
        let joined = dir.join(q);
        normalize(&std::path::absolute(&joined).unwrap_or(joined))
    };
    ResolvedPaths {
        drivers: p.drivers.iter().map(|d| abs(d)).collect(),
        recipes: abs(&p.recipes),
        data: abs(&p.data),
    }
}

/// Drop `.` and resolve `..` lexically, so messages show `/bench/data`, not `/bench/cfg/../data`.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

const TOP_KEYS: &[&str] = &["paths", "links", "instruments", "stations", "polls", "api"];
const LINK_COMMON: &[&str] = &[
    "protocol",
    "kind",
    "timeout",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
    "inter_frame_delay",
];
const TCP_KEYS: &[&str] = &["host", "port", "baud"];
const USBTMC_KEYS: &[&str] = &["device"];
const PROLOGIX_KEYS: &[&str] = &["host", "port"];
const PROLOGIX_SERIAL_KEYS: &[&str] = &["device", "baud"];
const VXI11_KEYS: &[&str] = &["host", "device", "portmap_port"];
const HISLIP_KEYS: &[&str] = &["host", "port", "device"];
/// Every link kind and the transport keys it takes.
const KINDS: &[(&str, &[&str])] = &[
    ("tcp", TCP_KEYS),
    ("serial", SERIAL_KEYS),
    ("usbtmc", USBTMC_KEYS),
    ("prologix", PROLOGIX_KEYS),
    ("prologix_serial", PROLOGIX_SERIAL_KEYS),
    ("vxi11", VXI11_KEYS),
    ("hislip", HISLIP_KEYS),
];
const SERIAL_KEYS: &[&str] = &[
    "device",
    "baud",
    "data_bits",
    "parity",
    "stop_bits",
    "flow_control",
];

/// The link keys other than the transport; `LinkConfig` flattens the transport, and serde's
/// flatten loses toml's spans, so the two halves are decoded separately.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkCommon {
    protocol: LinkProtocol,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    inter_frame_delay: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFields {
    host: String,
    port: u16,
    /// Set when the port is a serial device server: the serial side's baud rate.
    #[serde(default)]
    baud: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsbtmcFields {
    device: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrologixFields {
    host: String,
    #[serde(default = "prologix_port")]
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrologixSerialFields {
    device: PathBuf,
    #[serde(default = "prologix_baud")]
    baud: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vxi11Fields {
    host: String,
    #[serde(default = "vxi11_device")]
    device: String,
    #[serde(default = "portmap_port")]
    portmap_port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HislipFields {
    host: String,
    #[serde(default = "hislip_port")]
    port: u16,
    #[serde(default = "hislip_device")]
    device: String,
}

fn prologix_port() -> u16 {
    DEFAULT_PROLOGIX_PORT
}
fn prologix_baud() -> u32 {
    DEFAULT_PROLOGIX_BAUD
}
fn vxi11_device() -> String {
    DEFAULT_VXI11_DEVICE.into()
}
fn portmap_port() -> u16 {
    DEFAULT_PORTMAP_PORT
}
fn hislip_port() -> u16 {
    DEFAULT_HISLIP_PORT
}
fn hislip_device() -> String {
    DEFAULT_HISLIP_DEVICE.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialFields {
    device: PathBuf,
    baud: u32,
    #[serde(default = "eight")]
    data_bits: u8,
    #[serde(default)]
    parity: Parity,
    #[serde(default = "one")]
    stop_bits: u8,
    #[serde(default)]
    flow_control: FlowControl,
}

fn eight() -> u8 {
    8
}
fn one() -> u8 {
    1
}

/// Check a config text against an already loaded driver set. Paths resolve against the
/// directory of `source.path`.
pub fn load_with_drivers(source: &Source, drivers: DriverSet) -> Result<Bench, Diagnostics> {
    check_bench(source, drivers, &BTreeSet::new())
}

/// `broken`: names of drivers whose files exist but failed to load (already reported).
fn check_bench(
    source: &Source,
    drivers: DriverSet,
    broken: &BTreeSet<String>,
) -> Result<Bench, Diagnostics> {
    let doc = source.parse_toml()?;
    let mut diags = Diagnostics::new();
    let root = doc.get_ref();
    source.unknown_sections(&doc, TOP_KEYS, &mut diags);
    let paths: Paths = root
        .get("paths")
        .and_then(|v| source.decode("paths", v, &mut diags))
        .unwrap_or_default();

    let mut names: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut links = BTreeMap::new();
    for (name, v) in entries(source, &doc, "links", &mut diags) {
        names.entry("links").or_default().insert(name.clone());
        if let Some(l) = decode_link(source, &name, v, &mut diags) {
            links.insert(name, l);
        }
    }
    let mut instruments: BTreeMap<String, InstrumentConfig> = BTreeMap::new();
    for (name, v) in entries(source, &doc, "instruments", &mut diags) {
        names.entry("instruments").or_default().insert(name.clone());
        if let Some(i) = source.decode(&format!("instruments.{name}"), v, &mut diags) {
            instruments.insert(name, i);
        }
    }
    let mut stations: BTreeMap<String, StationConfig> = BTreeMap::new();
    for (name, v) in entries(source, &doc, "stations", &mut diags) {
        if let Some(s) = source.decode(&format!("stations.{name}"), v, &mut diags) {
            stations.insert(name, s);
        }
    }
    let mut polls: Vec<(usize, PollConfig)> = Vec::new();
    if let Some(v) = root.get("polls") {
        match v.get_ref() {
            DeValue::Array(a) => {
                for (i, p) in a.iter().enumerate() {
                    if let Some(p) = source.decode(&format!("polls[{i}]"), p, &mut diags) {
                        polls.push((i, p));
                    }
                }
            }
            _ => diags.push(source.error(
                v.span(),
                "polls",
                "polls must be an array of tables ([[polls]])",
            )),
        }
    }

    let api: ApiConfig = root
        .get("api")
        .and_then(|v| source.decode("api", v, &mut diags))
        .unwrap_or_default();

    let mut cx = Check {
        src: source,
        doc: &doc,
        diags,
        names,
    };
    for (name, l) in &links {
        cx.check_link(name, l);
    }
    let mut defs = BTreeMap::new();
    for (id, inst) in &instruments {
        if let Some(driver) = cx.check_instrument(id, inst, &links, &drivers, broken) {
            defs.insert(
                id.clone(),
                InstrumentDef {
                    id: id.clone(),
                    config: inst.clone(),
                    driver,
                },
            );
        }
    }
    cx.check_link_sharing(&instruments, &links);
    for (name, s) in &stations {
        cx.check_station(name, s);
    }
    for (i, p) in &polls {
        cx.check_poll(*i, p, &instruments, &drivers);
    }
    cx.check_api(&api);
    // From the raw entries, so an instrument with a typo elsewhere still counts as a user.
    let used: BTreeSet<String> = entries(source, &doc, "instruments", &mut Diagnostics::new())
        .into_iter()
        .filter_map(|(_, v)| {
            v.get_ref()
                .get("link")
                .and_then(|l| l.get_ref().as_str().map(str::to_string))
        })
        .collect();
    for name in links.keys() {
        if !used.contains(name) {
            let span = span_of(&doc, &["links", name]);
            cx.diags.push(source.warning(
                span,
                &format!("links.{name}"),
                "no instrument uses this link",
            ));
        }
    }

    let diags = cx.diags;
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Bench {
        source: source.path.clone(),
        paths: resolve(&source.path, &paths),
        links,
        instruments: defs,
        stations,
        polls: polls.into_iter().map(|(_, p)| p).collect(),
        api,
        drivers,
        warnings: diags,
    })
}

/// The named entries of a `[section.name]` table.
fn entries<'a, 'd>(
    source: &Source,
    doc: &'a Doc<'d>,
    section: &str,
    diags: &mut Diagnostics,
) -> Vec<(String, &'a Spanned<DeValue<'d>>)> {
    let Some(v) = doc.get_ref().get(section) else {
        return Vec::new();
    };
    match v.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v))
            .collect(),
        _ => {
            diags.push(source.error(
                v.span(),
                section,
                format!("`{section}` must be a table of named entries"),
            ));
            Vec::new()
        }
    }
}

fn decode_link(
    source: &Source,
    name: &str,
    v: &Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Option<LinkConfig> {
    let key = format!("links.{name}");
    let Some(table) = v.get_ref().as_table() else {
        diags.push(source.error(v.span(), &key, "a link must be a table"));
        return None;
    };
    let known_kinds = KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let kind_name = table.get("kind").and_then(|k| k.get_ref().as_str());
    let kind = match table.get("kind") {
        None => {
            diags.push(source.error(
                v.span(),
                &format!("{key}.kind"),
                format!("missing key (one of {known_kinds})"),
            ));
            None
        }
        Some(k) => match KINDS.iter().find(|(n, _)| Some(*n) == k.get_ref().as_str()) {
            Some((_, keys)) => Some(*keys),
            None => {
                let other = k.get_ref().as_str();
                let shown = other.map_or_else(
                    || k.get_ref().type_str().to_string(),
                    |s| format!("\"{s}\""),
                );
                let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
                let hint = match other {
                    Some(o) => suggest_or_list(o, &kinds),
                    None => format!(" (known: {known_kinds})"),
                };
                diags.push(source.error(
                    k.span(),
                    &format!("{key}.kind"),
                    format!("unknown link kind {shown}{hint}"),
                ));
                None
            }
        },
    };
    let mut common = DeTable::new();
    let mut transport = DeTable::new();
    for (k, val) in table.iter() {
        let kn: &str = k.get_ref();
        if kn == "kind" {
            continue;
        }
        if LINK_COMMON.contains(&kn) {
            common.insert(k.clone(), val.clone());
        } else if kind.is_none() || kind.is_some_and(|keys| keys.contains(&kn)) {
            // With no valid kind the transport keys cannot be judged; keep them out of the way.
            if kind.is_some() {
                transport.insert(k.clone(), val.clone());
            }
        } else {
            let mut known: Vec<&str> = LINK_COMMON.to_vec();
            known.extend(kind.unwrap_or(&[]));
            diags.push(source.error(
                k.span(),
                &format!("{key}.{kn}"),
                format!("unknown key `{kn}`{}", suggest_or_list(kn, &known)),
            ));
        }
    }
    let common: Option<LinkCommon> =
        source.decode(&key, &Spanned::new(v.span(), DeValue::Table(common)), diags);
    let transport_v = Spanned::new(v.span(), DeValue::Table(transport));
    let transport = match kind.and(kind_name) {
        Some("tcp") => source
            .decode::<TcpFields>(&key, &transport_v, diags)
            .map(|t| match t.baud {
                None => Transport::Tcp {
                    host: t.host,
                    port: t.port,
                },
                Some(baud) => Transport::SerialServer {
                    host: t.host,
                    port: t.port,
                    baud,
                },
            }),
        Some("usbtmc") => source
            .decode::<UsbtmcFields>(&key, &transport_v, diags)
            .map(|t| Transport::Usbtmc { device: t.device }),
        Some("prologix") => source
            .decode::<PrologixFields>(&key, &transport_v, diags)
            .map(|t| Transport::Prologix {
                host: t.host,
                port: t.port,
            }),
        Some("prologix_serial") => source
            .decode::<PrologixSerialFields>(&key, &transport_v, diags)
            .map(|t| Transport::PrologixSerial {
                device: t.device,
                baud: t.baud,
            }),
        Some("vxi11") => source
            .decode::<Vxi11Fields>(&key, &transport_v, diags)
            .map(|t| Transport::Vxi11 {
                host: t.host,
                device: t.device,
                portmap_port: t.portmap_port,
            }),
        Some("hislip") => source
            .decode::<HislipFields>(&key, &transport_v, diags)
            .map(|t| Transport::Hislip {
                host: t.host,
                port: t.port,
                device: t.device,
            }),
        Some(_) => source
            .decode::<SerialFields>(&key, &transport_v, diags)
            .map(|s| Transport::Serial {
                device: s.device,
                baud: s.baud,
                data_bits: s.data_bits,
                parity: s.parity,
                stop_bits: s.stop_bits,
                flow_control: s.flow_control,
            }),
        None => None,
    };
    let (common, transport) = (common?, transport?);
    Some(LinkConfig {
        protocol: common.protocol,
        transport,
        timeout: common.timeout,
        connect_timeout: common.connect_timeout,
        backoff_initial: common.backoff_initial,
        backoff_max: common.backoff_max,
        inter_frame_delay: common.inter_frame_delay,
    })
}

/// The `kind` a transport is written as, for messages.
fn link_kind(t: &Transport) -> &'static str {
    match t {
        Transport::Tcp { .. } | Transport::SerialServer { .. } => "tcp",
        Transport::Serial { .. } => "serial",
        Transport::Usbtmc { .. } => "usbtmc",
        Transport::Prologix { .. } => "prologix",
        Transport::PrologixSerial { .. } => "prologix_serial",
        Transport::Vxi11 { .. } => "vxi11",
        Transport::Hislip { .. } => "hislip",
    }
}

fn span_of(doc: &Doc<'_>, path: &[&str]) -> Range<usize> {
    crate::driver::load::span_of(doc, path)
}

struct Check<'a, 'd> {
    src: &'a Source,
    doc: &'a Doc<'d>,
    diags: Diagnostics,
    names: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Check<'_, '_> {
    fn check_api(&mut self, api: &ApiConfig) {
        if let Some(t) = &api.token
            && t.trim().len() < 16
        {
            // A short token over the network is guessable; refuse it rather than warn.
            self.err(
                &["api", "token"],
                "the token must be at least 16 characters",
            );
        }
        let Some(listen) = &api.listen else {
            return;
        };
        match listen.parse::<std::net::SocketAddr>() {
            Err(_) => self.err(
                &["api", "listen"],
                format!("`{listen}` is not an address:port (e.g. \"127.0.0.1:8470\")"),
            ),
            Ok(a) if !a.ip().is_loopback() && api.token.is_none() => self.err(
                &["api", "listen"],
                format!(
                    "{a} is not a loopback address: set api.token so mutating requests need it"
                ),
            ),
            Ok(_) => {}
        }
    }

    fn err(&mut self, path: &[&str], msg: impl Into<String>) {
        let span = span_of(self.doc, path);
        let mut key = String::new();
        for seg in path {
            if !seg.starts_with('[') && !key.is_empty() {
                key.push('.');
            }
            key.push_str(seg);
        }
        self.diags.push(self.src.error(span, &key, msg));
    }

    fn exists(&self, section: &str, name: &str) -> bool {
        self.names.get(section).is_some_and(|s| s.contains(name))
    }

    fn unknown(&mut self, path: &[&str], what: &str, name: &str, known: &[&str]) {
        self.err(
            path,
            format!("unknown {what} \"{name}\"{}", suggest_or_list(name, known)),
        );
    }

    fn check_link(&mut self, name: &str, l: &LinkConfig) {
        for (key, d) in [
            ("timeout", l.timeout),
            ("connect_timeout", l.connect_timeout),
            ("backoff_initial", l.backoff_initial),
            ("backoff_max", l.backoff_max),
        ] {
            if d == Some(Duration::ZERO) {
                self.err(&["links", name, key], "duration must be greater than zero");
            }
        }
        if let (Some(a), Some(b)) = (l.backoff_initial, l.backoff_max) {
            if a > b {
                self.err(
                    &["links", name, "backoff_max"],
                    "backoff_max is shorter than backoff_initial",
                );
            }
        }
        if l.inter_frame_delay.is_some() && l.protocol != LinkProtocol::ModbusRtu {
            self.err(
                &["links", name, "inter_frame_delay"],
                "inter_frame_delay is only for protocol \"modbus-rtu\"",
            );
        }
        let kind = link_kind(&l.transport);
        if crate::link::message::is_message_transport(&l.transport)
            && l.protocol != LinkProtocol::Scpi
        {
            self.err(
                &["links", name, "protocol"],
                format!(
                    "a {kind} link carries scpi messages only; {} needs kind \"tcp\" or \"serial\"",
                    l.protocol
                ),
            );
        }
        let host_port = |this: &mut Self, host: &str, port: u16| {
            if host.trim().is_empty() {
                this.err(&["links", name, "host"], "host must not be empty");
            }
            if port == 0 {
                this.err(&["links", name, "port"], "port must not be 0");
            }
        };
        let device_path = |this: &mut Self, device: &std::path::Path| {
            if device.as_os_str().is_empty() {
                this.err(&["links", name, "device"], "device must not be empty");
            }
        };
        match &l.transport {
            Transport::Tcp { host, port } => host_port(self, host, *port),
            Transport::SerialServer { host, port, baud } => {
                host_port(self, host, *port);
                if *baud == 0 {
                    self.err(&["links", name, "baud"], "baud must be greater than 0");
                }
                if l.protocol == LinkProtocol::ModbusTcp {
                    self.err(
                        &["links", name, "baud"],
                        "baud is for a serial device server; modbus-tcp has no serial line (use modbus-rtu for RTU frames over TCP)",
                    );
                }
            }
            Transport::Prologix { host, port } => host_port(self, host, *port),
            Transport::Hislip { host, port, device } => {
                host_port(self, host, *port);
                if device.trim().is_empty() {
                    self.err(
                        &["links", name, "device"],
                        "device must not be empty (e.g. \"hislip0\")",
                    );
                }
            }
            Transport::Vxi11 {
                host,
                device,
                portmap_port,
            } => {
                host_port(self, host, 1);
                if *portmap_port == 0 {
                    self.err(
                        &["links", name, "portmap_port"],
                        "portmap_port must not be 0 (instruments use 111)",
                    );
                }
                if device.trim().is_empty() {
                    self.err(
                        &["links", name, "device"],
                        "device must not be empty (e.g. \"inst0\")",
                    );
                }
            }
            Transport::Usbtmc { device } => device_path(self, device),
            Transport::PrologixSerial { device, baud } => {
                device_path(self, device);
                if *baud == 0 {
                    self.err(&["links", name, "baud"], "baud must be greater than 0");
                }
            }
            Transport::Serial {
                device,
                baud,
                data_bits,
                stop_bits,
                ..
            } => {
                if device.as_os_str().is_empty() {
                    self.err(&["links", name, "device"], "device must not be empty");
                }
                if *baud == 0 {
                    self.err(&["links", name, "baud"], "baud must be greater than 0");
                }
                if !(5..=8).contains(data_bits) {
                    self.err(&["links", name, "data_bits"], "data_bits must be 5..=8");
                }
                if !matches!(stop_bits, 1 | 2) {
                    self.err(&["links", name, "stop_bits"], "stop_bits must be 1 or 2");
                }
                if l.protocol == LinkProtocol::ModbusTcp {
                    self.err(
                        &["links", name, "protocol"],
                        "modbus-tcp needs kind \"tcp\"; use modbus-rtu on a serial line",
                    );
                }
            }
        }
    }

    fn check_instrument(
        &mut self,
        id: &str,
        inst: &InstrumentConfig,
        links: &BTreeMap<String, LinkConfig>,
        drivers: &DriverSet,
        broken: &BTreeSet<String>,
    ) -> Option<Arc<Driver>> {
        let link = links.get(&inst.link);
        if link.is_none() && !self.exists("links", &inst.link) {
            let known: Vec<String> = self
                .names
                .get("links")
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            self.unknown(&["instruments", id, "link"], "link", &inst.link, &known);
        }
        let driver = drivers.get(&inst.driver).cloned();
        if driver.is_none() && !broken.contains(&inst.driver) {
            let known: Vec<&str> = drivers.keys().map(String::as_str).collect();
            self.unknown(
                &["instruments", id, "driver"],
                "driver",
                &inst.driver,
                &known,
            );
        }
        if let (Some(l), Some(d)) = (link, &driver) {
            let proto = d.file.driver.protocol;
            let ok = match proto {
                Protocol::Scpi => l.protocol == LinkProtocol::Scpi,
                Protocol::Modbus => {
                    matches!(
                        l.protocol,
                        LinkProtocol::ModbusTcp | LinkProtocol::ModbusRtu
                    )
                }
            };
            if !ok {
                self.err(
                    &["instruments", id, "link"],
                    format!(
                        "driver \"{}\" speaks {} but link \"{}\" is {}",
                        d.name(),
                        match proto {
                            Protocol::Scpi => "scpi",
                            Protocol::Modbus => "modbus",
                        },
                        inst.link,
                        l.protocol
                    ),
                );
            }
        }
        if let Some(l) = link {
            let addressed = crate::link::message::is_addressed_transport(&l.transport);
            match (addressed, inst.address) {
                (false, Some(_)) => self.err(
                    &["instruments", id, "address"],
                    format!(
                        "address is only for instruments on a prologix (GPIB) link; link \"{}\" is {}",
                        inst.link,
                        link_kind(&l.transport)
                    ),
                ),
                (true, None) => self.err(
                    &["instruments", id],
                    format!(
                        "missing key `address` (the instrument's GPIB address, 0..=30, on prologix link \"{}\")",
                        inst.link
                    ),
                ),
                (true, Some(a)) if a > 30 => self.err(
                    &["instruments", id, "address"],
                    format!("GPIB address {a} is out of range (0..=30)"),
                ),
                _ => {}
            }
            match (l.protocol, inst.unit) {
                (LinkProtocol::Scpi, Some(_)) => self.err(
                    &["instruments", id, "unit"],
                    "unit is only for modbus links",
                ),
                (LinkProtocol::ModbusTcp | LinkProtocol::ModbusRtu, None) => self.err(
                    &["instruments", id],
                    format!(
                        "missing key `unit` (the modbus unit id on link \"{}\")",
                        inst.link
                    ),
                ),
                (LinkProtocol::ModbusTcp, Some(u)) if !(1..=247).contains(&u) && u != 255 => self
                    .err(
                        &["instruments", id, "unit"],
                        format!("unit {u} is out of range (1..=247, or 255 on modbus-tcp)"),
                    ),
                (LinkProtocol::ModbusRtu, Some(u)) if !(1..=247).contains(&u) => self.err(
                    &["instruments", id, "unit"],
                    format!("unit {u} is out of range (1..=247)"),
                ),
                _ => {}
            }
        }
        driver
    }

    fn check_link_sharing(
        &mut self,
        instruments: &BTreeMap<String, InstrumentConfig>,
        links: &BTreeMap<String, LinkConfig>,
    ) {
        let mut first_on_link: BTreeMap<&str, &str> = BTreeMap::new();
        let mut units: BTreeMap<(&str, u8), &str> = BTreeMap::new();
        let mut addresses: BTreeMap<(&str, u8), &str> = BTreeMap::new();
        for (id, inst) in instruments {
            let Some(l) = links.get(&inst.link) else {
                continue;
            };
            if crate::link::message::is_addressed_transport(&l.transport) {
                // One adapter, several instruments: each needs its own bus address.
                if let Some(a) = inst.address {
                    if let Some(first) = addresses.get(&(inst.link.as_str(), a)) {
                        self.err(
                            &["instruments", id, "address"],
                            format!(
                                "GPIB address {a} on link \"{}\" is already used by instrument \"{first}\"",
                                inst.link
                            ),
                        );
                    } else {
                        addresses.insert((&inst.link, a), id);
                    }
                }
            } else if l.protocol == LinkProtocol::Scpi {
                if let Some(first) = first_on_link.get(inst.link.as_str()) {
                    self.err(
                        &["instruments", id, "link"],
                        format!(
                            "scpi link \"{}\" already carries instrument \"{first}\"; a raw scpi stream addresses one instrument",
                            inst.link
                        ),
                    );
                } else {
                    first_on_link.insert(&inst.link, id);
                }
            } else if let Some(u) = inst.unit {
                if let Some(first) = units.get(&(inst.link.as_str(), u)) {
                    self.err(
                        &["instruments", id, "unit"],
                        format!(
                            "unit {u} on link \"{}\" is already used by instrument \"{first}\"",
                            inst.link
                        ),
                    );
                } else {
                    units.insert((&inst.link, u), id);
                }
            }
        }
    }

    fn check_station(&mut self, name: &str, s: &StationConfig) {
        if s.roles.is_empty() {
            self.err(
                &["stations", name, "roles"],
                "a station needs at least one role",
            );
        }
        let known: Vec<String> = self
            .names
            .get("instruments")
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        for (role, inst) in &s.roles {
            if !self.exists("instruments", inst) {
                self.unknown(
                    &["stations", name, "roles", role],
                    "instrument",
                    inst,
                    &known,
                );
            }
        }
    }

    fn check_poll(
        &mut self,
        i: usize,
        p: &PollConfig,
        instruments: &BTreeMap<String, InstrumentConfig>,
        drivers: &DriverSet,
    ) {
        let idx = format!("[{i}]");
        if p.interval < MIN_POLL_INTERVAL {
            self.err(
                &["polls", &idx, "interval"],
                "interval must be at least 10ms",
            );
        }
        if p.quantities.is_empty() {
            self.err(
                &["polls", &idx, "quantities"],
                "quantities must not be empty",
            );
        }
        let Some(inst) = instruments.get(&p.instrument) else {
            if !self.exists("instruments", &p.instrument) {
                let known: Vec<&str> = instruments.keys().map(String::as_str).collect();
                self.unknown(
                    &["polls", &idx, "instrument"],
                    "instrument",
                    &p.instrument,
                    &known,
                );
            }
            return;
        };
        let Some(driver) = drivers.get(&inst.driver) else {
            return;
        };
        for (j, q) in p.quantities.iter().enumerate() {
            let jdx = format!("[{j}]");
            match driver.file.quantities.get(q) {
                None => {
                    let known: Vec<&str> = driver
                        .file
                        .quantities
                        .iter()
                        .filter(|(_, q)| !q.measurement_only)
                        .map(|(k, _)| k.as_str())
                        .collect();
                    self.err(
                        &["polls", &idx, "quantities", &jdx],
                        format!(
                            "driver \"{}\" has no quantity \"{q}\"{}",
                            driver.name(),
                            suggest_or_list(q, &known)
                        ),
                    );
                }
                Some(qd) if qd.measurement_only => self.err(
                    &["polls", &idx, "quantities", &jdx],
                    format!(
                        "quantity \"{q}\" of driver \"{}\" is measurement_only and cannot be polled",
                        driver.name()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}
