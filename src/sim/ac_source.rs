//! Simulated Chroma 61500-series programmable AC source (61502), driving the [`Plant`].
//!
//! Commands: `*IDN?`, `*RST`, `*CLS`, `*OPC?`, `SYST:REM`, `SYST:LOC`, `SYST:ERR?`,
//! `[:SOUR]:VOLT[:AC] <v>` (0..300 and at most the voltage limit) and `?`,
//! `[:SOUR]:FREQ <f>` (45..1000) and `?`, `[:SOUR]:VOLT:LIM:AC`, `[:SOUR]:CURR:LIM`,
//! `[:SOUR]:VOLT:RANG 150|300`, `:OUTP ON|OFF|1|0`, `:OUTP?` (`ON`/`OFF`), and the read-backs
//! `:FETC|:MEAS` `:VOLT:ACDC?`, `:CURR:AC?`, `:POW:AC?`, `:FREQ?`, `:POW:AC:PFAC?` (NR2).
//!
//! With the output off the read-backs are 0 (the 61500 reports zero, not a marker); a power
//! factor without current reads 0.000. Bad values go to the error queue as `-222`.

use std::sync::{Arc, Mutex, MutexGuard};

use super::plant::Plant;
use super::scpi_server::{Command, ErrorQueue, ScpiDevice, parse_bool, parse_number};

pub const IDN: &str = "Chroma ATE,61502,SIM0001,1.00";

#[derive(Debug, Default)]
struct State {
    errors: ErrorQueue,
    remote: bool,
}

/// The source; clones share one instrument. Its settings live in the [`Plant`].
#[derive(Debug, Clone)]
pub struct AcSource {
    plant: Plant,
    state: Arc<Mutex<State>>,
}

impl AcSource {
    pub fn new(plant: Plant) -> AcSource {
        AcSource {
            plant,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn remote(&self) -> bool {
        self.lock().remote
    }
}

/// A number within `lo..=hi`, or a `-222` / `-109` entry.
fn ranged(errors: &mut ErrorQueue, arg: Option<&str>, lo: f64, hi: f64) -> Option<f64> {
    let Some(arg) = arg else {
        errors.missing_parameter();
        return None;
    };
    match parse_number(arg) {
        Some(v) if (lo..=hi).contains(&v) => Some(v),
        Some(_) => {
            errors.out_of_range();
            None
        }
        None => {
            errors.push(-104, "Data type error");
            None
        }
    }
}

fn fetch(cmd: &Command<'_>, tail: &str) -> bool {
    cmd.is(&format!(":FETCh[:SCALar]{tail}")) || cmd.is(&format!(":MEASure[:SCALar]{tail}"))
}

impl ScpiDevice for AcSource {
    fn handle(&mut self, line: &str) -> Option<String> {
        let cmd = Command::parse(line);
        let mut st = self.lock();
        let st = &mut *st;
        let args = cmd.args();
        let arg0 = args.first().copied();
        let plant = &self.plant;

        if cmd.is("*IDN?") {
            return Some(IDN.to_string());
        }
        if cmd.is("*RST") {
            plant.reset_source();
            return None;
        }
        if cmd.is("*CLS") {
            st.errors.clear();
            return None;
        }
        if cmd.is("*OPC?") {
            return Some("1".to_string());
        }
        if cmd.is(":SYSTem:REMote") {
            st.remote = true;
            return None;
        }
        if cmd.is(":SYSTem:LOCal") {
            st.remote = false;
            return None;
        }
        if cmd.is(":SYSTem:ERRor?") {
            return Some(st.errors.pop_formatted(false));
        }
        if cmd.is("[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude][:AC]") {
            let limit = plant.source().voltage_limit_v.min(300.0);
            if let Some(v) = ranged(&mut st.errors, arg0, 0.0, limit) {
                plant.set_voltage(v);
            }
            return None;
        }
        if cmd.is("[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude][:AC]?") {
            return Some(format!("{:.2}", plant.source().voltage_v));
        }
        if cmd.is("[:SOURce]:FREQuency[:IMMediate]") {
            if let Some(f) = ranged(&mut st.errors, arg0, 45.0, 1000.0) {
                plant.set_frequency(f);
            }
            return None;
        }
        if cmd.is("[:SOURce]:FREQuency[:IMMediate]?") {
            return Some(format!("{:.2}", plant.source().frequency_hz));
        }
        if cmd.is("[:SOURce]:VOLTage:LIMit[:AC]") {
            if let Some(v) = ranged(&mut st.errors, arg0, 0.0, 300.0) {
                plant.set_voltage_limit(v);
            }
            return None;
        }
        if cmd.is("[:SOURce]:VOLTage:LIMit[:AC]?") {
            return Some(format!("{:.2}", plant.source().voltage_limit_v));
        }
        if cmd.is("[:SOURce]:CURRent:LIMit[:RMS]") {
            if let Some(a) = ranged(&mut st.errors, arg0, 0.0, 12.0) {
                plant.set_current_limit(a);
            }
            return None;
        }
        if cmd.is("[:SOURce]:CURRent:LIMit[:RMS]?") {
            return Some(format!("{:.2}", plant.source().current_limit_a));
        }
        if cmd.is("[:SOURce]:VOLTage:RANGe") {
            match arg0.and_then(parse_number) {
                Some(r) if r == 150.0 || r == 300.0 => plant.set_voltage_range(r),
                Some(_) => st.errors.out_of_range(),
                None => st.errors.illegal_parameter(),
            }
            return None;
        }
        if cmd.is("[:SOURce]:VOLTage:RANGe?") {
            return Some(format!("{:.0}", plant.source().voltage_range_v));
        }
        if cmd.is(":OUTPut[:STATe]") {
            match arg0.and_then(parse_bool) {
                Some(on) => plant.set_output(on),
                None => st.errors.illegal_parameter(),
            }
            return None;
        }
        if cmd.is(":OUTPut[:STATe]?") {
            return Some(if plant.output_on() { "ON" } else { "OFF" }.to_string());
        }
        if fetch(&cmd, ":VOLTage:ACDC?") || fetch(&cmd, ":VOLTage[:AC]?") {
            return Some(format!("{:.2}", plant.snapshot().voltage_v));
        }
        if fetch(&cmd, ":CURRent:AC?") {
            return Some(format!("{:.4}", plant.snapshot().current_a));
        }
        if fetch(&cmd, ":POWer:AC[:REAL]?") {
            return Some(format!("{:.3}", plant.snapshot().active_power_w));
        }
        if fetch(&cmd, ":FREQuency?") {
            let f = plant.snapshot().voltage_freq_hz;
            return Some(format!("{:.2}", if f.is_finite() { f } else { 0.0 }));
        }
        if fetch(&cmd, ":POWer:AC:PFACtor?") {
            let pf = plant.snapshot().power_factor;
            return Some(format!("{:.3}", if pf.is_finite() { pf } else { 0.0 }));
        }
        st.errors.undefined_header();
        None
    }
}
