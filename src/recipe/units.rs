//! Units with dimensions: parsing, conversion and the algebra expressions need.
//!
//! Readings carry the driver's unit text (`V`, `mA`, `degC`, `W/nm`). A unit is parsed into a
//! scale and exponents over a few base dimensions, so that `mA` converts to `A`, `lm/W` is what
//! `flux / power` gives, and `W / VA` (a power factor) is dimensionless. A limit or expression in
//! another unit is converted, never compared raw; units whose dimensions differ (`degC` against
//! `K`, `A` against `W`) do not convert and are refused when the recipe is validated. The rules
//! are documented in docs/recipes.md ("Units").

use std::collections::BTreeMap;
use std::fmt;

/// A parsed unit: `value_in_unit * scale` is the value in the coherent base units.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub scale: f64,
    /// Exponent per base dimension; zero exponents are never stored.
    pub dims: BTreeMap<String, i32>,
    /// How the unit is shown: the text it was written as, or a composition (`lm/W`).
    pub text: String,
}

/// Prefixes for the units in [`PREFIXABLE`].
const PREFIXES: &[(&str, f64)] = &[
    ("n", 1e-9),
    ("u", 1e-6),
    ("µ", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
];

/// A named unit: (name, scale to the base units, base dimensions with their powers).
type Named = (&'static str, f64, &'static [(&'static str, i32)]);

/// Units that take SI prefixes, as (name, scale, base dimensions). W, VA and var are all V*A:
/// they are distinct quantities but one dimension, which is what makes `power / apparent_power`
/// a plain ratio.
const PREFIXABLE: &[Named] = &[
    ("V", 1.0, &[("V", 1)]),
    ("A", 1.0, &[("A", 1)]),
    ("W", 1.0, &[("V", 1), ("A", 1)]),
    ("VA", 1.0, &[("V", 1), ("A", 1)]),
    ("var", 1.0, &[("V", 1), ("A", 1)]),
    ("Wh", 3600.0, &[("V", 1), ("A", 1), ("s", 1)]),
    ("Hz", 1.0, &[("s", -1)]),
    ("s", 1.0, &[("s", 1)]),
    ("lm", 1.0, &[("lm", 1)]),
    ("cd", 1.0, &[("cd", 1)]),
    ("lx", 1.0, &[("lm", 1), ("m", -2)]),
    ("m", 1.0, &[("m", 1)]),
];

/// Units without prefixes. `K` is kelvin (colour temperature here), not a prefix of anything;
/// `degC` is its own dimension: it never converts to `K`, so the 273.15 offset never matters and
/// a difference of two `degC` values (a band, a rise) is in `degC` too.
const FIXED: &[Named] = &[
    ("%", 0.01, &[]),
    ("ppm", 1e-6, &[]),
    ("min", 60.0, &[("s", 1)]),
    ("h", 3600.0, &[("s", 1)]),
    ("K", 1.0, &[("K", 1)]),
    ("degC", 1.0, &[("degC", 1)]),
    ("°C", 1.0, &[("degC", 1)]),
    ("delta-degC", 1.0, &[("degC", 1)]),
];

impl Unit {
    /// The dimensionless unit `""` (scale 1).
    pub fn one() -> Unit {
        Unit {
            scale: 1.0,
            dims: BTreeMap::new(),
            text: String::new(),
        }
    }

    /// Parse a unit: names (`V`, `mA`, `degC`, `%`), products and quotients (`lm/W`, `V*A`,
    /// `W/m^2`), `1/s`. Names we do not know are their own dimension (they convert only to
    /// themselves).
    pub fn parse(text: &str) -> Result<Unit, String> {
        let text = text.trim();
        let mut unit = Unit::one();
        if text.is_empty() {
            return Ok(unit);
        }
        let mut sign = 1;
        let mut rest = text;
        loop {
            let end = rest.find(['*', '/']).unwrap_or(rest.len());
            let term = rest[..end].trim();
            let (name, power) = match term.split_once('^') {
                Some((n, p)) => match p.trim().parse::<i32>() {
                    Ok(p) if p != 0 => (n.trim(), p),
                    _ => return Err(format!("bad unit `{text}`: `{p}` is not a whole power")),
                },
                None => (term, 1),
            };
            if name.is_empty() {
                return Err(format!("bad unit `{text}`: a term is missing"));
            }
            if name != "1" {
                unit = unit.mul(&atom(name).powi(sign * power));
            }
            if end == rest.len() {
                break;
            }
            sign = if rest[end..].starts_with('/') { -1 } else { 1 };
            rest = &rest[end + 1..];
        }
        unit.text = text.to_string();
        Ok(unit)
    }

    /// Parse, and take text that does not parse as a dimension of its own: a reading's unit comes
    /// from a driver file and must not stop an expression from being evaluated.
    pub fn lenient(text: &str) -> Unit {
        Unit::parse(text).unwrap_or_else(|_| opaque(text.trim()))
    }

    pub fn is_dimensionless(&self) -> bool {
        self.dims.is_empty()
    }

    /// Factor `f` such that a value in `self` times `f` is the value in `to`; `None` when the
    /// dimensions differ.
    pub fn factor_to(&self, to: &Unit) -> Option<f64> {
        (self.dims == to.dims).then(|| self.scale / to.scale)
    }

    pub fn mul(&self, other: &Unit) -> Unit {
        let mut dims = self.dims.clone();
        for (d, e) in &other.dims {
            *dims.entry(d.clone()).or_insert(0) += e;
        }
        dims.retain(|_, e| *e != 0);
        Unit {
            scale: self.scale * other.scale,
            dims,
            text: compose(&self.text, "*", &other.text),
        }
    }

    pub fn div(&self, other: &Unit) -> Unit {
        let mut u = self.mul(&other.powi(-1));
        u.text = compose(&self.text, "/", &other.text);
        u
    }

    pub fn powi(&self, n: i32) -> Unit {
        let text = match n {
            1 => self.text.clone(),
            -1 if self.text.is_empty() => String::new(),
            -1 => format!("1/{}", paren(&self.text)),
            _ if self.text.is_empty() => String::new(),
            _ => format!("{}^{n}", paren(&self.text)),
        };
        Unit {
            scale: self.scale.powi(n),
            dims: self
                .dims
                .iter()
                .map(|(d, e)| (d.clone(), e * n))
                .filter(|(_, e)| *e != 0)
                .collect(),
            text,
        }
    }

    /// The square root, when every exponent is even.
    pub fn sqrt(&self) -> Option<Unit> {
        if self.dims.values().any(|e| e % 2 != 0) {
            return None;
        }
        Some(Unit {
            scale: self.scale.sqrt(),
            dims: self.dims.iter().map(|(d, e)| (d.clone(), e / 2)).collect(),
            text: if self.text.is_empty() {
                String::new()
            } else {
                format!("sqrt({})", self.text)
            },
        })
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(shown(&self.text))
    }
}

fn paren(t: &str) -> String {
    if t.contains(['*', '/', '^']) {
        format!("({t})")
    } else {
        t.to_string()
    }
}

fn compose(a: &str, op: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty(), op) {
        (_, true, _) => a.to_string(),
        (true, false, "*") => b.to_string(),
        (true, false, _) => format!("1/{}", paren(b)),
        (false, false, "*") => format!("{}*{}", paren_div(a), paren_div(b)),
        (false, false, _) => format!("{}/{}", paren_div(a), paren(b)),
    }
}

/// `lm/W*h` would read wrongly: a quotient inside a product or numerator gets parentheses.
fn paren_div(t: &str) -> String {
    if t.contains('/') {
        format!("({t})")
    } else {
        t.to_string()
    }
}

fn opaque(name: &str) -> Unit {
    Unit {
        scale: 1.0,
        dims: [(name.to_string(), 1)].into_iter().collect(),
        text: name.to_string(),
    }
}

fn from_table(name: &str, scale: f64, dims: &[(&str, i32)]) -> Unit {
    Unit {
        scale,
        dims: dims.iter().map(|(d, e)| (d.to_string(), *e)).collect(),
        text: name.to_string(),
    }
}

/// One unit name, prefix included.
fn atom(name: &str) -> Unit {
    let find = |table: &[Named], n: &str| {
        table
            .iter()
            .find(|(t, ..)| *t == n)
            .map(|(_, s, d)| from_table(n, *s, d))
    };
    if let Some(u) = find(FIXED, name).or_else(|| find(PREFIXABLE, name)) {
        return u;
    }
    for (prefix, scale) in PREFIXES {
        if let Some(base) = name.strip_prefix(prefix)
            && let Some(mut u) = find(PREFIXABLE, base)
        {
            u.scale *= scale;
            u.text = name.to_string();
            return u;
        }
    }
    opaque(name)
}

/// Factor `f` such that a value in `from` times `f` is the same value in `to`; `None` when the
/// units do not convert.
pub fn factor(from: &str, to: &str) -> Option<f64> {
    Unit::lenient(from).factor_to(&Unit::lenient(to))
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

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= 1e-12 * b.abs().max(1.0))
    }

    #[test]
    fn prefixes_convert_and_families_do_not_mix() {
        assert!(close(convert(250.0, "mA", "A"), 0.25));
        assert!(close(convert(1.5, "kW", "W"), 1500.0));
        assert!(close(convert(2.0, "W", "mW"), 2000.0));
        assert_eq!(convert(21.0, "degC", "degC"), Some(21.0));
        assert_eq!(factor("degC", "K"), None);
        assert_eq!(factor("A", "W"), None);
        assert_eq!(factor("lm", "lm"), Some(1.0));
        // `K` (kelvin) is not a prefixed anything.
        assert_eq!(factor("K", "K"), Some(1.0));
        assert_eq!(factor("mK", "K"), None);
        assert!(close(convert(2.0, "min", "s"), 120.0));
        assert!(close(convert(1.0, "h", "min"), 60.0));
        assert!(close(convert(1.0, "kWh", "Wh"), 1000.0));
        assert!(close(convert(550.0, "nm", "m"), 550e-9));
        assert!(close(convert(120.0, "mcd", "cd"), 0.12));
        assert_eq!(factor("delta-degC", "degC"), Some(1.0));
    }

    #[test]
    fn dimensionless_family_converts_by_scale() {
        assert!(close(convert(0.5, "", "%"), 50.0));
        assert!(close(convert(5.0, "%", "ppm"), 50_000.0));
        assert_eq!(factor("", "lm"), None);
    }

    #[test]
    fn compound_units_reduce_to_dimensions() {
        let lm_w = Unit::parse("lm/W").unwrap();
        let flux_per_power = Unit::parse("lm").unwrap().div(&Unit::parse("W").unwrap());
        assert_eq!(flux_per_power.factor_to(&lm_w), Some(1.0));
        assert_eq!(flux_per_power.to_string(), "lm/W");
        assert!(close(factor("lm/mW", "lm/W"), 1000.0));
        // V*A is W, and W/VA is a plain ratio (power factor).
        assert_eq!(factor("V*A", "W"), Some(1.0));
        let pf = Unit::parse("W").unwrap().div(&Unit::parse("VA").unwrap());
        assert!(pf.is_dimensionless());
        assert!(close(factor("1/s", "kHz"), 1e-3));
        assert!(close(factor("lm/m^2", "lx"), 1.0));
        assert_eq!(factor("W/nm", "W/nm"), Some(1.0));
        assert!(Unit::parse("V*").is_err());
        assert!(Unit::parse("m^x").is_err());
        // Unknown names are their own dimension.
        assert_eq!(factor("rpm", "rpm"), Some(1.0));
        assert_eq!(factor("rpm", "Hz"), None);
        let a2 = Unit::parse("A^2").unwrap();
        assert_eq!(
            a2.sqrt().unwrap().factor_to(&Unit::parse("A").unwrap()),
            Some(1.0)
        );
        assert!(Unit::parse("A").unwrap().sqrt().is_none());
    }
}
