//! Unit compatibility and conversion for limits and expressions.
//!
//! Readings carry the driver's unit text (`V`, `mA`, `degC`). A limit written in another unit is
//! converted to the reading's unit before comparing, never compared raw; units that do not
//! convert (`degC` against `K`, `A` against `W`) are refused when the recipe is validated.

/// Base units that take SI prefixes (m, k, u, M): electrical quantities only, where instruments
/// and data sheets mix scales (mA vs A, mW/W/kW).
const PREFIXABLE: &[&str] = &["V", "A", "W", "Hz", "Wh", "VA", "var", "s"];

/// Split `unit` into (scale to base, base).
fn split(unit: &str) -> (f64, &str) {
    if PREFIXABLE.contains(&unit) {
        return (1.0, unit);
    }
    match unit {
        "min" => return (60.0, "s"),
        "h" => return (3600.0, "s"),
        _ => {}
    }
    for (prefix, scale) in [
        ("m", 1e-3),
        ("k", 1e3),
        ("u", 1e-6),
        ("µ", 1e-6),
        ("M", 1e6),
    ] {
        if let Some(base) = unit.strip_prefix(prefix)
            && PREFIXABLE.contains(&base)
        {
            return (scale, base);
        }
    }
    (1.0, unit)
}

/// Factor `f` such that a value in `from` times `f` is the same value in `to`; `None` when the
/// units do not convert.
pub fn factor(from: &str, to: &str) -> Option<f64> {
    let (a, base_a) = split(from.trim());
    let (b, base_b) = split(to.trim());
    (base_a == base_b).then_some(a / b)
}

/// `value` (in `from`) expressed in `to`.
pub fn convert(value: f64, from: &str, to: &str) -> Option<f64> {
    factor(from, to).map(|f| value * f)
}

/// Whether two units convert into each other.
pub fn compatible(a: &str, b: &str) -> bool {
    factor(a, b).is_some()
}

/// A unit as shown in messages: the empty unit is `(none)`.
pub fn shown(unit: &str) -> &str {
    if unit.is_empty() { "(none)" } else { unit }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_convert_and_families_do_not_mix() {
        assert_eq!(convert(250.0, "mA", "A"), Some(0.25));
        assert_eq!(convert(1.5, "kW", "W"), Some(1500.0));
        assert_eq!(convert(2.0, "W", "mW"), Some(2000.0));
        assert_eq!(convert(21.0, "degC", "degC"), Some(21.0));
        assert_eq!(factor("degC", "K"), None);
        assert_eq!(factor("A", "W"), None);
        assert_eq!(factor("", "%"), None);
        assert_eq!(factor("lm", "lm"), Some(1.0));
        // `K` (kelvin) is not a prefixed anything.
        assert_eq!(factor("K", "K"), Some(1.0));
        assert_eq!(factor("mK", "K"), None);
    }
}
