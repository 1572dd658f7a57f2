//! Simulated Yokogawa WT310E power analyzer (the subset labgate uses), measuring the [`Plant`].
//!
//! Commands: `*IDN?`, `*RST`, `*CLS`, `*OPC?`, `:COMMunicate:REMote|VERBose|HEADer|WAIT`,
//! `:NUMeric:FORMat`, `:NUMeric:NORMal:NUMber[?]`, `:NUMeric:NORMal:ITEM<x>[?]`,
//! `:NUMeric:NORMal:VALue? [n]`, `:STATus:ERRor?`, `:STATus:EESR?`, `:STATus:FILTer<x>`,
//! `:INTEGrate:STARt|STOP|RESet|STATe?|MODE|TIMer`.
//!
//! Numeric replies are NR3 with five significant digits; no data is `NAN` and over range is `INF`,
//! as in the ASCII numeric format. Error codes are positive (`113,"Undefined header"`), as the
//! WT300 series reports them. Replies never carry headers (the `HEADer` setting is accepted
//! and ignored) since labgate always sends `:COMMunicate:HEADer OFF`.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::plant::{Plant, Snapshot};
use super::scpi_server::{Command, ErrorQueue, ScpiDevice, nr3, parse_bool, parse_number};

pub const IDN: &str = "YOKOGAWA,WT310E,C2SIM0001,F1.03";

/// Most numeric items the WT310E can list.
const MAX_ITEMS: usize = 255;

#[derive(Debug, Clone, PartialEq)]
pub struct PowerAnalyzerConfig {
    /// Current range, A: a current above it reads `INF` (the real range has 40 % headroom; a
    /// test sets a tiny range to provoke the marker).
    pub current_range_a: f64,
}

impl Default for PowerAnalyzerConfig {
    fn default() -> Self {
        PowerAnalyzerConfig {
            current_range_a: 0.5,
        }
    }
}

/// A measurement function the numeric items can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    U,
    I,
    P,
    S,
    Q,
    Lambda,
    Phi,
    Fu,
    Fi,
    Uthd,
    Ithd,
    Wh,
    Time,
    None,
}

impl Function {
    fn parse(s: &str) -> Option<Function> {
        let s = s.trim();
        let is =
            |long: &str, short: &str| s.eq_ignore_ascii_case(long) || s.eq_ignore_ascii_case(short);
        let f = if is("U", "U") {
            Function::U
        } else if is("I", "I") {
            Function::I
        } else if is("P", "P") {
            Function::P
        } else if is("S", "S") {
            Function::S
        } else if is("Q", "Q") {
            Function::Q
        } else if is("LAMBda", "LAMB") {
            Function::Lambda
        } else if is("PHI", "PHI") {
            Function::Phi
        } else if is("FU", "FU") {
            Function::Fu
        } else if is("FI", "FI") {
            Function::Fi
        } else if is("UTHD", "UTHD") {
            Function::Uthd
        } else if is("ITHD", "ITHD") {
            Function::Ithd
        } else if is("WH", "WH") {
            Function::Wh
        } else if is("TIME", "TIME") {
            Function::Time
        } else if is("NONE", "NONE") {
            Function::None
        } else {
            return None;
        };
        Some(f)
    }

    fn name(self) -> &'static str {
        match self {
            Function::U => "U",
            Function::I => "I",
            Function::P => "P",
            Function::S => "S",
            Function::Q => "Q",
            Function::Lambda => "LAMBDA",
            Function::Phi => "PHI",
            Function::Fu => "FU",
            Function::Fi => "FI",
            Function::Uthd => "UTHD",
            Function::Ithd => "ITHD",
            Function::Wh => "WH",
            Function::Time => "TIME",
            Function::None => "NONE",
        }
    }

    /// Whether the value depends on the current channel (so it is over range with the current).
    fn uses_current(self) -> bool {
        matches!(
            self,
            Function::I
                | Function::P
                | Function::S
                | Function::Q
                | Function::Lambda
                | Function::Phi
                | Function::Fi
                | Function::Ithd
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntegState {
    Reset,
    Start,
    Stop,
}

#[derive(Debug)]
struct State {
    cfg: PowerAnalyzerConfig,
    errors: ErrorQueue,
    items: Vec<Function>,
    number: usize,
    remote: bool,
    integ: IntegState,
    /// Accumulated energy, Wh, and integration time, s, up to `integ_mark`.
    wh: f64,
    integ_s: f64,
    integ_mark: Instant,
}

impl State {
    fn new(cfg: PowerAnalyzerConfig) -> State {
        let mut s = State {
            cfg,
            errors: ErrorQueue::default(),
            items: Vec::new(),
            number: 0,
            remote: false,
            integ: IntegState::Reset,
            wh: 0.0,
            integ_s: 0.0,
            integ_mark: Instant::now(),
        };
        s.reset();
        s
    }

    fn reset(&mut self) {
        self.items = vec![Function::None; MAX_ITEMS];
        let defaults = [
            Function::U,
            Function::I,
            Function::P,
            Function::Lambda,
            Function::Fu,
            Function::Ithd,
        ];
        self.items[..defaults.len()].copy_from_slice(&defaults);
        self.number = defaults.len();
        self.integ = IntegState::Reset;
        self.wh = 0.0;
        self.integ_s = 0.0;
    }

    /// Bring the energy integral up to `now` (rectangle rule over query intervals: fine for a
    /// lamp whose power barely moves).
    fn integrate(&mut self, now: Instant, power_w: f64) {
        if self.integ == IntegState::Start {
            let dt = now.saturating_duration_since(self.integ_mark).as_secs_f64();
            if power_w.is_finite() {
                self.wh += power_w * dt / 3600.0;
            }
            self.integ_s += dt;
        }
        self.integ_mark = now;
    }
}

/// The analyzer; clones share one instrument (settings, error queue, integrator).
#[derive(Debug, Clone)]
pub struct PowerAnalyzer {
    plant: Plant,
    state: Arc<Mutex<State>>,
}

impl PowerAnalyzer {
    pub fn new(plant: Plant, cfg: PowerAnalyzerConfig) -> PowerAnalyzer {
        PowerAnalyzer {
            plant,
            state: Arc::new(Mutex::new(State::new(cfg))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a controller has put the analyzer in remote mode.
    pub fn remote(&self) -> bool {
        self.lock().remote
    }
}

fn value(f: Function, s: &Snapshot, st: &State) -> f64 {
    let over = s.current_a > st.cfg.current_range_a;
    if over && f.uses_current() {
        return f64::INFINITY;
    }
    match f {
        Function::U => s.voltage_v,
        Function::I => s.current_a,
        Function::P => s.active_power_w,
        Function::S => s.apparent_power_va,
        Function::Q => s.reactive_power_var,
        Function::Lambda => s.power_factor,
        Function::Phi => s.phase_deg,
        Function::Fu => s.voltage_freq_hz,
        Function::Fi => s.current_freq_hz,
        Function::Uthd => s.voltage_thd_pct,
        Function::Ithd => s.current_thd_pct,
        Function::Wh => st.wh,
        Function::Time => st.integ_s,
        Function::None => f64::NAN,
    }
}

impl ScpiDevice for PowerAnalyzer {
    fn handle(&mut self, line: &str) -> Option<String> {
        let cmd = Command::parse(line);
        let mut st = self.lock();
        let st = &mut *st;
        let args = cmd.args();
        let arg0 = args.first().copied().unwrap_or("");

        if cmd.is("*IDN?") {
            return Some(IDN.to_string());
        }
        if cmd.is("*RST") {
            st.reset();
            return None;
        }
        if cmd.is("*CLS") {
            st.errors.clear();
            return None;
        }
        if cmd.is("*OPC?") {
            return Some("1".to_string());
        }
        if cmd.is("*OPC") || cmd.is("*WAI") {
            return None;
        }
        if cmd.is(":COMMunicate:REMote") {
            match parse_bool(arg0) {
                Some(on) => st.remote = on,
                None => st.errors.push(224, "Illegal parameter value"),
            }
            return None;
        }
        if cmd.is(":COMMunicate:REMote?") {
            return Some(if st.remote { "1" } else { "0" }.to_string());
        }
        if cmd.is(":COMMunicate:VERBose") || cmd.is(":COMMunicate:HEADer") {
            if parse_bool(arg0).is_none() {
                st.errors.push(224, "Illegal parameter value");
            }
            return None;
        }
        if cmd.is(":COMMunicate:WAIT") {
            // Data are always fresh in the simulator: the update event has already happened.
            if parse_number(arg0).is_none() {
                st.errors.push(109, "Missing parameter");
            }
            return None;
        }
        if cmd.is(":NUMeric:FORMat") {
            let a = arg0.trim();
            if !(a.eq_ignore_ascii_case("ASCii") || a.eq_ignore_ascii_case("ASC")) {
                // FLOat (binary blocks) is not simulated.
                st.errors.push(224, "Illegal parameter value");
            }
            return None;
        }
        if cmd.is(":NUMeric:FORMat?") {
            return Some("ASCII".to_string());
        }
        if cmd.is(":NUMeric[:NORMal]:NUMber") {
            match parse_number(arg0) {
                Some(n) if (1.0..=MAX_ITEMS as f64).contains(&n) && n.fract() == 0.0 => {
                    st.number = n as usize;
                }
                _ => st.errors.push(222, "Data out of range"),
            }
            return None;
        }
        if cmd.is(":NUMeric[:NORMal]:NUMber?") {
            return Some(st.number.to_string());
        }
        if let Some(sfx) = cmd.matches(":NUMeric[:NORMal]:ITEM#") {
            let x = sfx.first().copied().unwrap_or(1) as usize;
            if !(1..=MAX_ITEMS).contains(&x) {
                st.errors.push(113, "Undefined header");
                return None;
            }
            let f = args.first().and_then(|a| Function::parse(a));
            let element = args.get(1).map_or(Some(1.0), |e| parse_number(e));
            match (f, element) {
                (Some(f), Some(1.0)) => st.items[x - 1] = f,
                (Some(_), _) => st.errors.push(222, "Data out of range"),
                (None, _) => st.errors.push(224, "Illegal parameter value"),
            }
            return None;
        }
        if let Some(sfx) = cmd.matches(":NUMeric[:NORMal]:ITEM#?") {
            let x = sfx.first().copied().unwrap_or(1) as usize;
            return match st.items.get(x.wrapping_sub(1)) {
                Some(Function::None) => Some("NONE".to_string()),
                Some(f) => Some(format!("{},1", f.name())),
                None => {
                    st.errors.push(113, "Undefined header");
                    None
                }
            };
        }
        if cmd.is(":NUMeric[:NORMal]:VALue?") {
            let now = Instant::now();
            let snap = self.plant.snapshot_at(now);
            st.integrate(now, snap.active_power_w);
            if let Some(a) = args.first() {
                return match parse_number(a) {
                    Some(n) if n >= 1.0 && n <= MAX_ITEMS as f64 && n.fract() == 0.0 => {
                        Some(nr3(value(st.items[n as usize - 1], &snap, st), 4))
                    }
                    _ => {
                        st.errors.push(222, "Data out of range");
                        Some("NAN".to_string())
                    }
                };
            }
            let values: Vec<String> = st.items[..st.number]
                .iter()
                .map(|f| nr3(value(*f, &snap, st), 4))
                .collect();
            return Some(values.join(","));
        }
        if cmd.is(":STATus:ERRor?") {
            return Some(st.errors.pop_formatted(false));
        }
        if cmd.is(":STATus:EESR?") {
            // Bit 0 (UPD): a data update happened since the last read; always true here.
            return Some("1".to_string());
        }
        if cmd.is(":STATus:FILTer#") {
            let ok = ["RISE", "FALL", "BOTH", "NEVer", "NEV"]
                .iter()
                .any(|c| arg0.eq_ignore_ascii_case(c));
            if !ok {
                st.errors.push(224, "Illegal parameter value");
            }
            return None;
        }
        if cmd.is(":INTEGrate:STARt") {
            st.integrate(Instant::now(), self.plant.snapshot().active_power_w);
            st.integ = IntegState::Start;
            return None;
        }
        if cmd.is(":INTEGrate:STOP") {
            st.integrate(Instant::now(), self.plant.snapshot().active_power_w);
            st.integ = IntegState::Stop;
            return None;
        }
        if cmd.is(":INTEGrate:RESet") {
            st.integ = IntegState::Reset;
            st.wh = 0.0;
            st.integ_s = 0.0;
            return None;
        }
        if cmd.is(":INTEGrate:STATe?") {
            return Some(
                match st.integ {
                    IntegState::Reset => "RESET",
                    IntegState::Start => "START",
                    IntegState::Stop => "STOP",
                }
                .to_string(),
            );
        }
        if cmd.is(":INTEGrate:MODE") || cmd.is(":INTEGrate:TIMer") {
            // Accepted for compatibility; the simulator integrates in normal mode without a timer.
            return None;
        }
        st.errors.push(113, "Undefined header");
        None
    }
}
