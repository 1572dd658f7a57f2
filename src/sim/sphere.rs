//! Simulated integrating sphere with spectroradiometer, looking at the [`Plant`]'s lamp.
//!
//! Real sphere systems speak proprietary protocols, so this one speaks labgate's own small,
//! line-based, SCPI-style text protocol (long/short header forms, `;` chaining, `\n` terminated):
//!
//! | command            | reply                                                          |
//! |--------------------|----------------------------------------------------------------|
//! | `*IDN?`            | `LABGATE,SIM-SPHERE,SIM0001,1.0`                               |
//! | `*RST` / `*CLS`    | none; reset the integration time / clear the error queue      |
//! | `CONF:TINT <s>`    | none; integration time in seconds (0.001..60)                  |
//! | `CONF:TINT?`       | integration time, s                                            |
//! | `INIT`             | none; start a measurement lasting the integration time         |
//! | `*OPC?`            | `1` once the measurement is complete (held back until then)    |
//! | `STAT?`            | `IDLE` (never measured), `BUSY` or `DONE`                      |
//! | `FETC:FLUX?`       | luminous flux, lm                                              |
//! | `FETC:RFLUX?`      | radiant flux, W                                                |
//! | `FETC:CCT?`        | correlated colour temperature, K                               |
//! | `FETC:DUV?`        | distance from the Planckian locus                              |
//! | `FETC:XY?`         | `x,y` (CIE 1931)                                               |
//! | `FETC:UV?`         | `u',v'` (CIE 1976)                                             |
//! | `FETC:CRI?`        | general colour rendering index Ra                              |
//! | `FETC:RI? <n>`     | special index Rn, n = 1..15                                    |
//! | `FETC:PEAK?`       | peak wavelength, nm                                            |
//! | `FETC:ALL?`        | `flux,cct,duv,x,y,ra,r9`                                       |
//! | `FETC:SPD?`        | 401 values, W/nm, 380..780 nm in 1 nm steps                    |
//! | `SYST:ERR?`        | `-nnn,"message"` or `0,"No error"`                             |
//!
//! Fetched values are those captured at the end of the last measurement. A fetch before any
//! measurement, or while one is running, queues `-230,"Data stale: no completed measurement"`
//! and answers `NAN` (one per expected value). With the lamp dark the flux is 0 and colour
//! values are `NAN`. Numbers are NR3 with six significant digits.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::plant::{Plant, Snapshot};
use super::scpi_server::{Command, ErrorQueue, ScpiDevice, nr3, parse_number};

pub const IDN: &str = "LABGATE,SIM-SPHERE,SIM0001,1.0";

#[derive(Debug, Clone, PartialEq)]
pub struct SphereConfig {
    /// How long one measurement takes.
    pub integration_time: Duration,
}

impl Default for SphereConfig {
    fn default() -> Self {
        SphereConfig {
            integration_time: Duration::from_millis(200),
        }
    }
}

#[derive(Debug)]
enum Measurement {
    Idle,
    Busy { done_at: Instant },
    Done(Box<Snapshot>),
}

#[derive(Debug)]
struct State {
    cfg: SphereConfig,
    integration_time: Duration,
    errors: ErrorQueue,
    measurement: Measurement,
}

impl State {
    /// Settle a finished measurement: the values are the plant's at the end of the integration.
    fn poll(&mut self, plant: &Plant) {
        if let Measurement::Busy { done_at } = self.measurement {
            if Instant::now() >= done_at {
                self.measurement = Measurement::Done(Box::new(plant.snapshot_at(done_at)));
            }
        }
    }
}

/// The sphere; clones share one instrument.
#[derive(Debug, Clone)]
pub struct Sphere {
    plant: Plant,
    state: Arc<Mutex<State>>,
}

impl Sphere {
    pub fn new(plant: Plant, cfg: SphereConfig) -> Sphere {
        Sphere {
            plant,
            state: Arc::new(Mutex::new(State {
                integration_time: cfg.integration_time,
                cfg,
                errors: ErrorQueue::default(),
                measurement: Measurement::Idle,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| nr3(*v, 5))
        .collect::<Vec<_>>()
        .join(",")
}

impl ScpiDevice for Sphere {
    fn hold_until(&self, command: &str) -> Option<Instant> {
        if !Command::parse(command).is("*OPC?") {
            return None;
        }
        match self.lock().measurement {
            Measurement::Busy { done_at } => Some(done_at),
            _ => None,
        }
    }

    fn handle(&mut self, line: &str) -> Option<String> {
        let cmd = Command::parse(line);
        let mut st = self.lock();
        let st = &mut *st;
        st.poll(&self.plant);

        if cmd.is("*IDN?") {
            return Some(IDN.to_string());
        }
        if cmd.is("*RST") {
            st.integration_time = st.cfg.integration_time;
            st.measurement = Measurement::Idle;
            return None;
        }
        if cmd.is("*CLS") {
            st.errors.clear();
            return None;
        }
        if cmd.is("*OPC?") {
            // Called directly (not through the server) while busy: report "not yet".
            return Some(
                match st.measurement {
                    Measurement::Busy { .. } => "0",
                    _ => "1",
                }
                .to_string(),
            );
        }
        if cmd.is(":SYSTem:ERRor?") {
            return Some(st.errors.pop_formatted(false));
        }
        if cmd.is(":CONFigure:TINTegration") {
            match cmd.args().first().and_then(|a| parse_number(a)) {
                Some(s) if (0.001..=60.0).contains(&s) => {
                    st.integration_time = Duration::from_secs_f64(s);
                }
                Some(_) => st.errors.out_of_range(),
                None => st.errors.missing_parameter(),
            }
            return None;
        }
        if cmd.is(":CONFigure:TINTegration?") {
            return Some(nr3(st.integration_time.as_secs_f64(), 5));
        }
        if cmd.is(":INITiate[:IMMediate]") {
            st.measurement = Measurement::Busy {
                done_at: Instant::now() + st.integration_time,
            };
            return None;
        }
        if cmd.is(":STATus?") {
            return Some(
                match st.measurement {
                    Measurement::Idle => "IDLE",
                    Measurement::Busy { .. } => "BUSY",
                    Measurement::Done(_) => "DONE",
                }
                .to_string(),
            );
        }
        if !cmd.is_query()
            || !cmd
                .header
                .trim_start_matches(':')
                .to_ascii_uppercase()
                .starts_with("FETC")
        {
            st.errors.undefined_header();
            return None;
        }

        // Every remaining command is a fetch: work out its shape before looking at the data so
        // an unknown fetch is an undefined header, not a stale-data error.
        type Getter = fn(&Snapshot) -> Vec<f64>;
        let ri_index = |st: &mut State| -> Option<usize> {
            match cmd.args().first().and_then(|a| parse_number(a)) {
                Some(n) if (1.0..=15.0).contains(&n) && n.fract() == 0.0 => Some(n as usize - 1),
                _ => {
                    st.errors.out_of_range();
                    None
                }
            }
        };
        let (getter, width): (Getter, usize) = if cmd.is(":FETCh:FLUX?") {
            (|s| vec![s.flux_lm], 1)
        } else if cmd.is(":FETCh:RFLux?") {
            (|s| vec![s.radiant_flux_w], 1)
        } else if cmd.is(":FETCh:CCT?") {
            (|s| vec![s.cct_k], 1)
        } else if cmd.is(":FETCh:DUV?") {
            (|s| vec![s.duv], 1)
        } else if cmd.is(":FETCh:XY?") {
            (|s| vec![s.x, s.y], 2)
        } else if cmd.is(":FETCh:UV?") {
            (|s| vec![s.u_prime, s.v_prime], 2)
        } else if cmd.is(":FETCh:CRI?") {
            (|s| vec![s.ra], 1)
        } else if cmd.is(":FETCh:PEAK?") {
            (|s| vec![s.peak_nm], 1)
        } else if cmd.is(":FETCh:ALL?") {
            (|s| vec![s.flux_lm, s.cct_k, s.duv, s.x, s.y, s.ra, s.r9], 7)
        } else if cmd.is(":FETCh:SPD?") {
            (|s| s.spd.clone(), super::plant::SPD_POINTS)
        } else if cmd.is(":FETCh:RI?") {
            let Some(i) = ri_index(st) else {
                return Some("NAN".to_string());
            };
            return Some(match &st.measurement {
                Measurement::Done(s) => nr3(s.ri[i], 5),
                _ => {
                    st.errors.push(-230, "Data stale: no completed measurement");
                    "NAN".to_string()
                }
            });
        } else {
            st.errors.undefined_header();
            return None;
        };
        Some(match &st.measurement {
            Measurement::Done(s) => list(&getter(s)),
            _ => {
                st.errors.push(-230, "Data stale: no completed measurement");
                list(&vec![f64::NAN; width])
            }
        })
    }
}
