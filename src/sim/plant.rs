//! The physical world behind the simulated bench: an AC source feeding one LED lamp.
//!
//! Every simulated instrument reads or writes this one shared [`Plant`], so a recipe that switches
//! the source on sees the analyzer's power rise, the sphere's flux settle and the logger's case
//! temperature climb, exactly as on a real bench.
//!
//! The lamp's state is a single "warmth" value `w` in 0..=1 that relaxes exponentially (time
//! constant `tau`) towards 1 while lit and towards 0 while dark. Flux starts a few percent high and
//! falls as `w` rises (LED efficacy drops with junction temperature), power starts a little low and
//! rises, and the case temperature is `ambient + rise * w`. Values are a pure function of the last
//! switching event and the time since, so [`Plant::snapshot_at`] can look into the future without
//! sleeping, and time comes from [`tokio::time::Instant`] so a paused tokio clock works too.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// First wavelength of the spectrum, nm.
pub const SPD_START_NM: u32 = 380;
/// Last wavelength of the spectrum, nm (inclusive).
pub const SPD_END_NM: u32 = 780;
/// Number of spectrum points (1 nm steps).
pub const SPD_POINTS: usize = (SPD_END_NM - SPD_START_NM + 1) as usize;

/// The lamp and its surroundings. Defaults describe a 9.5 W, 806 lm, 2700 K A60 LED bulb.
#[derive(Debug, Clone, PartialEq)]
pub struct PlantConfig {
    /// Active power once thermally stable at 230 V, W.
    pub rated_power_w: f64,
    /// Luminous flux once thermally stable, lm.
    pub steady_flux_lm: f64,
    /// Flux right after switch-on relative to steady state (0.04 = 4 % high).
    pub cold_flux_excess: f64,
    /// Power right after switch-on relative to steady state (0.03 = 3 % low).
    pub cold_power_deficit: f64,
    /// Time constant of the warm-up (and cool-down).
    pub tau: Duration,
    /// Relative noise amplitude applied to each reported value (0.001 = +/-0.1 %).
    pub noise: f64,
    /// Seed of the deterministic noise.
    pub seed: u64,
    /// The lamp's driver does not start below this supply voltage, V.
    pub min_voltage_v: f64,
    pub power_factor: f64,
    /// Current total harmonic distortion of the lamp's driver, %.
    pub current_thd_pct: f64,
    /// Voltage distortion of the (clean) source, %.
    pub voltage_thd_pct: f64,
    pub cct_k: f64,
    pub duv: f64,
    /// CRI general index; R1..R8 are spread around it.
    pub ra: f64,
    pub r9: f64,
    pub ambient_c: f64,
    /// Case temperature rise above ambient once stable, degC.
    pub case_rise_c: f64,
}

impl Default for PlantConfig {
    fn default() -> Self {
        PlantConfig {
            rated_power_w: 9.5,
            steady_flux_lm: 806.0,
            cold_flux_excess: 0.04,
            cold_power_deficit: 0.03,
            tau: Duration::from_secs(20),
            noise: 0.0005,
            seed: 0x1ab_6a7e,
            min_voltage_v: 90.0,
            power_factor: 0.9,
            current_thd_pct: 25.0,
            voltage_thd_pct: 0.3,
            cct_k: 2700.0,
            duv: 0.0012,
            ra: 82.0,
            r9: 8.0,
            ambient_c: 24.0,
            case_rise_c: 40.0,
        }
    }
}

/// The AC source's settings, as the Chroma 61500 simulator writes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceState {
    pub output_on: bool,
    pub voltage_v: f64,
    pub frequency_hz: f64,
    /// 0 = no limit.
    pub current_limit_a: f64,
    /// Highest voltage setpoint the source accepts.
    pub voltage_limit_v: f64,
    /// Output range, V (150 or 300).
    pub voltage_range_v: f64,
}

impl Default for SourceState {
    fn default() -> Self {
        SourceState {
            output_on: false,
            voltage_v: 0.0,
            frequency_hz: 50.0,
            current_limit_a: 0.0,
            voltage_limit_v: 300.0,
            voltage_range_v: 300.0,
        }
    }
}

/// Everything the simulators report at one instant. `NaN` means "the instrument has no data"
/// (no signal to measure a frequency or a power factor on, no light to measure a colour of).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub output_on: bool,
    pub lit: bool,
    pub voltage_v: f64,
    pub current_a: f64,
    pub active_power_w: f64,
    pub apparent_power_va: f64,
    pub reactive_power_var: f64,
    pub power_factor: f64,
    /// Phase angle between voltage and current, degrees.
    pub phase_deg: f64,
    pub voltage_freq_hz: f64,
    pub current_freq_hz: f64,
    pub voltage_thd_pct: f64,
    pub current_thd_pct: f64,
    pub flux_lm: f64,
    pub radiant_flux_w: f64,
    pub cct_k: f64,
    pub duv: f64,
    pub x: f64,
    pub y: f64,
    pub u_prime: f64,
    pub v_prime: f64,
    pub ra: f64,
    /// R1..R15 (index 0 is R1).
    pub ri: [f64; 15],
    pub r9: f64,
    pub peak_nm: f64,
    pub case_temp_c: f64,
    pub ambient_c: f64,
    /// Spectral power distribution, W/nm, 380..=780 nm in 1 nm steps.
    pub spd: Vec<f64>,
}

/// The shared bench physics. Cheap to clone; all clones see the same state.
#[derive(Debug, Clone)]
pub struct Plant {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    cfg: PlantConfig,
    source: SourceState,
    /// Warmth at `since`.
    warmth0: f64,
    since: Instant,
    rng: XorShift,
    /// Unit-flux spectrum shape and the flux it carries, computed once.
    shape: Vec<f64>,
    shape_flux_lm: f64,
}

impl Plant {
    pub fn new(cfg: PlantConfig) -> Plant {
        let shape = spd_shape();
        let shape_flux_lm = luminous_flux(&shape);
        Plant {
            inner: Arc::new(Mutex::new(Inner {
                rng: XorShift::new(cfg.seed),
                cfg,
                source: SourceState::default(),
                warmth0: 0.0,
                since: Instant::now(),
                shape,
                shape_flux_lm,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the plain-data state half-updated in a way
        // that matters for a simulator, so keep serving rather than poisoning every instrument.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> PlantConfig {
        self.lock().cfg.clone()
    }

    pub fn source(&self) -> SourceState {
        self.lock().source
    }

    pub fn output_on(&self) -> bool {
        self.lock().source.output_on
    }

    /// Whether the lamp is drawing power and emitting light.
    pub fn lamp_lit(&self) -> bool {
        let g = self.lock();
        g.lit()
    }

    pub fn set_output(&self, on: bool) {
        self.update(|s| s.output_on = on);
    }

    pub fn set_voltage(&self, volts: f64) {
        self.update(|s| s.voltage_v = volts);
    }

    pub fn set_frequency(&self, hz: f64) {
        self.update(|s| s.frequency_hz = hz);
    }

    pub fn set_current_limit(&self, amps: f64) {
        self.update(|s| s.current_limit_a = amps);
    }

    pub fn set_voltage_limit(&self, volts: f64) {
        self.update(|s| s.voltage_limit_v = volts);
    }

    pub fn set_voltage_range(&self, volts: f64) {
        self.update(|s| s.voltage_range_v = volts);
    }

    /// The source's power-on state: output off, 0 V, 50 Hz, no limits.
    pub fn reset_source(&self) {
        self.update(|s| *s = SourceState::default());
    }

    /// The lamp's warmth (0 cold .. 1 thermally stable) at `at`.
    pub fn warmth_at(&self, at: Instant) -> f64 {
        self.lock().warmth(at)
    }

    fn update(&self, f: impl FnOnce(&mut SourceState)) {
        let now = Instant::now();
        let mut g = self.lock();
        // Freeze the warm-up curve at the moment of the change so the new target starts from here.
        let w = g.warmth(now);
        g.warmth0 = w;
        g.since = now;
        f(&mut g.source);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Instant::now())
    }

    /// The values at `at` (clamped to the last change), advancing the noise sequence.
    pub fn snapshot_at(&self, at: Instant) -> Snapshot {
        let mut g = self.lock();
        g.snapshot(at)
    }
}

impl Inner {
    fn lit(&self) -> bool {
        self.source.output_on && self.source.voltage_v >= self.cfg.min_voltage_v
    }

    fn warmth(&self, at: Instant) -> f64 {
        let dt = at.saturating_duration_since(self.since).as_secs_f64();
        let tau = self.cfg.tau.as_secs_f64().max(1e-6);
        let target = if self.lit() { 1.0 } else { 0.0 };
        target + (self.warmth0 - target) * (-dt / tau).exp()
    }

    fn jitter(&mut self) -> f64 {
        1.0 + self.cfg.noise * self.rng.next_signed()
    }

    fn snapshot(&mut self, at: Instant) -> Snapshot {
        let w = self.warmth(at);
        let cfg = self.cfg.clone();
        let src = self.source;
        let lit = self.lit();
        let nan = f64::NAN;

        // Below a few volts the analyzer has no signal to lock its frequency measurement on.
        let has_voltage = src.output_on && src.voltage_v >= 1.0;
        let voltage_v = if has_voltage {
            src.voltage_v * (1.0 + 0.2 * (self.jitter() - 1.0))
        } else {
            0.0
        };
        let freq = if has_voltage {
            src.frequency_hz * (1.0 + 0.02 * (self.jitter() - 1.0))
        } else {
            nan
        };

        let (p, pf, ithd) = if lit {
            // A constant-power driver: power barely follows the supply voltage.
            let v_factor = 1.0 + 0.02 * (src.voltage_v - 230.0) / 230.0;
            let p = cfg.rated_power_w * (1.0 - cfg.cold_power_deficit * (1.0 - w)) * v_factor;
            let pf = (cfg.power_factor - 0.0004 * (src.voltage_v - 230.0)).clamp(0.3, 1.0);
            (
                p * self.jitter(),
                (pf * self.jitter()).min(1.0),
                cfg.current_thd_pct * self.jitter(),
            )
        } else {
            (0.0, nan, nan)
        };
        let (s, q, i, phase) = if lit {
            let s = p / pf;
            let q = (s * s - p * p).max(0.0).sqrt();
            (s, q, s / voltage_v, pf.acos().to_degrees())
        } else {
            (0.0, 0.0, 0.0, nan)
        };

        let flux = if lit {
            let v_factor = 1.0 + 0.03 * (src.voltage_v - 230.0) / 230.0;
            cfg.steady_flux_lm * (1.0 + cfg.cold_flux_excess * (1.0 - w)) * v_factor * self.jitter()
        } else {
            0.0
        };
        let scale = if self.shape_flux_lm > 0.0 {
            flux / self.shape_flux_lm
        } else {
            0.0
        };
        let spd: Vec<f64> = self.shape.iter().map(|v| v * scale).collect();
        let radiant = spd.iter().sum::<f64>();

        let (cct, duv, x, y, u, v, ra, ri, peak) = if lit {
            // Phosphor-converted LEDs drift slightly warmer as they heat up.
            let cct = (cfg.cct_k + 25.0 * (1.0 - w)) * (1.0 + 0.5 * (self.jitter() - 1.0));
            let duv = cfg.duv + 0.0002 * self.rng.next_signed();
            let (u, v) = planck_uv_with_duv(cct, duv);
            let d = 2.0 * u - 8.0 * v + 4.0;
            let (x, y) = (3.0 * u / d, 2.0 * v / d);
            let ri = special_indices(cfg.ra, cfg.r9);
            let peak = peak_wavelength(&self.shape);
            (cct, duv, x, y, u, 1.5 * v, cfg.ra, ri, peak)
        } else {
            (nan, nan, nan, nan, nan, nan, nan, [nan; 15], nan)
        };

        Snapshot {
            output_on: src.output_on,
            lit,
            voltage_v,
            current_a: i,
            active_power_w: p,
            apparent_power_va: s,
            reactive_power_var: q,
            power_factor: pf,
            phase_deg: phase,
            voltage_freq_hz: freq,
            current_freq_hz: if lit { freq } else { nan },
            voltage_thd_pct: if has_voltage {
                cfg.voltage_thd_pct * self.jitter()
            } else {
                nan
            },
            current_thd_pct: ithd,
            flux_lm: flux,
            radiant_flux_w: radiant,
            cct_k: cct,
            duv,
            x,
            y,
            u_prime: u,
            v_prime: v,
            ra,
            r9: ri[8],
            ri,
            peak_nm: peak,
            case_temp_c: cfg.ambient_c + cfg.case_rise_c * w,
            ambient_c: cfg.ambient_c,
            spd,
        }
    }
}

/// R1..R15 of a typical phosphor-converted warm-white LED, shifted so R1..R8 average to `ra`.
fn special_indices(ra: f64, r9: f64) -> [f64; 15] {
    let mut ri = [
        80.0, 88.0, 92.0, 80.0, 79.0, 83.0, 86.0, 68.0, 8.0, 65.0, 78.0, 55.0, 81.0, 96.0, 75.0,
    ];
    let shift = ra - 82.0;
    for r in ri.iter_mut().take(8) {
        *r = (*r + shift).min(100.0);
    }
    ri[8] = r9;
    ri
}

/// A warm-white LED spectrum: a narrow blue pump peak and a broad phosphor hump, arbitrary scale.
fn spd_shape() -> Vec<f64> {
    (SPD_START_NM..=SPD_END_NM)
        .map(|nm| {
            let l = f64::from(nm);
            let blue = 0.28 * (-0.5 * ((l - 450.0) / 10.0).powi(2)).exp();
            let phosphor = (-0.5 * ((l - 605.0) / 55.0).powi(2)).exp();
            blue + phosphor
        })
        .collect()
}

/// 683 lm/W times the spectrum weighted by the photopic curve (a Gaussian fit is plenty here).
fn luminous_flux(spd: &[f64]) -> f64 {
    spd.iter()
        .enumerate()
        .map(|(i, p)| {
            let um = (f64::from(SPD_START_NM) + i as f64) / 1000.0;
            683.0 * p * 1.019 * (-285.4 * (um - 0.559).powi(2)).exp()
        })
        .sum()
}

fn peak_wavelength(spd: &[f64]) -> f64 {
    let mut best = 0;
    for (i, v) in spd.iter().enumerate() {
        if *v > spd[best] {
            best = i;
        }
    }
    f64::from(SPD_START_NM) + best as f64
}

/// CIE 1960 (u, v) of the Planckian locus (Krystek's approximation, 1000..15000 K).
fn planck_uv(t: f64) -> (f64, f64) {
    let u = (0.860117757 + 1.54118254e-4 * t + 1.28641212e-7 * t * t)
        / (1.0 + 8.42420235e-4 * t + 7.08145163e-7 * t * t);
    let v = (0.317398726 + 4.22806245e-5 * t + 4.20481691e-8 * t * t)
        / (1.0 - 2.89741816e-5 * t + 1.61456053e-7 * t * t);
    (u, v)
}

/// The point `duv` away from the locus at `t`, perpendicular to it; positive is above (greener).
fn planck_uv_with_duv(t: f64, duv: f64) -> (f64, f64) {
    let (u0, v0) = planck_uv(t);
    let (u1, v1) = planck_uv(t + 1.0);
    let (du, dv) = (u1 - u0, v1 - v0);
    let len = (du * du + dv * dv).sqrt();
    if len == 0.0 {
        return (u0, v0);
    }
    let (mut nu, mut nv) = (-dv / len, du / len);
    if nv < 0.0 {
        nu = -nu;
        nv = -nv;
    }
    (u0 + duv * nu, v0 + duv * nv)
}

/// xorshift64*: tiny, deterministic, good enough for measurement noise.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn next_signed(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> PlantConfig {
        PlantConfig {
            tau: Duration::from_secs(10),
            noise: 0.0,
            ..PlantConfig::default()
        }
    }

    #[tokio::test]
    async fn dark_until_switched_on_above_threshold() {
        let plant = Plant::new(fast());
        let s = plant.snapshot();
        assert!(!s.lit);
        assert_eq!(s.active_power_w, 0.0);
        assert!(s.power_factor.is_nan());
        assert!(s.cct_k.is_nan());
        assert_eq!(s.spd.len(), SPD_POINTS);
        plant.set_voltage(80.0);
        plant.set_output(true);
        assert!(
            !plant.lamp_lit(),
            "80 V is below the driver's start voltage"
        );
        plant.set_voltage(230.0);
        assert!(plant.lamp_lit());
    }

    #[tokio::test]
    async fn warm_up_settles_exponentially() {
        let cfg = fast();
        let plant = Plant::new(cfg.clone());
        plant.set_voltage(230.0);
        plant.set_output(true);
        let t0 = Instant::now();
        let cold = plant.snapshot_at(t0);
        let warm = plant.snapshot_at(t0 + cfg.tau * 10);
        assert!(cold.flux_lm > warm.flux_lm * 1.03, "flux starts high");
        assert!(
            cold.active_power_w < warm.active_power_w * 0.98,
            "power starts low"
        );
        assert!((warm.flux_lm - 806.0).abs() < 1.0, "{}", warm.flux_lm);
        assert!((warm.active_power_w - 9.5).abs() < 0.01);
        assert!(warm.case_temp_c > cold.case_temp_c + 30.0);
        // One tau in, about 63 % of the way.
        let mid = plant.snapshot_at(t0 + cfg.tau);
        let frac = (cold.flux_lm - mid.flux_lm) / (cold.flux_lm - warm.flux_lm);
        assert!((frac - 0.632).abs() < 0.02, "{frac}");
        // Electrical consistency: I = P / (V * PF).
        let i = warm.active_power_w / (warm.voltage_v * warm.power_factor);
        assert!((warm.current_a - i).abs() < 1e-9);
        // Spectrum integrates to the reported flux and peaks in the phosphor hump.
        assert!((luminous_flux(&warm.spd) - warm.flux_lm).abs() < 1e-6);
        assert!(warm.peak_nm > 560.0 && warm.peak_nm < 650.0);
        assert!(warm.x > 0.44 && warm.x < 0.48 && warm.y > 0.39 && warm.y < 0.43);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_drives_settling_and_cool_down() {
        let cfg = fast();
        let plant = Plant::new(cfg.clone());
        plant.set_voltage(230.0);
        plant.set_output(true);
        tokio::time::sleep(cfg.tau * 8).await;
        assert!(plant.warmth_at(Instant::now()) > 0.99);
        plant.set_output(false);
        assert_eq!(plant.snapshot().flux_lm, 0.0);
        tokio::time::sleep(cfg.tau).await;
        let w = plant.warmth_at(Instant::now());
        assert!((w - 0.368).abs() < 0.02, "{w}");
    }

    #[test]
    fn noise_is_deterministic_per_seed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let cfg = PlantConfig {
                noise: 0.01,
                ..PlantConfig::default()
            };
            let a = Plant::new(cfg.clone());
            let b = Plant::new(cfg);
            for p in [&a, &b] {
                p.set_voltage(230.0);
                p.set_output(true);
            }
            let t = Instant::now() + Duration::from_secs(1000);
            let (sa, sb) = (a.snapshot_at(t), b.snapshot_at(t));
            assert_eq!(sa.flux_lm, sb.flux_lm);
            assert_ne!(sa.flux_lm, a.snapshot_at(t).flux_lm, "noise advances");
        });
    }
}
