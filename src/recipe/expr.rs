//! Recipe expressions (`flux / power`, `0.9 * rated_flux`) with units.
//!
//! The evalexpr crate parses; labgate walks its operator tree to evaluate the numeric subset with
//! units, so the same walk that infers an expression's unit before the run converts values while
//! it runs: `current_ma + current_a` adds 0.25 A to 0.1 A, never 250 to 0.1. The rules (what
//! `+`, `*`, `^` and each function do to units) are in docs/recipes.md ("Units").
//!
//! Variables are numbers with units: parameters, earlier measurements and computed values, and a
//! sweep's current value. All arithmetic is in f64, so `1/2` is 0.5.

use std::collections::BTreeMap;

use evalexpr::{DefaultNumericTypes, Node, Operator, Value as EValue};

use super::units::{self, Unit};

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

/// The unit of a (sub)expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// Literals only: a bare number takes the unit of what it is added to or compared with
    /// (`temperature - 0.5`), and is a plain factor in a product (`0.9 * rated_flux`).
    Free,
    /// The result of a comparison or logic operator.
    Bool,
    Of(Unit),
}

impl Dim {
    /// The unit as shown in messages.
    pub fn shown(&self) -> String {
        match self {
            Dim::Free => "a plain number".to_string(),
            Dim::Bool => "true/false".to_string(),
            Dim::Of(u) => u.to_string(),
        }
    }

    /// Booleans count as plain ratios (0 or 1) in arithmetic.
    fn unit(&self) -> Option<Unit> {
        match self {
            Dim::Free => None,
            Dim::Bool => Some(Unit::one()),
            Dim::Of(u) => Some(u.clone()),
        }
    }
}

/// A value with its unit.
#[derive(Debug, Clone)]
struct Q {
    v: f64,
    d: Dim,
}

/// The `what` of [`Expr::check`] for a step's declared unit.
pub const DECLARES: &str = "the step declares";

/// Functions with a unit rule, as shown in messages.
const FUNCTIONS: &str = "min, max, if, math::abs, floor, round, ceil, math::sqrt, math::hypot, \
                         math::pow, math::ln, math::log, math::log2, math::log10, math::exp, \
                         math::exp2, math::sin, math::cos, math::tan, math::is_nan, math::is_finite";

/// An expression's value for an `int` argument: a whole number, or why not. Rounding silently
/// would turn a computed 2.5 into position 3 of a relay rack; an int argument can pick an
/// address, so a fraction is an error in the recipe, not something to guess at. Binary noise
/// (3 * 0.1 * 10 = 3.0000000000000004) is not a fraction.
pub fn whole_number(x: f64) -> Result<i64, String> {
    let r = x.round();
    // i64 bounds as f64: -2^63 is exact, 2^63 is the first value past the top.
    let fits = (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r);
    if x.is_finite() && fits && (x - r).abs() <= 1e-9 * r.abs().max(1.0) {
        Ok(r as i64)
    } else {
        Err(format!(
            "gives {x}, not a whole number (the argument is an int)"
        ))
    }
}

#[cfg(test)]
mod whole_number_tests {
    use super::whole_number;

    #[test]
    fn fractions_are_refused_and_binary_noise_is_not_a_fraction() {
        assert_eq!(whole_number(5.0), Ok(5));
        assert_eq!(whole_number(-3.0), Ok(-3));
        assert_eq!(whole_number(3.0 * 0.1 * 10.0), Ok(3));
        for bad in [2.5, 16.4, f64::NAN, f64::INFINITY, 1e19] {
            let e = whole_number(bad).unwrap_err();
            assert!(e.contains("not a whole number"), "{bad}: {e}");
        }
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

    /// Evaluate to a number. With `target` set the result is converted into that unit (a bare
    /// number is taken to be in it already); without, it is in the expression's own unit.
    pub fn eval(&self, vars: &Vars, target: Option<&str>) -> Result<f64, String> {
        let lookup = |name: &str| {
            vars.get(name)
                .map(|v| (v.value, Unit::lenient(&v.unit)))
                .ok_or_else(|| format!("`{name}` has no value yet"))
        };
        let q = walk(&self.node, &lookup).map_err(|m| format!("`{}`: {m}", self.text))?;
        match target {
            None => Ok(q.v),
            Some(t) => {
                let t = Unit::lenient(t);
                into(&q, &t)
                    .map_err(|(from, to)| {
                        format!("`{}`: the result is in {from}, not in {to}", self.text)
                    })
                    .map(|f| q.v * f)
            }
        }
    }

    /// The expression's unit, given the units of the variables in scope.
    pub fn infer(&self, scope: &BTreeMap<String, String>) -> Result<Dim, String> {
        let lookup = |name: &str| {
            scope
                .get(name)
                .map(|u| (1.0, Unit::lenient(u)))
                .ok_or_else(|| format!("unknown variable `{name}`"))
        };
        walk(&self.node, &lookup).map(|q| q.d)
    }

    /// Check the variables against what will be in scope and the units of every operation, and,
    /// for an expression compared with (or stored as) a value in unit `target`, that its unit
    /// converts to it. `what` leads to the target unit in messages ("the value compared is in").
    pub fn check(
        &self,
        scope: &BTreeMap<String, String>,
        target: Option<&str>,
        what: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for name in self.variables() {
            if !scope.contains_key(&name) {
                let known: Vec<&str> = scope.keys().map(String::as_str).collect();
                problems.push(format!(
                    "`{}`: unknown variable `{name}`{}",
                    self.text,
                    crate::diag::suggest_or_list(&name, &known)
                ));
            }
        }
        if !problems.is_empty() {
            return problems;
        }
        let dim = match self.infer(scope) {
            Ok(d) => d,
            Err(m) => return vec![format!("`{}`: {m}", self.text)],
        };
        let Some(t) = target else {
            return problems;
        };
        let tu = match Unit::parse(t) {
            Ok(u) => u,
            // The unit itself is reported where it is written.
            Err(_) => return problems,
        };
        let q = Q { v: 0.0, d: dim };
        if into(&q, &tu).is_err() {
            // A compute or check without `unit` is dimensionless: say what to declare.
            let hint = match &q.d {
                Dim::Of(u) if t.trim().is_empty() && what == DECLARES => {
                    format!(" (declare `unit = \"{u}\"`)")
                }
                _ => String::new(),
            };
            problems.push(format!(
                "`{}`: unit mismatch: the expression is in {} but {what} {}{hint}",
                self.text,
                q.d.shown(),
                units::shown(t)
            ));
        } else if let Some(n) = self.premultiplied(&q.d, &tu) {
            problems.push(format!(
                "`{}`: the expression is a plain ratio already multiplied by {n}, and a ratio \
                 converts to {t} by itself: drop the `{n} *` (or the result is {n} times too large)",
                self.text
            ));
        }
        problems
    }

    /// `100 * a / b` declared in % would be scaled twice: the factor, if the expression is
    /// a dimensionless ratio written that way for a target in % or ppm.
    fn premultiplied(&self, d: &Dim, target: &Unit) -> Option<&'static str> {
        let Dim::Of(u) = d else { return None };
        if !(u.is_dimensionless() && u.scale == 1.0 && target.is_dimensionless()) {
            return None;
        }
        let n: f64 = if target.scale == 0.01 {
            100.0
        } else if target.scale == 1e-6 {
            1e6
        } else {
            return None;
        };
        // Only the outermost product: `100 * x / y` parses as Div(Mul(100, x), y).
        let mut node = unwrap_root(&self.node);
        loop {
            match node.operator() {
                Operator::Div => node = unwrap_root(&node.children()[0]),
                Operator::Mul => {
                    let hit = node.children().iter().any(|c| {
                        matches!(unwrap_root(c).operator(), Operator::Const { value } if num(value) == Some(n))
                    });
                    return hit.then_some(if n == 100.0 { "100" } else { "1000000" });
                }
                _ => return None,
            }
        }
    }
}

fn unwrap_root(mut n: &Node<DefaultNumericTypes>) -> &Node<DefaultNumericTypes> {
    while matches!(n.operator(), Operator::RootNode) && n.children().len() == 1 {
        n = &n.children()[0];
    }
    n
}

fn num(v: &EValue<DefaultNumericTypes>) -> Option<f64> {
    match v {
        EValue::Float(f) => Some(*f),
        EValue::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// The factor that takes `q` into `target`, or both units for the message.
fn into(q: &Q, target: &Unit) -> Result<f64, (String, String)> {
    match &q.d {
        Dim::Free => Ok(1.0),
        Dim::Bool if target.is_dimensionless() => Ok(1.0 / target.scale),
        Dim::Bool => Err((q.d.shown(), target.to_string())),
        Dim::Of(u) => u
            .factor_to(target)
            .ok_or_else(|| (u.to_string(), target.to_string())),
    }
}

type Lookup<'a> = dyn Fn(&str) -> Result<(f64, Unit), String> + 'a;

/// Evaluate `node` with units; inference is the same walk over placeholder values.
fn walk(node: &Node<DefaultNumericTypes>, var: &Lookup<'_>) -> Result<Q, String> {
    let kids = node.children();
    let arg = |i: usize| walk(&kids[i], var);
    match node.operator() {
        Operator::RootNode => match kids {
            [one] => walk(one, var),
            [] => Err("the expression is empty".to_string()),
            _ => Err("several values where one is expected".to_string()),
        },
        Operator::Const { value } => match value {
            EValue::Boolean(b) => Ok(Q {
                v: f64::from(u8::from(*b)),
                d: Dim::Bool,
            }),
            other => num(other)
                .map(|v| Q { v, d: Dim::Free })
                .ok_or_else(|| format!("`{other}` is not a number")),
        },
        Operator::VariableIdentifierRead { identifier } => {
            let (v, u) = var(identifier)?;
            Ok(Q { v, d: Dim::Of(u) })
        }
        Operator::Add | Operator::Sub | Operator::Mod => {
            let (a, b) = (arg(0)?, arg(1)?);
            let op = match node.operator() {
                Operator::Add => "add",
                Operator::Sub => "subtract",
                _ => "take the remainder of",
            };
            let (x, y, d) = same(&a, &b, op)?;
            let v = match node.operator() {
                Operator::Add => x + y,
                Operator::Sub => x - y,
                _ => x % y,
            };
            Ok(Q { v, d })
        }
        Operator::Neg => {
            let a = arg(0)?;
            Ok(Q { v: -a.v, d: a.d })
        }
        Operator::Mul | Operator::Div => {
            let (a, b) = (arg(0)?, arg(1)?);
            let mul = matches!(node.operator(), Operator::Mul);
            let v = if mul { a.v * b.v } else { a.v / b.v };
            let d = match (a.d.unit(), b.d.unit()) {
                (None, None) => Dim::Free,
                (Some(u), None) => Dim::Of(u),
                (None, Some(u)) if mul => Dim::Of(u),
                (None, Some(u)) => Dim::Of(Unit::one().div(&u)),
                (Some(x), Some(y)) if mul => Dim::Of(x.mul(&y)),
                (Some(x), Some(y)) => Dim::Of(x.div(&y)),
            };
            Ok(Q { v, d })
        }
        Operator::Exp => power(&arg(0)?, &arg(1)?),
        Operator::Eq
        | Operator::Neq
        | Operator::Gt
        | Operator::Lt
        | Operator::Geq
        | Operator::Leq => {
            let (a, b) = (arg(0)?, arg(1)?);
            let (x, y, _) = same(&a, &b, "compare")?;
            let t = match node.operator() {
                Operator::Eq => x == y,
                Operator::Neq => x != y,
                Operator::Gt => x > y,
                Operator::Lt => x < y,
                Operator::Geq => x >= y,
                _ => x <= y,
            };
            Ok(boolean(t))
        }
        Operator::And | Operator::Or => {
            let (a, b) = (arg(0)?, arg(1)?);
            let t = if matches!(node.operator(), Operator::And) {
                a.v != 0.0 && b.v != 0.0
            } else {
                a.v != 0.0 || b.v != 0.0
            };
            Ok(boolean(t))
        }
        Operator::Not => Ok(boolean(arg(0)?.v == 0.0)),
        Operator::FunctionIdentifier { identifier } => {
            let args = match kids {
                [one] => tuple(one),
                _ => Vec::new(),
            };
            let args: Vec<Q> = args
                .into_iter()
                .map(|n| walk(n, var))
                .collect::<Result<_, _>>()?;
            function(identifier, &args)
        }
        Operator::Tuple => Err("a list of values where one number is expected".to_string()),
        Operator::Chain
        | Operator::Assign
        | Operator::AddAssign
        | Operator::SubAssign
        | Operator::MulAssign
        | Operator::DivAssign
        | Operator::ModAssign
        | Operator::ExpAssign
        | Operator::AndAssign
        | Operator::OrAssign
        | Operator::VariableIdentifierWrite { .. } => {
            Err("`;` and assignments have no place in a recipe expression".to_string())
        }
    }
}

/// A function's arguments: `f(a, b)` has a tuple below its (parenthesis) root node.
fn tuple(n: &Node<DefaultNumericTypes>) -> Vec<&Node<DefaultNumericTypes>> {
    let n = unwrap_root(n);
    match n.operator() {
        Operator::Tuple => n.children().iter().collect(),
        Operator::RootNode if n.children().is_empty() => Vec::new(),
        _ => vec![n],
    }
}

fn boolean(t: bool) -> Q {
    Q {
        v: f64::from(u8::from(t)),
        d: Dim::Bool,
    }
}

/// Two operands that must share a unit (`+`, `-`, comparisons, `min`): both values in the first
/// operand's unit (or the second's, if the first is a bare number), and that unit.
fn same(a: &Q, b: &Q, op: &str) -> Result<(f64, f64, Dim), String> {
    match (a.d.unit(), b.d.unit()) {
        (None, None) => Ok((a.v, b.v, Dim::Free)),
        (Some(_), None) => Ok((a.v, b.v, a.d.clone())),
        (None, Some(_)) => Ok((a.v, b.v, b.d.clone())),
        (Some(x), Some(y)) => match y.factor_to(&x) {
            Some(f) => Ok((a.v, b.v * f, a.d.clone())),
            None => Err(format!(
                "cannot {op} {} and {}: the units do not convert",
                a.d.shown(),
                b.d.shown()
            )),
        },
    }
}

/// A dimensionless value in scale 1 (`%` becomes a fraction), for `ln`, `exp` and the like.
fn ratio(q: &Q, f: &str) -> Result<f64, String> {
    match q.d.unit() {
        None => Ok(q.v),
        Some(u) if u.is_dimensionless() => Ok(q.v * u.scale),
        Some(_) => Err(format!(
            "`{f}` needs a plain ratio, not a value in {}",
            q.d.shown()
        )),
    }
}

fn power(base: &Q, exp: &Q) -> Result<Q, String> {
    match base.d.unit() {
        None => Ok(Q {
            v: base.v.powf(ratio(exp, "^")?),
            d: if exp.d == Dim::Free {
                Dim::Free
            } else {
                Dim::Of(Unit::one())
            },
        }),
        Some(u) if u.is_dimensionless() => Ok(Q {
            v: (base.v * u.scale).powf(ratio(exp, "^")?),
            d: Dim::Of(Unit::one()),
        }),
        Some(u) => {
            // The exponent decides the unit, so it must be known before the run: a literal.
            if exp.d != Dim::Free || exp.v.fract() != 0.0 || exp.v.abs() > 64.0 {
                return Err(format!(
                    "a value in {u} can only be raised to a whole-number literal power \
                     (use math::sqrt for a square root)"
                ));
            }
            let n = exp.v as i32;
            Ok(Q {
                v: base.v.powi(n),
                d: Dim::Of(u.powi(n)),
            })
        }
    }
}

fn arity(f: &str, args: &[Q], n: usize) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!("`{f}` takes {n} argument(s), not {}", args.len()))
    }
}

/// A function call with its unit rule (documented in docs/recipes.md).
fn function(f: &str, args: &[Q]) -> Result<Q, String> {
    match f {
        "min" | "max" => {
            let Some(first) = args.first() else {
                return Err(format!("`{f}` needs at least one argument"));
            };
            let mut acc = first.clone();
            for b in &args[1..] {
                let (x, y, d) = same(&acc, b, "compare")?;
                let v = if f == "min" { x.min(y) } else { x.max(y) };
                acc = Q { v, d };
            }
            Ok(acc)
        }
        "if" => {
            arity(f, args, 3)?;
            let (x, y, d) = same(&args[1], &args[2], "choose between")?;
            Ok(Q {
                v: if args[0].v != 0.0 { x } else { y },
                d,
            })
        }
        "math::abs" | "floor" | "round" | "ceil" => {
            arity(f, args, 1)?;
            let a = &args[0];
            let v = match f {
                "math::abs" => a.v.abs(),
                "floor" => a.v.floor(),
                "round" => a.v.round(),
                _ => a.v.ceil(),
            };
            Ok(Q { v, d: a.d.clone() })
        }
        "math::sqrt" => {
            arity(f, args, 1)?;
            let a = &args[0];
            let d = match a.d.unit() {
                None => Dim::Free,
                Some(u) => Dim::Of(u.sqrt().ok_or_else(|| {
                    format!("`math::sqrt` of a value in {u}, which has no square root unit")
                })?),
            };
            Ok(Q { v: a.v.sqrt(), d })
        }
        "math::hypot" => {
            arity(f, args, 2)?;
            let (x, y, d) = same(&args[0], &args[1], "combine")?;
            Ok(Q { v: x.hypot(y), d })
        }
        "math::pow" => {
            arity(f, args, 2)?;
            power(&args[0], &args[1])
        }
        "math::ln" | "math::log2" | "math::log10" | "math::exp" | "math::exp2" | "math::sin"
        | "math::cos" | "math::tan" => {
            arity(f, args, 1)?;
            let x = ratio(&args[0], f)?;
            let v = match f {
                "math::ln" => x.ln(),
                "math::log2" => x.log2(),
                "math::log10" => x.log10(),
                "math::exp" => x.exp(),
                "math::exp2" => x.exp2(),
                "math::sin" => x.sin(),
                "math::cos" => x.cos(),
                _ => x.tan(),
            };
            let d = if args[0].d == Dim::Free {
                Dim::Free
            } else {
                Dim::Of(Unit::one())
            };
            Ok(Q { v, d })
        }
        "math::log" => {
            arity(f, args, 2)?;
            let (x, b) = (ratio(&args[0], f)?, ratio(&args[1], f)?);
            Ok(Q {
                v: x.log(b),
                d: Dim::Of(Unit::one()),
            })
        }
        "math::is_nan" | "math::is_finite" => {
            arity(f, args, 1)?;
            let v = args[0].v;
            Ok(boolean(if f == "math::is_nan" {
                v.is_nan()
            } else {
                v.is_finite()
            }))
        }
        _ => Err(format!(
            "function `{f}` has no unit rule (recipes may use: {FUNCTIONS})"
        )),
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

    fn scope(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn eval(text: &str, v: &[(&str, f64, &str)], target: Option<&str>) -> f64 {
        Expr::parse(text).unwrap().eval(&vars(v), target).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn evaluates_with_float_division_and_conversion() {
        let v = [("flux", 800.0, "lm"), ("power", 10.0, "W")];
        assert_eq!(eval("flux / power", &v, None), 80.0);
        assert_eq!(eval("flux / power", &v, Some("lm/W")), 80.0);
        assert!(close(eval("flux / power", &v, Some("lm/mW")), 0.08));
        assert_eq!(eval("1 / 2", &[], None), 0.5);
        assert!(close(
            eval("0.9 * rated", &[("rated", 500.0, "mA")], Some("A")),
            0.45
        ));
        // mA + A is converted, never added raw: the result is in the first operand's unit.
        let v = [("a", 250.0, "mA"), ("b", 0.1, "A")];
        assert!(close(eval("a + b", &v, None), 350.0));
        assert!(close(eval("a + b", &v, Some("A")), 0.35));
        assert!(close(eval("b + a", &v, None), 0.35));
        assert_eq!(eval("a > b", &v, None), 1.0);
        assert!(close(eval("max(b, a)", &v, Some("mA")), 250.0));
        // A bare number takes the unit it meets.
        let t = [("t", 25.2, "degC"), ("sp", 25.0, "degC")];
        assert_eq!(eval("math::abs(t - sp) <= 0.5", &t, None), 1.0);
        assert_eq!(eval("if(t > 30, 1, 0)", &t, None), 0.0);
        // A ratio in %.
        let p = [("p", 10.5, "W"), ("rated", 10.0, "W")];
        assert!(close(eval("p / rated", &p, Some("%")), 105.0));
        assert!(close(eval("p / rated - 1", &p, Some("%")), 5.0));
        assert!(close(
            eval("math::sqrt(a * a)", &[("a", 3.0, "mA")], Some("mA")),
            3.0
        ));
        assert!(close(eval("x ^ 2", &[("x", 2.0, "V")], Some("V^2")), 4.0));
        assert!(close(
            eval("15 * m", &[("m", 2.0, "min")], Some("s")),
            1800.0
        ));
        assert!(
            Expr::parse("a + b")
                .unwrap()
                .eval(&vars(&[("a", 1.0, "A")]), None)
                .unwrap_err()
                .contains("`b` has no value yet")
        );
    }

    #[test]
    fn infers_units_and_reports_mismatches() {
        let s = scope(&[
            ("flux", "lm"),
            ("power", "W"),
            ("apparent", "VA"),
            ("rated_flux", "lm"),
            ("i", "mA"),
            ("t", "degC"),
            ("cct", "K"),
        ]);
        let infer = |t: &str| Expr::parse(t).unwrap().infer(&s);
        let unit = |t: &str| match infer(t).unwrap() {
            Dim::Of(u) => u,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(
            unit("flux / power").factor_to(&Unit::parse("lm/W").unwrap()),
            Some(1.0)
        );
        assert!(unit("power / apparent").is_dimensionless());
        assert_eq!(infer("2 * 3").unwrap(), Dim::Free);
        assert_eq!(infer("t > 20").unwrap(), Dim::Bool);
        let err = infer("flux + power").unwrap_err();
        assert!(err.contains("lm") && err.contains("W"), "{err}");
        assert!(infer("t - cct").unwrap_err().contains("degC"));
        assert!(infer("power ^ flux").is_err());
        assert!(infer("math::sqrt(power)").is_err());
        assert!(infer("math::ln(power)").is_err());
        assert!(
            infer("str::len(power)")
                .unwrap_err()
                .contains("no unit rule")
        );
        assert!(infer("a = 1").is_err());

        let check =
            |t: &str, target: &str| Expr::parse(t).unwrap().check(&s, Some(target), DECLARES);
        assert!(check("flux / power", "lm/W").is_empty());
        assert!(check("0.9 * rated_flux", "lm").is_empty());
        assert!(check("i", "A").is_empty());
        assert!(check("power / apparent", "%").is_empty());
        let p = check("0.9 * rated_flux + power", "lm");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("cannot add lm and W"), "{p:?}");
        let p = check("flux / power", "%");
        assert!(
            p[0].contains("unit mismatch") && p[0].contains("lm/W") && p[0].contains('%'),
            "{p:?}"
        );
        let p = check("100 * power / apparent", "%");
        assert!(p[0].contains("drop the `100 *`"), "{p:?}");
        let p = check("flux / power", "");
        assert!(
            p[0].ends_with("but the step declares (none) (declare `unit = \"lm/W\"`)"),
            "{p:?}"
        );
        let p = check("0.9 * rated_flx", "lm");
        assert!(
            p[0].contains("unknown variable `rated_flx`") && p[0].contains("rated_flux"),
            "{p:?}"
        );
        assert!(Expr::parse("(1 + 2").is_err());
    }
}
