//! Simulated Modbus devices: a temperature chamber (Watlow F4T style), a controller
//! (Eurotherm 3200 style) and an aging rack of relays and lamp currents, served over TCP
//! or as an RTU bus on any byte stream (a pseudo-terminal in tests and demos).
//!
//! The framing is written here rather than taken from tokio-modbus's server features because
//! the faults need control below the request/response level: a reply with a wrong transaction
//! id, a frame with a broken CRC, a connection that closes after N requests, a unit that hears
//! a request and never answers, and replies paced to a baud rate. tokio-modbus's server hands
//! us decoded requests and writes the replies itself, so none of that would be possible.
//!
//! Dynamics are computed from `tokio::time::Instant` at each request, so a paused clock
//! drives them as well as a real one.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::modbus::value::{Decoded, Table, ValueType, WordOrder, decode, encode};
use crate::sim::fault::Faults;

/// Modbus exception codes the simulators answer with.
const ILLEGAL_FUNCTION: u8 = 0x01;
const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
const ILLEGAL_DATA_VALUE: u8 = 0x03;
const GATEWAY_TARGET_FAILED: u8 = 0x0B;

/// Where an idle lab settles, in degC.
pub const AMBIENT_C: f64 = 23.0;

/// A small deterministic noise source (xorshift), so runs are repeatable without a crate.
#[derive(Debug, Clone)]
struct Noise(u64);

impl Noise {
    /// Uniform in `[-amplitude, amplitude]`.
    fn next(&mut self, amplitude: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        (unit * 2.0 - 1.0) * amplitude
    }
}

/// First-order approach of `value` to `target` over `dt` with time constant `tau`.
fn approach(value: f64, target: f64, dt: Duration, tau: Duration) -> f64 {
    if tau.is_zero() {
        return target;
    }
    target + (value - target) * (-dt.as_secs_f64() / tau.as_secs_f64()).exp()
}

fn f32_words(v: f64, order: WordOrder) -> [u16; 2] {
    match encode(&Decoded::Number(v), ValueType::F32, order, None).as_deref() {
        Ok([a, b]) => [*a, *b],
        // Only a finite value beyond the f32 range fails; show it as NaN like a broken sensor.
        _ => f32_words(f64::NAN, order),
    }
}

fn f32_value(words: [u16; 2], order: WordOrder) -> f64 {
    match decode(&words, ValueType::F32, order, None) {
        Ok(Decoded::Number(v)) => v,
        _ => f64::NAN,
    }
}

/// Register addresses (0-based protocol addresses) of the simulated Watlow F4T.
pub mod f4t {
    /// Process value, f32 CDAB, read-only.
    pub const PV: u16 = 2820;
    /// Current (active) setpoint, f32 CDAB, read-only.
    pub const CURRENT_SP: u16 = 2810;
    /// Constant setpoint, f32 CDAB: write this one.
    pub const CONSTANT_SP: u16 = 2782;
    /// Control mode, u16.
    pub const MODE: u16 = 2730;
    pub const MODE_AUTO: u16 = 10;
    pub const MODE_MANUAL: u16 = 54;
    pub const MODE_OFF: u16 = 62;
}

/// A temperature chamber in the style of a Watlow F4T controller: 32-bit floats low word first.
///
/// In auto mode the process value approaches the setpoint first-order; off, it drifts back to
/// [`AMBIENT_C`]; in manual it holds where it is (the heater output is fixed by hand).
#[derive(Debug, Clone)]
pub struct Chamber {
    tau: Duration,
    noise_amplitude: f64,
    noise: Noise,
    pv: f64,
    shown_pv: f64,
    sp_words: [u16; 2],
    mode: u16,
    last: Option<Instant>,
}

impl Default for Chamber {
    fn default() -> Self {
        Self::new()
    }
}

impl Chamber {
    /// At ambient, setpoint ambient, auto, tau 30 s, noise +-0.02 degC.
    pub fn new() -> Self {
        Chamber {
            tau: Duration::from_secs(30),
            noise_amplitude: 0.02,
            noise: Noise(0x2545_F491_4F6C_DD1D),
            pv: AMBIENT_C,
            shown_pv: AMBIENT_C,
            sp_words: f32_words(AMBIENT_C, WordOrder::CDAB),
            mode: f4t::MODE_AUTO,
            last: None,
        }
    }

    pub fn with_tau(mut self, tau: Duration) -> Self {
        self.tau = tau;
        self
    }

    /// Peak noise added to the shown process value; 0 for exact values.
    pub fn with_noise(mut self, amplitude: f64) -> Self {
        self.noise_amplitude = amplitude;
        self
    }

    pub fn with_pv(mut self, pv: f64) -> Self {
        self.pv = pv;
        self.shown_pv = pv;
        self
    }

    /// The true process value (without noise) as of the last request.
    pub fn pv(&self) -> f64 {
        self.pv
    }

    pub fn setpoint(&self) -> f64 {
        f32_value(self.sp_words, WordOrder::CDAB)
    }

    pub fn mode(&self) -> u16 {
        self.mode
    }

    /// Moves the dynamics forward to `now`.
    pub fn advance(&mut self, now: Instant) {
        let dt = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        let target = match self.mode {
            f4t::MODE_AUTO => Some(self.setpoint()),
            f4t::MODE_OFF => Some(AMBIENT_C),
            _ => None,
        };
        if let Some(target) = target.filter(|t| t.is_finite()) {
            self.pv = approach(self.pv, target, dt, self.tau);
        }
        self.shown_pv = self.pv + self.noise.next(self.noise_amplitude);
    }

    fn read(&self, table: Table, address: u16) -> Result<u16, u8> {
        let float = |base: u16, v: f64| f32_words(v, WordOrder::CDAB)[usize::from(address - base)];
        match (table, address) {
            (Table::Holding, a) if (f4t::PV..f4t::PV + 2).contains(&a) => {
                Ok(float(f4t::PV, self.shown_pv))
            }
            (Table::Holding, a) if (f4t::CURRENT_SP..f4t::CURRENT_SP + 2).contains(&a) => {
                Ok(float(f4t::CURRENT_SP, self.setpoint()))
            }
            (Table::Holding, a) if (f4t::CONSTANT_SP..f4t::CONSTANT_SP + 2).contains(&a) => {
                Ok(self.sp_words[usize::from(a - f4t::CONSTANT_SP)])
            }
            (Table::Holding, f4t::MODE) => Ok(self.mode),
            _ => Err(ILLEGAL_DATA_ADDRESS),
        }
    }

    fn writable(&self, table: Table, address: u16) -> Result<(), u8> {
        match (table, address) {
            (Table::Holding, f4t::MODE) => Ok(()),
            (Table::Holding, a) if (f4t::CONSTANT_SP..f4t::CONSTANT_SP + 2).contains(&a) => Ok(()),
            _ => Err(ILLEGAL_DATA_ADDRESS),
        }
    }

    fn write(&mut self, table: Table, address: u16, value: u16) -> Result<(), u8> {
        self.writable(table, address)?;
        if address == f4t::MODE {
            if ![f4t::MODE_AUTO, f4t::MODE_MANUAL, f4t::MODE_OFF].contains(&value) {
                return Err(ILLEGAL_DATA_VALUE);
            }
            self.mode = value;
        } else {
            // Stored as words so that a two-register write lands whole, in any order of words.
            self.sp_words[usize::from(address - f4t::CONSTANT_SP)] = value;
        }
        Ok(())
    }
}

/// Register addresses (0-based protocol addresses, as the 3200 manual prints them).
pub mod eurotherm {
    /// Process value, i16 x10.
    pub const PV: u16 = 1;
    /// Target setpoint, i16 x10 (kept in EEPROM: not for frequent writes).
    pub const TARGET_SP: u16 = 2;
    /// Working setpoint, i16 x10, read-only.
    pub const WORKING_SP: u16 = 5;
    /// Timer status: 0 reset, 1 running, 2 hold, 3 end.
    pub const TIMER_STATUS: u16 = 23;
    /// Communications setpoint, i16 x10: moves the working setpoint without EEPROM wear.
    pub const COMMS_SP: u16 = 26;
}

/// A controller in the style of a Eurotherm 3200: one-decimal values as i16 x10.
#[derive(Debug, Clone)]
pub struct Eurotherm {
    tau: Duration,
    noise_amplitude: f64,
    noise: Noise,
    pv: f64,
    shown_pv: f64,
    target_sp: i16,
    comms_sp: i16,
    working_sp: i16,
    timer_status: u16,
    last: Option<Instant>,
}

impl Default for Eurotherm {
    fn default() -> Self {
        Self::new()
    }
}

impl Eurotherm {
    /// At ambient, setpoints ambient, tau 20 s, noise +-0.05 degC.
    pub fn new() -> Self {
        let sp = (AMBIENT_C * 10.0) as i16;
        Eurotherm {
            tau: Duration::from_secs(20),
            noise_amplitude: 0.05,
            noise: Noise(0x9E37_79B9_7F4A_7C15),
            pv: AMBIENT_C,
            shown_pv: AMBIENT_C,
            target_sp: sp,
            comms_sp: sp,
            working_sp: sp,
            timer_status: 0,
            last: None,
        }
    }

    pub fn with_tau(mut self, tau: Duration) -> Self {
        self.tau = tau;
        self
    }

    pub fn with_noise(mut self, amplitude: f64) -> Self {
        self.noise_amplitude = amplitude;
        self
    }

    pub fn pv(&self) -> f64 {
        self.pv
    }

    pub fn working_setpoint(&self) -> f64 {
        f64::from(self.working_sp) / 10.0
    }

    pub fn advance(&mut self, now: Instant) {
        let dt = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.pv = approach(self.pv, self.working_setpoint(), dt, self.tau);
        self.shown_pv = self.pv + self.noise.next(self.noise_amplitude);
    }

    fn read(&self, table: Table, address: u16) -> Result<u16, u8> {
        let x10 = |v: f64| (v * 10.0).round().clamp(-32768.0, 32767.0) as i16 as u16;
        match (table, address) {
            (Table::Holding, eurotherm::PV) => Ok(x10(self.shown_pv)),
            (Table::Holding, eurotherm::TARGET_SP) => Ok(self.target_sp as u16),
            (Table::Holding, eurotherm::WORKING_SP) => Ok(self.working_sp as u16),
            (Table::Holding, eurotherm::TIMER_STATUS) => Ok(self.timer_status),
            (Table::Holding, eurotherm::COMMS_SP) => Ok(self.comms_sp as u16),
            _ => Err(ILLEGAL_DATA_ADDRESS),
        }
    }

    fn writable(&self, table: Table, address: u16) -> Result<(), u8> {
        match (table, address) {
            (
                Table::Holding,
                eurotherm::TARGET_SP | eurotherm::COMMS_SP | eurotherm::TIMER_STATUS,
            ) => Ok(()),
            _ => Err(ILLEGAL_DATA_ADDRESS),
        }
    }

    fn write(&mut self, table: Table, address: u16, value: u16) -> Result<(), u8> {
        self.writable(table, address)?;
        match address {
            eurotherm::TARGET_SP => {
                self.target_sp = value as i16;
                self.working_sp = value as i16;
            }
            eurotherm::COMMS_SP => {
                self.comms_sp = value as i16;
                self.working_sp = value as i16;
            }
            _ => {
                if value > 3 {
                    return Err(ILLEGAL_DATA_VALUE);
                }
                self.timer_status = value;
            }
        }
        Ok(())
    }
}

/// Addresses of the simulated aging rack (0-based protocol addresses; position N is address N-1).
pub mod rack {
    pub const POSITIONS: u16 = 16;
    /// Input registers 0..15: position current in mA, i16.
    pub const CURRENT: u16 = 0;
    /// Input registers 100..101: supply voltage in V, f32 ABCD.
    pub const SUPPLY_VOLTAGE: u16 = 100;
    /// The 1-based position whose lamp has always failed, so tests have one.
    pub const FAILED_POSITION: u16 = 13;
    /// Nominal current of a lit lamp in mA.
    pub const LAMP_MA: f64 = 45.0;
    /// Nominal supply voltage in V.
    pub const SUPPLY_V: f64 = 230.0;
}

/// A generic aging rack: coils switch the positions, input registers report the current each
/// position draws, discrete inputs flag failed lamps.
#[derive(Debug, Clone)]
pub struct RelayRack {
    relays: [bool; 16],
    failed: [bool; 16],
    noise: Noise,
    noise_amplitude: f64,
    currents: [i16; 16],
    supply: f64,
}

impl Default for RelayRack {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayRack {
    /// All relays off; position 13 failed; current noise +-2 mA, voltage noise +-0.5 V.
    pub fn new() -> Self {
        let mut failed = [false; 16];
        failed[usize::from(rack::FAILED_POSITION - 1)] = true;
        RelayRack {
            relays: [false; 16],
            failed,
            noise: Noise(0xD1B5_4A32_D192_ED03),
            noise_amplitude: 1.0,
            currents: [0; 16],
            supply: rack::SUPPLY_V,
        }
    }

    /// Scales the noise: 1.0 is the default, 0 gives exact values.
    pub fn with_noise(mut self, factor: f64) -> Self {
        self.noise_amplitude = factor;
        self
    }

    /// Relay state of 1-based `position`.
    pub fn relay(&self, position: u16) -> Option<bool> {
        let i = usize::from(position.checked_sub(1)?);
        self.relays.get(i).copied()
    }

    pub fn advance(&mut self, _now: Instant) {
        for i in 0..16 {
            self.currents[i] = if self.relays[i] && !self.failed[i] {
                (rack::LAMP_MA + self.noise.next(2.0 * self.noise_amplitude)).round() as i16
            } else {
                0
            };
        }
        self.supply = rack::SUPPLY_V + self.noise.next(0.5 * self.noise_amplitude);
    }

    fn read(&self, table: Table, address: u16) -> Result<u16, u8> {
        let i = usize::from(address);
        match table {
            Table::Coil if i < 16 => Ok(u16::from(self.relays[i])),
            Table::DiscreteInput if i < 16 => Ok(u16::from(self.failed[i])),
            Table::Input if i < 16 => Ok(self.currents[i] as u16),
            Table::Input if (rack::SUPPLY_VOLTAGE..rack::SUPPLY_VOLTAGE + 2).contains(&address) => {
                Ok(f32_words(self.supply, WordOrder::ABCD)[usize::from(address - 100)])
            }
            _ => Err(ILLEGAL_DATA_ADDRESS),
        }
    }

    fn writable(&self, table: Table, address: u16) -> Result<(), u8> {
        if table == Table::Coil && address < rack::POSITIONS {
            Ok(())
        } else {
            Err(ILLEGAL_DATA_ADDRESS)
        }
    }

    fn write(&mut self, table: Table, address: u16, value: u16) -> Result<(), u8> {
        self.writable(table, address)?;
        self.relays[usize::from(address)] = value != 0;
        Ok(())
    }
}

/// One simulated device on the bench.
#[derive(Debug, Clone)]
pub enum SimDevice {
    Chamber(Chamber),
    Eurotherm(Eurotherm),
    RelayRack(RelayRack),
}

impl From<Chamber> for SimDevice {
    fn from(d: Chamber) -> Self {
        SimDevice::Chamber(d)
    }
}
impl From<Eurotherm> for SimDevice {
    fn from(d: Eurotherm) -> Self {
        SimDevice::Eurotherm(d)
    }
}
impl From<RelayRack> for SimDevice {
    fn from(d: RelayRack) -> Self {
        SimDevice::RelayRack(d)
    }
}

impl SimDevice {
    fn advance(&mut self, now: Instant) {
        match self {
            SimDevice::Chamber(d) => d.advance(now),
            SimDevice::Eurotherm(d) => d.advance(now),
            SimDevice::RelayRack(d) => d.advance(now),
        }
    }

    /// One register (or one bit as 0/1).
    fn read(&self, table: Table, address: u16) -> Result<u16, u8> {
        match self {
            SimDevice::Chamber(d) => d.read(table, address),
            SimDevice::Eurotherm(d) => d.read(table, address),
            SimDevice::RelayRack(d) => d.read(table, address),
        }
    }

    fn writable(&self, table: Table, address: u16) -> Result<(), u8> {
        match self {
            SimDevice::Chamber(d) => d.writable(table, address),
            SimDevice::Eurotherm(d) => d.writable(table, address),
            SimDevice::RelayRack(d) => d.writable(table, address),
        }
    }

    fn write(&mut self, table: Table, address: u16, value: u16) -> Result<(), u8> {
        match self {
            SimDevice::Chamber(d) => d.write(table, address, value),
            SimDevice::Eurotherm(d) => d.write(table, address, value),
            SimDevice::RelayRack(d) => d.write(table, address, value),
        }
    }

    /// Answers one request PDU (function code and data) with a response PDU.
    fn answer(&mut self, pdu: &[u8], now: Instant) -> Vec<u8> {
        let Some((&function, body)) = pdu.split_first() else {
            return vec![0x80, ILLEGAL_FUNCTION];
        };
        self.advance(now);
        match self.process(function, body) {
            Ok(mut data) => {
                data.insert(0, function);
                data
            }
            Err(code) => vec![function | 0x80, code],
        }
    }

    fn process(&mut self, function: u8, body: &[u8]) -> Result<Vec<u8>, u8> {
        let word = |i: usize| -> Result<u16, u8> {
            match body.get(i..i + 2) {
                Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
                None => Err(ILLEGAL_DATA_VALUE),
            }
        };
        let range = |address: u16, count: u16, max: u16| -> Result<(), u8> {
            if count == 0 || count > max {
                return Err(ILLEGAL_DATA_VALUE);
            }
            if u32::from(address) + u32::from(count) > 0x1_0000 {
                return Err(ILLEGAL_DATA_ADDRESS);
            }
            Ok(())
        };
        match function {
            0x01 | 0x02 => {
                let table = if function == 1 {
                    Table::Coil
                } else {
                    Table::DiscreteInput
                };
                let (address, count) = (word(0)?, word(2)?);
                range(address, count, 2000)?;
                let mut bytes = vec![0u8; usize::from(count).div_ceil(8)];
                for i in 0..count {
                    if self.read(table, address + i)? != 0 {
                        bytes[usize::from(i / 8)] |= 1 << (i % 8);
                    }
                }
                let mut out = vec![bytes.len() as u8];
                out.extend(bytes);
                Ok(out)
            }
            0x03 | 0x04 => {
                let table = if function == 3 {
                    Table::Holding
                } else {
                    Table::Input
                };
                let (address, count) = (word(0)?, word(2)?);
                range(address, count, 125)?;
                let mut out = vec![(count * 2) as u8];
                for i in 0..count {
                    out.extend(self.read(table, address + i)?.to_be_bytes());
                }
                Ok(out)
            }
            0x05 => {
                let (address, value) = (word(0)?, word(2)?);
                let on = match value {
                    0xFF00 => 1,
                    0x0000 => 0,
                    _ => return Err(ILLEGAL_DATA_VALUE),
                };
                self.write(Table::Coil, address, on)?;
                Ok(body[..4].to_vec())
            }
            0x06 => {
                let (address, value) = (word(0)?, word(2)?);
                self.write(Table::Holding, address, value)?;
                Ok(body[..4].to_vec())
            }
            0x0F => {
                let (address, count) = (word(0)?, word(2)?);
                range(address, count, 1968)?;
                let bytes = body.get(5..).ok_or(ILLEGAL_DATA_VALUE)?;
                if body.get(4).map(|&n| usize::from(n)) != Some(usize::from(count).div_ceil(8))
                    || bytes.len() != usize::from(count).div_ceil(8)
                {
                    return Err(ILLEGAL_DATA_VALUE);
                }
                for i in 0..count {
                    self.writable(Table::Coil, address + i)?;
                }
                for i in 0..count {
                    let bit = bytes[usize::from(i / 8)] >> (i % 8) & 1;
                    self.write(Table::Coil, address + i, u16::from(bit))?;
                }
                Ok(body[..4].to_vec())
            }
            0x10 => {
                let (address, count) = (word(0)?, word(2)?);
                range(address, count, 123)?;
                if body.get(4).map(|&n| usize::from(n)) != Some(usize::from(count) * 2)
                    || body.len() != 5 + usize::from(count) * 2
                {
                    return Err(ILLEGAL_DATA_VALUE);
                }
                for i in 0..count {
                    self.writable(Table::Holding, address + i)?;
                }
                for i in 0..count {
                    let value = word(5 + usize::from(i) * 2)?;
                    self.write(Table::Holding, address + i, value)?;
                }
                Ok(body[..4].to_vec())
            }
            0x16 => {
                let (address, and_mask, or_mask) = (word(0)?, word(2)?, word(4)?);
                let current = self.read(Table::Holding, address)?;
                let value = (current & and_mask) | (or_mask & !and_mask);
                self.write(Table::Holding, address, value)?;
                Ok(body[..6].to_vec())
            }
            _ => Err(ILLEGAL_FUNCTION),
        }
    }
}

/// Several simulated devices by unit id, as on one RS-485 bus or behind one TCP gateway.
#[derive(Debug)]
pub struct ModbusBench {
    devices: Mutex<BTreeMap<u8, SimDevice>>,
}

impl Default for ModbusBench {
    /// Unit 1 a [`Chamber`], unit 2 a [`Eurotherm`], unit 3 a [`RelayRack`].
    fn default() -> Self {
        ModbusBench::empty()
            .with_device(1, Chamber::new())
            .with_device(2, Eurotherm::new())
            .with_device(3, RelayRack::new())
    }
}

impl ModbusBench {
    pub fn empty() -> Self {
        ModbusBench {
            devices: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds (or replaces) the device at `unit`.
    pub fn with_device(self, unit: u8, device: impl Into<SimDevice>) -> Self {
        self.lock().insert(unit, device.into());
        self
    }

    pub fn units(&self) -> Vec<u8> {
        self.lock().keys().copied().collect()
    }

    /// A copy of the device at `unit` as it is now, for tests to look inside.
    pub fn device(&self, unit: u8) -> Option<SimDevice> {
        self.lock().get(&unit).cloned()
    }

    /// Answers one request PDU for `unit`; `None` when no device has that unit id.
    /// Unit 0 is a broadcast: every device acts on it and none answers (`None` as well).
    pub fn answer(&self, unit: u8, pdu: &[u8]) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut devices = self.lock();
        if unit == 0 {
            for device in devices.values_mut() {
                device.answer(pdu, now);
            }
            return None;
        }
        devices.get_mut(&unit).map(|d| d.answer(pdu, now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u8, SimDevice>> {
        // A panic elsewhere while holding the lock leaves the map usable: keep serving.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves Modbus TCP on `listener` until accepting fails; one task per connection.
///
/// Faults apply per connection: `drop_after` closes it after that many requests, `silent`
/// reads requests and never answers, `garbage` answers with a wrong transaction id.
/// A request for a unit id not on the bench gets exception 0x0B (gateway target failed).
pub async fn serve_tcp(
    listener: TcpListener,
    bench: Arc<ModbusBench>,
    faults: Faults,
) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let (bench, faults) = (bench.clone(), faults.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_tcp_connection(stream, &bench, &faults).await {
                tracing::debug!(%peer, %error, "modbus sim connection ended");
            }
        });
    }
}

async fn serve_tcp_connection(
    mut stream: tokio::net::TcpStream,
    bench: &ModbusBench,
    faults: &Faults,
) -> io::Result<()> {
    let mut requests = 0u64;
    loop {
        if faults.drop_after.is_some_and(|n| requests >= n) {
            return Ok(());
        }
        let mut header = [0u8; 7];
        match stream.read_exact(&mut header).await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        };
        let transaction = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit = header[6];
        if protocol != 0 || !(2..=254).contains(&length) {
            // Not Modbus: a real device would drop the connection too.
            return Ok(());
        }
        let mut pdu = vec![0u8; length - 1];
        stream.read_exact(&mut pdu).await?;
        requests += 1;
        if faults.silent {
            continue;
        }
        if let Some(delay) = faults.delay {
            tokio::time::sleep(delay).await;
        }
        let reply = bench.answer(unit, &pdu).unwrap_or_else(|| {
            let function = pdu.first().copied().unwrap_or(0);
            vec![function | 0x80, GATEWAY_TARGET_FAILED]
        });
        let transaction = if faults.garbage {
            transaction.wrapping_add(0x1111)
        } else {
            transaction
        };
        let mut frame = Vec::with_capacity(7 + reply.len());
        frame.extend(transaction.to_be_bytes());
        frame.extend(0u16.to_be_bytes());
        frame.extend((reply.len() as u16 + 1).to_be_bytes());
        frame.push(unit);
        frame.extend(&reply);
        stream.write_all(&frame).await?;
    }
}

/// CRC-16/MODBUS, sent low byte first.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

enum Frame {
    /// A whole frame with a good CRC of this many bytes.
    Complete(usize),
    NeedMore,
    /// Not the start of a frame: drop a byte and look again.
    Invalid,
}

/// Finds a request frame at the start of `buf`. Request lengths follow from the function code,
/// so frames are cut by length rather than by silence (a pseudo-terminal has no timing).
fn request_frame(buf: &[u8]) -> Frame {
    let Some(&function) = buf.get(1) else {
        return Frame::NeedMore;
    };
    let len = match function {
        0x01..=0x06 => 8,
        0x0F | 0x10 => match buf.get(6) {
            Some(&n) => 9 + usize::from(n),
            None => return Frame::NeedMore,
        },
        0x16 => 10,
        _ => return Frame::Invalid,
    };
    if buf.len() < len {
        return Frame::NeedMore;
    }
    let crc = u16::from_le_bytes([buf[len - 2], buf[len - 1]]);
    if crc16(&buf[..len - 2]) == crc {
        Frame::Complete(len)
    } else {
        Frame::Invalid
    }
}

/// Time one character takes on the wire at `baud`: 11 bits (start, 8 data, parity, stop).
fn char_time(baud: u32) -> Duration {
    Duration::from_secs_f64(11.0 / f64::from(baud.max(1)))
}

/// The silent interval between frames: 3.5 characters, fixed at 1.75 ms above 19200 baud.
fn t35(baud: u32) -> Duration {
    if baud > 19200 {
        Duration::from_micros(1750)
    } else {
        char_time(baud).mul_f64(3.5)
    }
}

/// A partial frame older than this is line noise: throw it away.
const STALE_PARTIAL: Duration = Duration::from_millis(200);

/// Serves Modbus RTU on one byte stream (a serial port or pseudo-terminal): several unit ids
/// share the bus, a request for a unit not on the bench gets no answer, a broadcast (unit 0)
/// is acted on and never answered. Returns when the stream ends.
///
/// With `pace_baud`, each reply is held back by the wire time of request and reply at that
/// baud rate (11 bits a character) plus two t3.5 gaps, so throughput tests see a real bus's
/// ceiling. Faults: `drop_after` stops answering after that many requests, `silent` never
/// answers, `garbage` sends the reply with a broken CRC.
pub async fn serve_rtu<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut port: S,
    bench: Arc<ModbusBench>,
    faults: Faults,
    pace_baud: Option<u32>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    let mut answered = 0u64;
    loop {
        match request_frame(&buf) {
            Frame::Invalid => {
                buf.remove(0);
                continue;
            }
            Frame::NeedMore => {
                let n = if buf.is_empty() {
                    port.read(&mut chunk).await?
                } else {
                    match tokio::time::timeout(STALE_PARTIAL, port.read(&mut chunk)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            buf.clear();
                            continue;
                        }
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Frame::Complete(len) => {
                let request: Vec<u8> = buf.drain(..len).collect();
                let unit = request[0];
                let Some(reply) = bench.answer(unit, &request[1..len - 2]) else {
                    continue;
                };
                answered += 1;
                if faults.silent || faults.drop_after.is_some_and(|n| answered > n) {
                    continue;
                }
                if let Some(delay) = faults.delay {
                    tokio::time::sleep(delay).await;
                }
                let mut frame = Vec::with_capacity(reply.len() + 3);
                frame.push(unit);
                frame.extend(&reply);
                let crc = crc16(&frame);
                let crc = if faults.garbage { !crc } else { crc };
                frame.extend(crc.to_le_bytes());
                if let Some(baud) = pace_baud {
                    // A pty delivers the request at once, so the simulator stands in for the
                    // wire: the request's own transmission time, the device's t3.5 silence
                    // before it answers, then the reply's transmission. The silence after the
                    // reply is the master's to keep (the link does), not the device's.
                    let chars = (len + frame.len()) as u32;
                    tokio::time::sleep(char_time(baud) * chars + t35(baud)).await;
                }
                port.write_all(&frame).await?;
                port.flush().await?;
            }
        }
    }
}

/// A simulated RTU bus on a pseudo-terminal: clients open [`RtuPty::path`] exactly as they
/// would open a real serial port. Dropping it stops the server.
pub struct RtuPty {
    path: String,
    task: tokio::task::JoinHandle<io::Result<()>>,
    // Held open so the master side never sees a hang-up (EIO on Linux) between one client
    // closing the port and the next opening it. Never read: the client's fd gets the data.
    _slave: tokio_serial::SerialStream,
}

impl std::fmt::Debug for RtuPty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuPty").field("path", &self.path).finish()
    }
}

impl RtuPty {
    /// The device path of the slave side, e.g. `/dev/pts/7`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Drop for RtuPty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a pseudo-terminal pair and serves `bench` as an RTU bus on its master side.
/// Must be called inside a tokio runtime.
pub fn serve_rtu_pty(
    bench: Arc<ModbusBench>,
    faults: Faults,
    pace_baud: Option<u32>,
) -> io::Result<RtuPty> {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(io::Error::from)?;
    let path = slave
        .name()
        .ok_or_else(|| io::Error::other("pseudo-terminal slave has no device path"))?;
    let task = tokio::spawn(serve_rtu(master, bench, faults, pace_baud));
    Ok(RtuPty {
        path,
        task,
        _slave: slave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Read holding registers 0x006B+3 from unit 0x11: CRC 0x8776, sent as 76 87.
        let frame = [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03];
        assert_eq!(crc16(&frame).to_le_bytes(), [0x76, 0x87]);
    }

    #[test]
    fn chamber_follows_the_setpoint_first_order() {
        let t0 = Instant::now();
        let mut c = Chamber::new().with_noise(0.0);
        c.advance(t0);
        let sp = f32_words(100.0, WordOrder::CDAB);
        c.write(Table::Holding, f4t::CONSTANT_SP, sp[0]).ok();
        c.write(Table::Holding, f4t::CONSTANT_SP + 1, sp[1]).ok();
        assert_eq!(c.setpoint(), 100.0);
        c.advance(t0 + Duration::from_secs(30));
        // One time constant: 63.2 % of the way from 23 to 100.
        let expected = 100.0 - 77.0 * (-1.0f64).exp();
        assert!((c.pv() - expected).abs() < 1e-6, "{}", c.pv());
        c.write(Table::Holding, f4t::MODE, f4t::MODE_OFF).ok();
        c.advance(t0 + Duration::from_secs(3000));
        assert!((c.pv() - AMBIENT_C).abs() < 0.01);
        assert_eq!(
            c.write(Table::Holding, f4t::MODE, 11),
            Err(ILLEGAL_DATA_VALUE)
        );
        assert_eq!(
            c.write(Table::Holding, f4t::PV, 0),
            Err(ILLEGAL_DATA_ADDRESS)
        );
    }

    #[test]
    fn eurotherm_comms_setpoint_moves_the_working_setpoint() {
        let t0 = Instant::now();
        let mut e = Eurotherm::new().with_noise(0.0);
        e.advance(t0);
        assert_eq!(e.write(Table::Holding, eurotherm::COMMS_SP, 500), Ok(()));
        assert_eq!(e.read(Table::Holding, eurotherm::WORKING_SP), Ok(500));
        assert_eq!(e.read(Table::Holding, eurotherm::TARGET_SP), Ok(230));
        assert_eq!(
            e.write(Table::Holding, eurotherm::WORKING_SP, 1),
            Err(ILLEGAL_DATA_ADDRESS)
        );
        e.advance(t0 + Duration::from_secs(600));
        assert_eq!(e.read(Table::Holding, eurotherm::PV), Ok(500));
    }

    #[test]
    fn frames_are_cut_by_length_and_checked() {
        let mut f = vec![0x02, 0x03, 0x00, 0x01, 0x00, 0x01];
        f.extend(crc16(&f).to_le_bytes());
        assert!(matches!(request_frame(&f), Frame::Complete(8)));
        assert!(matches!(request_frame(&f[..5]), Frame::NeedMore));
        f[7] ^= 0xFF;
        assert!(matches!(request_frame(&f), Frame::Invalid));
        assert!(matches!(request_frame(&[0x01, 0x41]), Frame::Invalid));
    }

    #[test]
    fn bench_answers_reads_and_exceptions() {
        let bench = ModbusBench::default();
        // Unit 3, read discrete inputs 12+1: position 13 has failed.
        assert_eq!(
            bench.answer(3, &[0x02, 0, 12, 0, 1]),
            Some(vec![0x02, 1, 1])
        );
        // Holding registers do not exist on the rack.
        assert_eq!(bench.answer(3, &[0x03, 0, 0, 0, 1]), Some(vec![0x83, 2]));
        assert_eq!(bench.answer(3, &[0x2B, 0x0E]), Some(vec![0xAB, 1]));
        assert_eq!(bench.answer(9, &[0x03, 0, 0, 0, 1]), None);
        // Broadcast: every device acts, nobody answers.
        assert_eq!(bench.answer(0, &[0x05, 0, 0, 0xFF, 0]), None);
        match bench.device(3) {
            Some(SimDevice::RelayRack(r)) => assert_eq!(r.relay(1), Some(true)),
            other => panic!("unit 3 is {other:?}"),
        }
    }
}
