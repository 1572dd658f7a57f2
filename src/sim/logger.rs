//! Simulated Keysight (HP) 34970A data logger with a 34901A multiplexer in slot 1 reading
//! K-type thermocouples: channel 101 is taped to the [`Plant`]'s lamp case, the others hang in
//! the room air, and configured channels are open (a broken thermocouple).
//!
//! Commands: `*IDN?`, `*RST`, `*CLS`, `*OPC?`, `SYST:ERR?` (`+0,"No error"`) and
//! `MEAS:TEMP? TC,K,(@<list>)` (only K-type; `CONF:TEMP`, `ROUT:SCAN` and `READ?` are not
//! simulated). Channel lists are ranges `(@101:104)` and/or single channels `(@101,103)`, slot 1
//! only (101..120).
//! Replies are NR3 degC with eight decimals (`+2.41230000E+01`); an open thermocouple reads
//! `+9.90000000E+37`, as the instrument reports one.

use std::sync::{Arc, Mutex, MutexGuard};

use super::plant::Plant;
use super::scpi_server::{Command, ErrorQueue, ScpiDevice, nr3};

pub const IDN: &str = "HEWLETT-PACKARD,34970A,0,13-2-2";

/// What the 34970A reports for an open thermocouple.
pub const OPEN_TC: f64 = 9.9e37;

#[derive(Debug, Clone, PartialEq)]
pub struct LoggerConfig {
    /// Channels whose thermocouple is open.
    pub open_channels: Vec<u16>,
    /// The channel on the lamp case.
    pub case_channel: u16,
}

impl Default for LoggerConfig {
    fn default() -> Self {
        LoggerConfig {
            open_channels: vec![104],
            case_channel: 101,
        }
    }
}

#[derive(Debug)]
struct State {
    cfg: LoggerConfig,
    errors: ErrorQueue,
    /// Slow wobble of the room air, advanced per reading.
    tick: u64,
}

/// The logger; clones share one instrument.
#[derive(Debug, Clone)]
pub struct Logger {
    plant: Plant,
    state: Arc<Mutex<State>>,
}

impl Logger {
    pub fn new(plant: Plant, cfg: LoggerConfig) -> Logger {
        Logger {
            plant,
            state: Arc::new(Mutex::new(State {
                cfg,
                errors: ErrorQueue::default(),
                tick: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parse `(@101:104,106)` into channel numbers; `None` when malformed.
pub fn parse_channel_list(arg: &str) -> Option<Vec<u16>> {
    let inner = arg.trim().strip_prefix("(@")?.strip_suffix(')')?;
    let mut out = Vec::new();
    for part in inner.split(',') {
        let part = part.trim();
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 200 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

impl ScpiDevice for Logger {
    fn handle(&mut self, line: &str) -> Option<String> {
        let cmd = Command::parse(line);
        let mut st = self.lock();
        let st = &mut *st;

        if cmd.is("*IDN?") {
            return Some(IDN.to_string());
        }
        if cmd.is("*RST") {
            return None;
        }
        if cmd.is("*CLS") {
            st.errors.clear();
            return None;
        }
        if cmd.is("*OPC?") {
            return Some("1".to_string());
        }
        if cmd.is(":SYSTem:ERRor?") {
            return Some(st.errors.pop_formatted(true));
        }
        if cmd.is(":MEASure:TEMPerature?") {
            let args = cmd.args();
            let (Some(probe), Some(tc_type), Some(list)) = (args.first(), args.get(1), args.get(2))
            else {
                st.errors.missing_parameter();
                return None;
            };
            let tc = probe.eq_ignore_ascii_case("TC") || probe.eq_ignore_ascii_case("TCouple");
            if !tc || !tc_type.eq_ignore_ascii_case("K") {
                // Only K-type thermocouples are wired to this simulated multiplexer.
                st.errors.illegal_parameter();
                return None;
            }
            let Some(channels) = parse_channel_list(list) else {
                st.errors.push(-224, "Illegal parameter value");
                return None;
            };
            if channels.is_empty() || channels.iter().any(|c| !(101..=120).contains(c)) {
                st.errors.out_of_range();
                return None;
            }
            let snap = self.plant.snapshot();
            st.tick = st.tick.wrapping_add(1);
            let values: Vec<String> = channels
                .iter()
                .map(|&ch| {
                    let t = if st.cfg.open_channels.contains(&ch) {
                        OPEN_TC
                    } else if ch == st.cfg.case_channel {
                        snap.case_temp_c
                    } else {
                        // Room air: a fixed per-channel offset and a slow, deterministic wobble.
                        let phase = (st.tick as f64 * 0.1 + f64::from(ch)).sin();
                        snap.ambient_c + 0.15 * f64::from(ch % 7) - 0.45 + 0.05 * phase
                    };
                    format!("{}{}", if t >= 0.0 { "+" } else { "" }, nr3(t, 8))
                })
                .collect();
            return Some(values.join(","));
        }
        st.errors.undefined_header();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lists() {
        assert_eq!(
            parse_channel_list("(@101:104)"),
            Some(vec![101, 102, 103, 104])
        );
        assert_eq!(parse_channel_list("(@101,103)"), Some(vec![101, 103]));
        assert_eq!(
            parse_channel_list("(@101:102,110)"),
            Some(vec![101, 102, 110])
        );
        assert_eq!(parse_channel_list("(@104:101)"), None);
        assert_eq!(parse_channel_list("101"), None);
    }
}
