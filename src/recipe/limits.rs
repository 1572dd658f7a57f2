//! Limits and verdicts: a [`LimitSpec`] from a recipe becomes store [`Limits`] in the unit of
//! the value it judges, and every value gets pass, marginal or fail.

use super::expr::{Expr, Vars};
use super::schema::{LimitSpec, NumOrExpr};
use super::units;
use crate::store::{Limits, Verdict};

/// Problems with a limit's shape (not its expressions), for validation.
pub fn shape_problems(spec: &LimitSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let tolerances = [
        spec.tolerance.is_some(),
        spec.tolerance_pct.is_some(),
        spec.tolerance_ppm.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if spec.nominal.is_some() {
        if spec.min.is_some() || spec.max.is_some() {
            out.push((
                "nominal",
                "give either nominal with a tolerance or min/max, not both".to_string(),
            ));
        }
        if tolerances != 1 {
            out.push((
                "nominal",
                "nominal needs exactly one of tolerance, tolerance_pct, tolerance_ppm".to_string(),
            ));
        }
    } else if tolerances > 0 {
        out.push(("tolerance", "a tolerance needs a nominal value".to_string()));
    } else if spec.min.is_none() && spec.max.is_none() {
        out.push((
            "",
            "a limit needs min, max, or nominal with a tolerance".to_string(),
        ));
    }
    if spec.marginal.is_some() && spec.marginal_pct.is_some() {
        out.push((
            "marginal",
            "give marginal or marginal_pct, not both".to_string(),
        ));
    }
    for (key, v) in [
        ("tolerance", spec.tolerance),
        ("tolerance_pct", spec.tolerance_pct),
        ("tolerance_ppm", spec.tolerance_ppm),
        ("marginal", spec.marginal),
        ("marginal_pct", spec.marginal_pct),
    ] {
        if v.is_some_and(|v| v.is_nan() || v < 0.0) {
            out.push((key, format!("{key} must be zero or positive")));
        }
    }
    out
}

/// The expressions of a limit, by key, for validation.
pub fn expressions(spec: &LimitSpec) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    for (key, v) in [
        ("min", &spec.min),
        ("max", &spec.max),
        ("nominal", &spec.nominal),
    ] {
        if let Some(NumOrExpr::Expr(e)) = v {
            out.push((key, e.as_str()));
        }
    }
    out
}

/// Concrete limits in `value_unit`, with expressions evaluated over `vars`.
pub fn resolve(spec: &LimitSpec, value_unit: &str, vars: &Vars) -> Result<Limits, String> {
    let limit_unit = spec.unit.as_deref().unwrap_or(value_unit);
    let f = units::factor(limit_unit, value_unit).ok_or_else(|| {
        format!(
            "unit mismatch: limit in {} but the value is in {}",
            units::shown(limit_unit),
            units::shown(value_unit)
        )
    })?;
    // Expressions are evaluated in the limit's unit, then converted like plain numbers.
    let num = |v: &Option<NumOrExpr>| -> Result<Option<f64>, String> {
        match v {
            None => Ok(None),
            Some(NumOrExpr::Num(n)) => Ok(Some(n * f)),
            Some(NumOrExpr::Expr(e)) => Ok(Some(Expr::parse(e)?.eval(vars, Some(limit_unit))? * f)),
        }
    };
    let mut limits = Limits {
        min: num(&spec.min)?,
        max: num(&spec.max)?,
        ..Limits::default()
    };
    if let Some(nominal) = num(&spec.nominal)? {
        let tol = match (spec.tolerance, spec.tolerance_pct, spec.tolerance_ppm) {
            (Some(t), _, _) => t * f,
            (_, Some(p), _) => nominal.abs() * p / 100.0,
            (_, _, Some(p)) => nominal.abs() * p / 1e6,
            _ => 0.0,
        };
        limits.nominal = Some(nominal);
        limits.min = Some(nominal - tol);
        limits.max = Some(nominal + tol);
    }
    let band = match (spec.marginal, spec.marginal_pct) {
        (Some(m), _) => Some(m * f),
        (_, Some(p)) => Some(match (limits.min, limits.max) {
            (Some(lo), Some(hi)) => (hi - lo).abs() * p / 100.0,
            (Some(b), None) | (None, Some(b)) => b.abs() * p / 100.0,
            (None, None) => 0.0,
        }),
        _ => None,
    };
    if let Some(band) = band {
        limits.marginal_min = limits.min.map(|lo| lo + band);
        limits.marginal_max = limits.max.map(|hi| hi - band);
    }
    Ok(limits)
}

/// The verdict of `value` against `limits`; `None` (not judged) without limits. An invalid
/// reading (`None`) or NaN fails any limit.
pub fn verdict(value: Option<f64>, limits: &Limits) -> Option<Verdict> {
    if limits.min.is_none() && limits.max.is_none() {
        return None;
    }
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return Some(Verdict::Fail);
    };
    if limits.min.is_some_and(|lo| v < lo) || limits.max.is_some_and(|hi| v > hi) {
        return Some(Verdict::Fail);
    }
    if limits.marginal_min.is_some_and(|lo| v < lo) || limits.marginal_max.is_some_and(|hi| v > hi)
    {
        return Some(Verdict::Marginal);
    }
    Some(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::expr::Var;

    fn spec(s: &str) -> LimitSpec {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn every_limit_form_and_verdict() {
        let vars: Vars = [(
            "rated".to_string(),
            Var {
                value: 800.0,
                unit: "lm".into(),
            },
        )]
        .into_iter()
        .collect();
        let l = resolve(&spec("min = \"0.9 * rated\""), "lm", &vars).unwrap();
        assert_eq!(l.min, Some(720.0));
        assert_eq!(verdict(Some(719.0), &l), Some(Verdict::Fail));
        assert_eq!(verdict(Some(721.0), &l), Some(Verdict::Pass));

        let l = resolve(&spec("nominal = 10\ntolerance_pct = 5"), "W", &vars).unwrap();
        assert_eq!((l.min, l.max), (Some(9.5), Some(10.5)));
        let l = resolve(&spec("nominal = 10\ntolerance = 1"), "W", &vars).unwrap();
        assert_eq!((l.min, l.max), (Some(9.0), Some(11.0)));
        let l = resolve(&spec("nominal = 1000\ntolerance_ppm = 100"), "Hz", &vars).unwrap();
        assert!((l.max.unwrap() - 1000.1).abs() < 1e-9);

        let l = resolve(&spec("min = 0\nmax = 10\nmarginal_pct = 10"), "V", &vars).unwrap();
        assert_eq!(verdict(Some(0.5), &l), Some(Verdict::Marginal));
        assert_eq!(verdict(Some(5.0), &l), Some(Verdict::Pass));
        assert_eq!(verdict(Some(9.5), &l), Some(Verdict::Marginal));
        assert_eq!(verdict(Some(10.5), &l), Some(Verdict::Fail));
        assert_eq!(verdict(None, &l), Some(Verdict::Fail));

        // 300 mA max against a reading in A: converted, never compared raw.
        let l = resolve(&spec("max = 300\nunit = \"mA\""), "A", &vars).unwrap();
        assert!((l.max.unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(verdict(Some(0.25), &l), Some(Verdict::Pass));
        assert!(resolve(&spec("max = 300\nunit = \"degC\""), "A", &vars).is_err());
        assert_eq!(verdict(Some(1.0), &Limits::default()), None);
    }

    #[test]
    fn shape_problems_are_found() {
        assert!(shape_problems(&spec("nominal = 1")).len() == 1);
        assert!(shape_problems(&spec("tolerance = 1")).len() == 1);
        assert!(shape_problems(&spec("")).len() == 1);
        assert!(shape_problems(&spec("min = 1\nmarginal = -1")).len() == 1);
        assert!(shape_problems(&spec("min = 1\nmax = 2")).is_empty());
    }
}
