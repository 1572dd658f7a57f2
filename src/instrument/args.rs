//! Typed, range-checked action arguments and SCPI command templates.
//!
//! Arguments arrive as text from the command line (`volts=230`) or as typed TOML/JSON values from
//! recipes; both go through the same checks against the driver's [`Arg`] definitions, so a value
//! the driver forbids (400 V on a 300 V source) is refused before anything reaches the wire.

use std::collections::BTreeMap;
use std::fmt;

use crate::driver::schema::{Action, Arg, ArgType};
use crate::scpi::parse::preview;

/// A checked argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    /// One of the driver's `choices`, spelled as the driver spells it.
    Enum(String),
}

impl ArgValue {
    /// The value as a number, for Modbus writes; bools are 1/0, enums have none.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ArgValue::Float(v) => Some(*v),
            ArgValue::Int(v) => Some(*v as f64),
            ArgValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            ArgValue::Enum(_) => None,
        }
    }
}

/// The number a Modbus write sends for an argument: a bool is 1/0, an enum the entry of the
/// driver's `values` that pairs with its choice. `None` for an enum without a number (the
/// loader refuses such a driver, so only a hand-built one gets here).
pub fn register_value(value: &ArgValue, def: &Arg) -> Option<f64> {
    match value {
        ArgValue::Enum(choice) => {
            let i = def.choices.iter().position(|c| c == choice)?;
            def.values.as_ref()?.get(i).copied()
        }
        other => other.as_f64(),
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Float(v) => f.write_str(&format_float(*v)),
            ArgValue::Int(v) => write!(f, "{v}"),
            ArgValue::Bool(b) => write!(f, "{b}"),
            ArgValue::Enum(s) => f.write_str(s),
        }
    }
}

/// Why an action's arguments or template were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgError {
    #[error("action {action:?}: unknown argument {arg:?} (known: {known})")]
    Unknown {
        action: String,
        arg: String,
        known: String,
    },
    #[error("action {action:?}: missing required argument {arg:?}")]
    Missing { action: String, arg: String },
    #[error("action {action:?}: argument {arg:?}: expected {expected}, got {got:?}")]
    BadValue {
        action: String,
        arg: String,
        expected: String,
        got: String,
    },
    #[error("action {action:?}: argument {arg:?} = {value}{unit} is out of range {range}")]
    OutOfRange {
        action: String,
        arg: String,
        value: f64,
        unit: String,
        range: String,
    },
    #[error("action {action:?}: argument {arg:?}: {got:?} is not one of {choices}")]
    NotAChoice {
        action: String,
        arg: String,
        got: String,
        choices: String,
    },
    /// The driver's own default is unusable; a driver bug, reported with the offending arg.
    #[error("action {action:?}: default of argument {arg:?} is unusable: {reason}")]
    BadDefault {
        action: String,
        arg: String,
        reason: String,
    },
    #[error("argument {item:?}: {problem}")]
    BadAssignment { item: String, problem: String },
    #[error("template {template:?}: unknown argument {name:?}")]
    UnknownPlaceholder { template: String, name: String },
    #[error("template {template:?}: {problem}")]
    BadTemplate { template: String, problem: String },
}

/// Split command-line `key=value` items into a map; a missing `=`, an empty key or a key given
/// twice is an error (silently keeping one of two values would hide a typo).
pub fn parse_assignments<I, S>(items: I) -> Result<BTreeMap<String, String>, ArgError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = BTreeMap::new();
    for item in items {
        let item = item.as_ref();
        let bad = |problem: &str| ArgError::BadAssignment {
            item: preview(item),
            problem: problem.to_string(),
        };
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(bad("empty argument name"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad("argument given twice"));
        }
    }
    Ok(out)
}

/// Check arguments given as `key=value` text (the command line) against the action's definitions.
pub fn resolve_args(
    action_name: &str,
    action: &Action,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ArgValue>, ArgError> {
    resolve(action_name, action, given, |ctx, text| {
        parse_text(ctx, text)
    })
}

/// Check arguments given as typed TOML values (recipes, JSON via serde) against the definitions.
///
/// Strings are accepted for any type and parsed as on the command line, so `volts = "230"` works.
pub fn resolve_typed_args(
    action_name: &str,
    action: &Action,
    given: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, ArgValue>, ArgError> {
    resolve(action_name, action, given, parse_typed)
}

/// What a value parser needs to know to check and to report.
struct Ctx<'a> {
    action: &'a str,
    name: &'a str,
    def: &'a Arg,
}

impl Ctx<'_> {
    fn bad(&self, expected: impl Into<String>, got: &str) -> ArgError {
        ArgError::BadValue {
            action: self.action.to_string(),
            arg: self.name.to_string(),
            expected: expected.into(),
            got: preview(got),
        }
    }
}

fn resolve<V>(
    action_name: &str,
    action: &Action,
    given: &BTreeMap<String, V>,
    parse: impl Fn(&Ctx<'_>, &V) -> Result<ArgValue, ArgError>,
) -> Result<BTreeMap<String, ArgValue>, ArgError> {
    if let Some(unknown) = given.keys().find(|k| !action.args.contains_key(*k)) {
        let known = if action.args.is_empty() {
            "none".to_string()
        } else {
            action.args.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        return Err(ArgError::Unknown {
            action: action_name.to_string(),
            arg: unknown.clone(),
            known,
        });
    }
    let mut out = BTreeMap::new();
    for (name, def) in &action.args {
        let ctx = Ctx {
            action: action_name,
            name,
            def,
        };
        let value = match (given.get(name), &def.default) {
            (Some(v), _) => parse(&ctx, v)?,
            (None, Some(d)) => parse_typed(&ctx, d).map_err(|e| ArgError::BadDefault {
                action: action_name.to_string(),
                arg: name.clone(),
                reason: e.to_string(),
            })?,
            (None, None) => {
                return Err(ArgError::Missing {
                    action: action_name.to_string(),
                    arg: name.clone(),
                });
            }
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

fn parse_text(ctx: &Ctx<'_>, text: &str) -> Result<ArgValue, ArgError> {
    let t = text.trim();
    match ctx.def.arg_type {
        ArgType::Float => {
            let v: f64 = t.parse().map_err(|_| ctx.bad("a number", t))?;
            float_value(ctx, v, t)
        }
        ArgType::Int => {
            let v: i64 = t.parse().map_err(|_| ctx.bad("an integer", t))?;
            check_range(ctx, v as f64)?;
            Ok(ArgValue::Int(v))
        }
        ArgType::Bool => match t.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Ok(ArgValue::Bool(true)),
            "0" | "off" | "false" | "no" => Ok(ArgValue::Bool(false)),
            _ => Err(ctx.bad("on/off, true/false, yes/no or 1/0", t)),
        },
        ArgType::Enum => choice(ctx, t),
    }
}

fn parse_typed(ctx: &Ctx<'_>, value: &toml::Value) -> Result<ArgValue, ArgError> {
    use toml::Value as T;
    match (ctx.def.arg_type, value) {
        (_, T::String(s)) => parse_text(ctx, s),
        (ArgType::Float, T::Float(v)) => float_value(ctx, *v, &v.to_string()),
        (ArgType::Float, T::Integer(v)) => float_value(ctx, *v as f64, &v.to_string()),
        (ArgType::Int, T::Integer(v)) => {
            check_range(ctx, *v as f64)?;
            Ok(ArgValue::Int(*v))
        }
        // JSON has one number type: 5.0 from a web form is a fine integer, 5.5 is not.
        (ArgType::Int, T::Float(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
            check_range(ctx, *v)?;
            Ok(ArgValue::Int(*v as i64))
        }
        (ArgType::Bool, T::Boolean(b)) => Ok(ArgValue::Bool(*b)),
        (ArgType::Bool, T::Integer(i @ (0 | 1))) => Ok(ArgValue::Bool(*i == 1)),
        (t, other) => Err(ctx.bad(
            match t {
                ArgType::Float => "a number",
                ArgType::Int => "an integer",
                ArgType::Bool => "true or false",
                ArgType::Enum => "a string",
            },
            &other.to_string(),
        )),
    }
}

fn float_value(ctx: &Ctx<'_>, v: f64, raw: &str) -> Result<ArgValue, ArgError> {
    if !v.is_finite() {
        return Err(ctx.bad("a finite number", raw));
    }
    check_range(ctx, v)?;
    // -0 would render as "-0" in a command.
    Ok(ArgValue::Float(if v == 0.0 { 0.0 } else { v }))
}

fn check_range(ctx: &Ctx<'_>, v: f64) -> Result<(), ArgError> {
    let (min, max) = (ctx.def.min, ctx.def.max);
    let below = min.is_some_and(|m| v < m);
    let above = max.is_some_and(|m| v > m);
    if !(below || above) {
        return Ok(());
    }
    let unit = if ctx.def.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", ctx.def.unit)
    };
    let range = match (min, max) {
        (Some(lo), Some(hi)) => format!("{}..{}{unit}", format_float(lo), format_float(hi)),
        (Some(lo), None) => format!(">= {}{unit}", format_float(lo)),
        (None, Some(hi)) => format!("<= {}{unit}", format_float(hi)),
        (None, None) => String::new(),
    };
    Err(ArgError::OutOfRange {
        action: ctx.action.to_string(),
        arg: ctx.name.to_string(),
        value: v,
        unit,
        range,
    })
}

/// Exact match first, then a case-insensitive one (SCPI mnemonics are case-insensitive), always
/// returning the driver's spelling.
fn choice(ctx: &Ctx<'_>, t: &str) -> Result<ArgValue, ArgError> {
    let choices = &ctx.def.choices;
    let found = choices
        .iter()
        .find(|c| c.as_str() == t)
        .or_else(|| choices.iter().find(|c| c.eq_ignore_ascii_case(t)));
    match found {
        Some(c) => Ok(ArgValue::Enum(c.clone())),
        None => Err(ArgError::NotAChoice {
            action: ctx.action.to_string(),
            arg: ctx.name.to_string(),
            got: preview(t),
            choices: if choices.is_empty() {
                "(the driver lists no choices)".to_string()
            } else {
                choices.join(", ")
            },
        }),
    }
}

/// A float without exponent and without needless trailing zeros: 230 -> "230", 0.001 -> "0.001".
pub fn format_float(v: f64) -> String {
    // Rust's Display for f64 is the shortest round-trip form and never uses an exponent.
    if v == 0.0 {
        "0".to_string()
    } else {
        v.to_string()
    }
}

/// One piece of a parsed template.
enum Piece<'a> {
    Text(&'a str),
    /// `{{` or `}}`.
    Brace(char),
    Arg(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, ArgError> {
    let bad = |problem: &str| ArgError::BadTemplate {
        template: template.to_string(),
        problem: problem.to_string(),
    };
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("{{") {
            out.push(Piece::Brace('{'));
            rest = r;
        } else if let Some(r) = tail.strip_prefix("}}") {
            out.push(Piece::Brace('}'));
            rest = r;
        } else if tail.starts_with('}') {
            return Err(bad("lone '}' (write '}}' for a literal brace)"));
        } else {
            let close = tail
                .find('}')
                .ok_or_else(|| bad("unclosed '{' (write '{{' for a literal brace)"))?;
            let name = tail[1..close].trim();
            if name.is_empty() || name.contains('{') {
                return Err(bad("empty or nested placeholder"));
            }
            out.push(Piece::Arg(name));
            rest = &tail[close + 1..];
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The argument names a template refers to, in order; for driver checks at load time.
pub fn placeholders(template: &str) -> Result<Vec<String>, ArgError> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Arg(name) => Some(name.to_string()),
            _ => None,
        })
        .collect())
}

/// Fill a command template: `{volts}` becomes the argument's value, `{{` and `}}` literal braces.
pub fn render(
    template: &str,
    args: &BTreeMap<String, ArgValue>,
    arg_defs: &BTreeMap<String, Arg>,
) -> Result<String, ArgError> {
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Brace(c) => out.push(c),
            Piece::Arg(name) => {
                let value = args.get(name).ok_or_else(|| ArgError::UnknownPlaceholder {
                    template: template.to_string(),
                    name: name.to_string(),
                })?;
                match value {
                    ArgValue::Bool(b) => {
                        let def = arg_defs.get(name);
                        let text = if *b {
                            def.and_then(|d| d.true_text.as_deref()).unwrap_or("ON")
                        } else {
                            def.and_then(|d| d.false_text.as_deref()).unwrap_or("OFF")
                        };
                        out.push_str(text);
                    }
                    other => out.push_str(&other.to_string()),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(t: ArgType) -> Arg {
        Arg {
            arg_type: t,
            unit: String::new(),
            min: None,
            max: None,
            choices: Vec::new(),
            values: None,
            default: None,
            true_text: None,
            false_text: None,
            description: String::new(),
        }
    }

    fn source_action() -> Action {
        let mut args = BTreeMap::new();
        args.insert(
            "volts".to_string(),
            Arg {
                unit: "V".to_string(),
                min: Some(0.0),
                max: Some(300.0),
                ..arg(ArgType::Float)
            },
        );
        args.insert(
            "freq".to_string(),
            Arg {
                unit: "Hz".to_string(),
                min: Some(45.0),
                max: Some(65.0),
                default: Some(toml::Value::Float(50.0)),
                ..arg(ArgType::Float)
            },
        );
        args.insert(
            "output".to_string(),
            Arg {
                default: Some(toml::Value::Boolean(true)),
                ..arg(ArgType::Bool)
            },
        );
        args.insert(
            "range".to_string(),
            Arg {
                choices: vec!["LOW".to_string(), "HIGH".to_string(), "AUTO".to_string()],
                default: Some(toml::Value::String("AUTO".to_string())),
                ..arg(ArgType::Enum)
            },
        );
        args.insert(
            "count".to_string(),
            Arg {
                min: Some(1.0),
                max: Some(10.0),
                default: Some(toml::Value::Integer(1)),
                ..arg(ArgType::Int)
            },
        );
        Action {
            description: String::new(),
            commands: vec!["VOLT {volts};FREQ {freq}".to_string()],
            writes: Vec::new(),
            args,
            settle: None,
        }
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resolves_with_defaults() {
        let a = source_action();
        let r = resolve_args("set", &a, &given(&[("volts", "230")])).unwrap();
        assert_eq!(r["volts"], ArgValue::Float(230.0));
        assert_eq!(r["freq"], ArgValue::Float(50.0));
        assert_eq!(r["output"], ArgValue::Bool(true));
        assert_eq!(r["range"], ArgValue::Enum("AUTO".to_string()));
        assert_eq!(r["count"], ArgValue::Int(1));
    }

    #[test]
    fn parses_each_type_from_text() {
        let a = source_action();
        let r = resolve_args(
            "set",
            &a,
            &given(&[
                ("volts", " 120.5 "),
                ("freq", "60"),
                ("output", "off"),
                ("range", "high"),
                ("count", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(r["volts"], ArgValue::Float(120.5));
        assert_eq!(r["output"], ArgValue::Bool(false));
        // The driver's spelling, not the user's.
        assert_eq!(r["range"], ArgValue::Enum("HIGH".to_string()));
        assert_eq!(r["count"], ArgValue::Int(3));
    }

    #[test]
    fn errors_name_action_and_argument() {
        let a = source_action();
        let err = resolve_args("set", &a, &given(&[("volt", "230")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": unknown argument \"volt\" (known: count, freq, output, range, volts)"
        );
        let err = resolve_args("set", &a, &given(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": missing required argument \"volts\""
        );
        let err = resolve_args("set", &a, &given(&[("volts", "400")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": argument \"volts\" = 400 V is out of range 0..300 V"
        );
        let err = resolve_args("set", &a, &given(&[("volts", "abc")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": argument \"volts\": expected a number, got \"abc\""
        );
        for bad in ["NaN", "inf", "-inf"] {
            assert!(matches!(
                resolve_args("set", &a, &given(&[("volts", bad)])),
                Err(ArgError::BadValue { .. })
            ));
        }
        let err = resolve_args("set", &a, &given(&[("volts", "1"), ("range", "MID")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": argument \"range\": \"MID\" is not one of LOW, HIGH, AUTO"
        );
        assert!(matches!(
            resolve_args("set", &a, &given(&[("volts", "1"), ("count", "2.5")])),
            Err(ArgError::BadValue { .. })
        ));
        assert!(matches!(
            resolve_args("set", &a, &given(&[("volts", "1"), ("count", "11")])),
            Err(ArgError::OutOfRange { .. })
        ));
        assert!(matches!(
            resolve_args("set", &a, &given(&[("volts", "1"), ("output", "maybe")])),
            Err(ArgError::BadValue { .. })
        ));
    }

    #[test]
    fn range_bounds_are_inclusive() {
        let a = source_action();
        assert!(resolve_args("set", &a, &given(&[("volts", "0")])).is_ok());
        assert!(resolve_args("set", &a, &given(&[("volts", "300")])).is_ok());
        assert!(resolve_args("set", &a, &given(&[("volts", "300.0001")])).is_err());
        assert!(resolve_args("set", &a, &given(&[("volts", "-0.1")])).is_err());
    }

    #[test]
    fn unusable_default_is_reported_as_driver_problem() {
        let mut a = source_action();
        a.args.get_mut("freq").unwrap().default = Some(toml::Value::Float(400.0));
        let err = resolve_args("set", &a, &given(&[("volts", "1")])).unwrap_err();
        assert!(
            matches!(err, ArgError::BadDefault { ref arg, .. } if arg == "freq"),
            "{err}"
        );
    }

    #[test]
    fn no_args_action() {
        let a = Action {
            args: BTreeMap::new(),
            ..source_action()
        };
        assert!(resolve_args("rst", &a, &given(&[])).unwrap().is_empty());
        let err = resolve_args("rst", &a, &given(&[("x", "1")])).unwrap_err();
        assert!(err.to_string().contains("(known: none)"), "{err}");
    }

    #[test]
    fn typed_values() {
        let a = source_action();
        let mut g = BTreeMap::new();
        g.insert("volts".to_string(), toml::Value::Integer(230));
        g.insert("output".to_string(), toml::Value::Boolean(false));
        g.insert("count".to_string(), toml::Value::Float(4.0));
        g.insert("freq".to_string(), toml::Value::String("60".to_string()));
        let r = resolve_typed_args("set", &a, &g).unwrap();
        assert_eq!(r["volts"], ArgValue::Float(230.0));
        assert_eq!(r["output"], ArgValue::Bool(false));
        assert_eq!(r["count"], ArgValue::Int(4));
        assert_eq!(r["freq"], ArgValue::Float(60.0));

        g.insert("count".to_string(), toml::Value::Float(4.5));
        assert!(matches!(
            resolve_typed_args("set", &a, &g),
            Err(ArgError::BadValue { .. })
        ));
        g.insert("count".to_string(), toml::Value::Integer(2));
        g.insert("volts".to_string(), toml::Value::Boolean(true));
        let err = resolve_typed_args("set", &a, &g).unwrap_err();
        assert_eq!(
            err.to_string(),
            "action \"set\": argument \"volts\": expected a number, got \"true\""
        );
        g.insert("volts".to_string(), toml::Value::Float(301.0));
        assert!(matches!(
            resolve_typed_args("set", &a, &g),
            Err(ArgError::OutOfRange { .. })
        ));
    }

    #[test]
    fn float_formatting() {
        assert_eq!(format_float(230.0), "230");
        assert_eq!(format_float(230.5), "230.5");
        assert_eq!(format_float(0.001), "0.001");
        assert_eq!(format_float(1e-7), "0.0000001");
        assert_eq!(format_float(1e21), "1000000000000000000000");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(-12.25), "-12.25");
        assert_eq!(format_float(0.1), "0.1");
    }

    #[test]
    fn renders_templates() {
        let a = source_action();
        let r = resolve_args("set", &a, &given(&[("volts", "230"), ("freq", "50.5")])).unwrap();
        assert_eq!(
            render("VOLT {volts};FREQ {freq}", &r, &a.args).unwrap(),
            "VOLT 230;FREQ 50.5"
        );
        assert_eq!(render(":OUTP { output }", &r, &a.args).unwrap(), ":OUTP ON");
        assert_eq!(render("RANG {range}", &r, &a.args).unwrap(), "RANG AUTO");
        assert_eq!(render("N {count}", &r, &a.args).unwrap(), "N 1");
        assert_eq!(render("*RST", &r, &a.args).unwrap(), "*RST");
        assert_eq!(render("", &r, &a.args).unwrap(), "");
        assert_eq!(
            render("X {{literal}} {volts}", &r, &a.args).unwrap(),
            "X {literal} 230"
        );
    }

    #[test]
    fn bool_text_from_driver() {
        let mut a = source_action();
        let out = a.args.get_mut("output").unwrap();
        out.true_text = Some("1".to_string());
        out.false_text = Some("0".to_string());
        let mut r = resolve_args("set", &a, &given(&[("volts", "1")])).unwrap();
        assert_eq!(render("OUTP {output}", &r, &a.args).unwrap(), "OUTP 1");
        r.insert("output".to_string(), ArgValue::Bool(false));
        assert_eq!(render("OUTP {output}", &r, &a.args).unwrap(), "OUTP 0");
    }

    #[test]
    fn template_errors() {
        let a = source_action();
        let r = resolve_args("set", &a, &given(&[("volts", "1")])).unwrap();
        let err = render("VOLT {volt}", &r, &a.args).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template \"VOLT {volt}\": unknown argument \"volt\""
        );
        for bad in ["VOLT {volts", "VOLT }", "VOLT {}", "VOLT {{volts}", "{a{b}"] {
            assert!(
                matches!(render(bad, &r, &a.args), Err(ArgError::BadTemplate { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arbitrary_templates_never_panic() {
        let alphabet: Vec<char> = "{}ab volts é日".chars().collect();
        let a = source_action();
        let r = resolve_args("set", &a, &given(&[("volts", "1")])).unwrap();
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..20_000 {
            let len = rng.usize(0..16);
            let t: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let rendered = render(&t, &r, &a.args);
            // A template without braces renders to itself.
            if !t.contains(['{', '}']) {
                assert_eq!(rendered.unwrap(), t);
            }
            let _ = placeholders(&t);
        }
    }

    #[test]
    fn placeholder_listing() {
        assert_eq!(
            placeholders("VOLT {volts};FREQ {freq};X {{y}}").unwrap(),
            vec!["volts".to_string(), "freq".to_string()]
        );
        assert!(placeholders("{").is_err());
    }

    #[test]
    fn command_line_assignments() {
        let m = parse_assignments(["volts=230", " freq = 50", "label=a=b"]).unwrap();
        assert_eq!(m["volts"], "230");
        assert_eq!(m["freq"], " 50");
        assert_eq!(m["label"], "a=b");
        assert!(parse_assignments(Vec::<String>::new()).unwrap().is_empty());
        let err = parse_assignments(["volts"]).unwrap_err();
        assert_eq!(err.to_string(), "argument \"volts\": expected key=value");
        assert!(parse_assignments(["=1"]).is_err());
        let err = parse_assignments(["v=1", "v=2"]).unwrap_err();
        assert_eq!(err.to_string(), "argument \"v=2\": argument given twice");
    }

    #[test]
    fn register_values_of_enums_follow_the_choice() {
        let def = Arg {
            choices: vec!["auto".to_string(), "manual".to_string(), "off".to_string()],
            values: Some(vec![10.0, 54.0, 62.0]),
            ..arg(ArgType::Enum)
        };
        let mut a = source_action();
        a.args.insert("mode".to_string(), def.clone());
        let r = resolve_args("set", &a, &given(&[("volts", "1"), ("mode", "MANUAL")])).unwrap();
        assert_eq!(register_value(&r["mode"], &def), Some(54.0));
        assert_eq!(
            register_value(&ArgValue::Enum("off".into()), &def),
            Some(62.0)
        );
        assert_eq!(
            register_value(&ArgValue::Enum("auto".into()), &def),
            Some(10.0)
        );
        // No number to write: a choice the driver does not list, or no values at all.
        assert_eq!(register_value(&ArgValue::Enum("eco".into()), &def), None);
        let bare = Arg {
            values: None,
            ..def.clone()
        };
        assert_eq!(register_value(&ArgValue::Enum("off".into()), &bare), None);
        let short = Arg {
            values: Some(vec![10.0]),
            ..def
        };
        assert_eq!(register_value(&ArgValue::Enum("off".into()), &short), None);
        // Other types write their own number.
        assert_eq!(
            register_value(&ArgValue::Int(7), &arg(ArgType::Int)),
            Some(7.0)
        );
        assert_eq!(
            register_value(&ArgValue::Bool(true), &arg(ArgType::Bool)),
            Some(1.0)
        );
    }

    #[test]
    fn as_f64_for_modbus() {
        assert_eq!(ArgValue::Float(1.5).as_f64(), Some(1.5));
        assert_eq!(ArgValue::Int(-3).as_f64(), Some(-3.0));
        assert_eq!(ArgValue::Bool(true).as_f64(), Some(1.0));
        assert_eq!(ArgValue::Bool(false).as_f64(), Some(0.0));
        assert_eq!(ArgValue::Enum("A".to_string()).as_f64(), None);
    }
}
