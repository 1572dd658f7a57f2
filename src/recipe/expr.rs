//! Recipe expressions (`flux / power`, `0.9 * rated_flux`) on the evalexpr crate.
//!
//! Variables are numbers with units: parameters, earlier measurements and computed values, and a
//! sweep's current value. Every variable enters as a float, so `/` never truncates (evalexpr
//! divides integers as integers; literals like `1/2` still do, see docs/recipes.md).

use std::collections::BTreeMap;

use evalexpr::{
    ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node, Value as EValue,
};

use super::units;

/// A value an expression can refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct Var {
    pub value: f64,
    pub unit: String,
}

/// The variables in scope, by name.
pub type Vars = BTreeMap<String, Var>;

/// A parsed expression.
#[derive(Debug, Clone)]
pub struct Expr {
    pub text: String,
    node: Node<DefaultNumericTypes>,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Expr {
    /// Parse `text`; the error is evalexpr's message, lowercased at the start.
    pub fn parse(text: &str) -> Result<Expr, String> {
        evalexpr::build_operator_tree::<DefaultNumericTypes>(text)
            .map(|node| Expr {
                text: text.to_string(),
                node,
            })
            .map_err(|e| format!("bad expression `{text}`: {}", lower_first(&e.to_string())))
    }

    /// The variables the expression reads, each once, in order of appearance.
    pub fn variables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in self.node.iter_read_variable_identifiers() {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
        out
    }

    /// Evaluate to a number. With `target` set, variables in a unit convertible to it are
    /// converted to it first, so `0.9 * rated_current` works with mA and A alike.
    pub fn eval(&self, vars: &Vars, target: Option<&str>) -> Result<f64, String> {
        let mut cx = HashMapContext::<DefaultNumericTypes>::new();
        for name in self.variables() {
            let Some(var) = vars.get(&name) else {
                return Err(format!("`{}`: `{name}` has no value yet", self.text));
            };
            let value = match target {
                Some(t) => units::convert(var.value, &var.unit, t).unwrap_or(var.value),
                None => var.value,
            };
            cx.set_value(name.clone(), EValue::Float(value))
                .map_err(|e| format!("`{}`: {e}", self.text))?;
        }
        match self.node.eval_with_context(&cx) {
            Ok(EValue::Float(f)) => Ok(f),
            Ok(EValue::Int(i)) => Ok(i as f64),
            Ok(EValue::Boolean(b)) => Ok(if b { 1.0 } else { 0.0 }),
            Ok(other) => Err(format!("`{}` is not a number: {other}", self.text)),
            Err(e) => Err(format!("`{}`: {}", self.text, lower_first(&e.to_string()))),
        }
    }

    /// Check the variables against what will be in scope, and, for an expression compared with
    /// a value in unit `target`, that every variable with a unit converts to it.
    pub fn check(&self, scope: &BTreeMap<String, String>, target: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        for name in self.variables() {
            match scope.get(&name) {
                None => {
                    let known: Vec<&str> = scope.keys().map(String::as_str).collect();
                    problems.push(format!(
                        "`{}`: unknown variable `{name}`{}",
                        self.text,
                        crate::diag::suggest_or_list(&name, &known)
                    ));
                }
                Some(unit) => {
                    if let Some(t) = target
                        && !unit.is_empty()
                        && !units::compatible(unit, t)
                    {
                        problems.push(format!(
                            "`{}`: unit mismatch: `{name}` is in {} but the value compared is in {}",
                            self.text,
                            units::shown(unit),
                            units::shown(t)
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// evalexpr's messages start capitalized and end with a dot; ours do neither.
fn lower_first(s: &str) -> String {
    let s = s.trim_end_matches('.');
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, f64, &str)]) -> Vars {
        list.iter()
            .map(|(n, v, u)| {
                (
                    n.to_string(),
                    Var {
                        value: *v,
                        unit: u.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn evaluates_with_float_division_and_conversion() {
        let e = Expr::parse("flux / power").unwrap();
        let v = vars(&[("flux", 800.0, "lm"), ("power", 10.0, "W")]);
        assert_eq!(e.eval(&v, None).unwrap(), 80.0);
        let e = Expr::parse("0.9 * rated").unwrap();
        let v = vars(&[("rated", 500.0, "mA")]);
        assert!((e.eval(&v, Some("A")).unwrap() - 0.45).abs() < 1e-12);
        assert_eq!(e.variables(), vec!["rated".to_string()]);
    }

    #[test]
    fn reports_unknown_variables_and_units() {
        let e = Expr::parse("0.9 * rated_flux + power").unwrap();
        let scope: BTreeMap<String, String> = [("rated_flux", "lm"), ("power", "W")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let p = e.check(&scope, Some("lm"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("unit mismatch"), "{p:?}");
        assert!(Expr::parse("(1 + 2").is_err());
    }
}
