//! Turning SCPI reply text into values: numbers, lists, booleans, error-queue entries, identity.
//!
//! Everything here is pure so it can be tested without an instrument.
//!
//! Numbers follow IEEE 488.2 NR1/NR2/NR3 (`123`, `-5`, `+7`, `1.5`, `.5`, `2.3001E+02`, `1e-3`)
//! with surrounding whitespace allowed. A unit suffix (`230.0V`) is a parse error on purpose: the
//! drivers turn headers and units off, so a suffix means the instrument is not in the mode the
//! driver set up, and reading `230.0mV` as 230 would be a silent factor-of-1000 mistake.
//!
//! Values that mean "no valid reading" never become numbers. A driver's own markers are checked
//! first (token match case-insensitive, value match with a relative tolerance of 1e-9); after that
//! the IEEE 488.2 sentinels still apply: `NAN` and 9.91E+37 are [`InvalidKind::NoData`], `INF`,
//! `-INF` and +-9.9E+37 are [`InvalidKind::Overrange`], and any other magnitude at or above
//! 9.9E+37 (or one that overflows f64) is [`InvalidKind::Invalid`].

use crate::driver::schema::{InvalidMarker, Parse};
use crate::reading::{InvalidKind, Value};

/// Longest excerpt of offending text kept in an error message.
const PREVIEW_CHARS: usize = 60;

/// IEEE 488.2 "not a number" sentinel.
const SENTINEL_NAN: f64 = 9.91e37;
/// IEEE 488.2 "infinity" sentinel; also the lower bound of the sentinel range.
const SENTINEL_INF: f64 = 9.9e37;
const MARKER_TOLERANCE: f64 = 1e-9;

/// A reply that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got:?}")]
pub struct ParseError {
    /// What the parser wanted, for a person: "a number", "1, 0, ON or OFF".
    pub expected: String,
    /// The offending text, truncated to a preview.
    pub got: String,
}

impl ParseError {
    fn new(expected: impl Into<String>, got: &str) -> Self {
        ParseError {
            expected: expected.into(),
            got: preview(got),
        }
    }
}

/// A short excerpt of `text` for error messages, marked with "..." when cut.
pub fn preview(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

/// Parse one numeric token, honouring the driver's invalid markers.
pub fn parse_number(token: &str, markers: &[InvalidMarker]) -> Result<Value, ParseError> {
    let raw = token.trim();
    let invalid = |kind| Value::Invalid {
        kind,
        raw: raw.to_string(),
    };
    for m in markers {
        if m.token
            .as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(raw))
        {
            return Ok(invalid(m.kind));
        }
    }
    if let Some(kind) = special_token(raw) {
        return Ok(invalid(kind));
    }
    if !is_scpi_decimal(raw) {
        return Err(ParseError::new("a number", raw));
    }
    let v: f64 = raw.parse().map_err(|_| ParseError::new("a number", raw))?;
    for m in markers {
        if m.value.is_some_and(|mv| close(v, mv)) {
            return Ok(invalid(m.kind));
        }
    }
    if let Some(kind) = sentinel_kind(v) {
        return Ok(invalid(kind));
    }
    Ok(Value::Number(v))
}

/// Turn a quantity's reply into a value the way its driver entry says: take field `field` of
/// the reply if given, then parse it as `kind` (text is trimmed, quotes kept).
pub fn parse_value(
    reply: &str,
    kind: Parse,
    field_index: Option<usize>,
    sep: &str,
    markers: &[InvalidMarker],
) -> Result<Value, ParseError> {
    let text = match field_index {
        Some(n) => field(reply, sep, n)?,
        None => reply.trim(),
    };
    match kind {
        Parse::Number => parse_number(text, markers),
        Parse::List => parse_list(text, sep, markers).map(list_value),
        Parse::Text => Ok(Value::Text(text.to_string())),
        Parse::Bool => parse_bool(text).map(Value::Bool),
    }
}

/// Parse a separated list of numbers, e.g. a 401-point spectrum.
///
/// An empty (or all-whitespace) reply is an empty list. One trailing separator is tolerated
/// because some instruments end lists with one. An empty `sep` splits on whitespace.
pub fn parse_list(
    reply: &str,
    sep: &str,
    markers: &[InvalidMarker],
) -> Result<Vec<Value>, ParseError> {
    if reply.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parse_at = |i: usize, tok: &str| {
        parse_number(tok, markers).map_err(|e| ParseError {
            expected: format!("a number at position {i} of the list"),
            got: e.got,
        })
    };
    if sep.is_empty() {
        return reply
            .split_whitespace()
            .enumerate()
            .map(|(i, t)| parse_at(i, t))
            .collect();
    }
    let body = reply.trim_end();
    let body = body.strip_suffix(sep).unwrap_or(body);
    body.split(sep)
        .enumerate()
        .map(|(i, t)| parse_at(i, t))
        .collect()
}

/// A list reading: numbers stay numbers, anything invalid becomes NaN so positions are kept.
pub fn list_value(values: Vec<Value>) -> Value {
    Value::List(
        values
            .iter()
            .map(|v| match v {
                Value::Number(n) => *n,
                Value::Bool(b) => f64::from(u8::from(*b)),
                _ => f64::NAN,
            })
            .collect(),
    )
}

/// The `n`-th (0-based) field of a separated reply, trimmed.
///
/// Separators inside double-quoted SCPI strings do not split (`-222,"a,b"` has two fields);
/// an empty `sep` splits on whitespace.
pub fn field<'a>(reply: &'a str, sep: &str, n: usize) -> Result<&'a str, ParseError> {
    let found = if sep.is_empty() {
        reply.split_whitespace().nth(n)
    } else {
        split_unquoted(reply, sep).nth(n).map(str::trim)
    };
    found.ok_or_else(|| {
        ParseError::new(
            format!("at least {} fields separated by {sep:?}", n + 1),
            reply,
        )
    })
}

/// `1`/`0`/`ON`/`OFF`, case-insensitive; `+1`/`+0` too since some instruments send NR1 with a sign.
pub fn parse_bool(token: &str) -> Result<bool, ParseError> {
    let t = token.trim();
    if t.eq_ignore_ascii_case("on") || t == "1" || t == "+1" {
        Ok(true)
    } else if t.eq_ignore_ascii_case("off") || t == "0" || t == "+0" {
        Ok(false)
    } else {
        Err(ParseError::new("1, 0, ON or OFF", t))
    }
}

/// One entry of an instrument's error queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    pub code: i32,
    pub message: String,
}

impl ErrorEntry {
    /// Code 0 means the queue is empty.
    pub fn is_no_error(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for ErrorEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "error {}", self.code)
        } else {
            write!(f, "error {}: {}", self.code, self.message)
        }
    }
}

/// Parse an error-queue reply: `0,"No error"`, `-113,"Undefined header"`, `113,"Undefined header"`.
///
/// Lenient about the message (unquoted text, or a bare code) because the code is what matters;
/// strict about the code, since a garbled code must not read as "no error".
pub fn parse_error_entry(reply: &str) -> Result<ErrorEntry, ParseError> {
    let reply = reply.trim();
    let (code_text, rest) = match reply.split_once(',') {
        Some((c, r)) => (c.trim(), r.trim()),
        None => (reply, ""),
    };
    let digits = code_text.strip_prefix('+').unwrap_or(code_text);
    let code: i32 = if !digits.is_empty()
        && digits
            .strip_prefix('-')
            .unwrap_or(digits)
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        digits
            .parse()
            .map_err(|_| ParseError::new("an error code and message like 0,\"No error\"", reply))?
    } else {
        return Err(ParseError::new(
            "an error code and message like 0,\"No error\"",
            reply,
        ));
    };
    let message = match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        // SCPI doubles a quote inside a string.
        Some(inner) => inner.replace("\"\"", "\""),
        None => rest.to_string(),
    };
    Ok(ErrorEntry { code, message })
}

/// The instrument on the link is not the model the driver expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity mismatch: expected a reply containing {}, got {got:?} (missing {})", quoted(.expected), quoted(.missing))]
pub struct IdentityError {
    pub expected: Vec<String>,
    pub missing: Vec<String>,
    /// The identity reply, truncated to a preview.
    pub got: String,
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check that every expected string appears in the identity reply, case-insensitive.
pub fn check_identity(reply: &str, contains: &[String]) -> Result<(), IdentityError> {
    let hay = reply.to_lowercase();
    let missing: Vec<String> = contains
        .iter()
        .filter(|c| !hay.contains(&c.to_lowercase()))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(IdentityError {
            expected: contains.to_vec(),
            missing,
            got: preview(reply.trim()),
        })
    }
}

/// Split on `sep` outside double-quoted strings.
fn split_unquoted<'a, 'b>(
    text: &'a str,
    sep: &'b str,
) -> impl Iterator<Item = &'a str> + use<'a, 'b> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut in_quotes = false;
        let mut i = 0;
        while i < s.len() {
            if s.as_bytes()[i] == b'"' {
                in_quotes = !in_quotes;
            } else if !in_quotes && s[i..].starts_with(sep) {
                rest = Some(&s[i + sep.len()..]);
                return Some(&s[..i]);
            }
            // Step a whole char so slicing stays on char boundaries.
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
        rest = None;
        Some(s)
    })
}

/// Tokens that are never numbers even when no driver marker names them.
fn special_token(raw: &str) -> Option<InvalidKind> {
    let unsigned = raw
        .strip_prefix(['+', '-'])
        .unwrap_or(raw)
        .to_ascii_uppercase();
    match unsigned.as_str() {
        "NAN" => Some(InvalidKind::NoData),
        "INF" | "INFINITY" => Some(InvalidKind::Overrange),
        _ => None,
    }
}

fn sentinel_kind(v: f64) -> Option<InvalidKind> {
    if close(v, SENTINEL_NAN) {
        Some(InvalidKind::NoData)
    } else if close(v.abs(), SENTINEL_INF) {
        Some(InvalidKind::Overrange)
    } else if !v.is_finite() || v.abs() >= SENTINEL_INF {
        Some(InvalidKind::Invalid)
    } else {
        None
    }
}

fn close(a: f64, b: f64) -> bool {
    if a == b {
        return true;
    }
    // Without this an infinity would be "close" to every large marker.
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    (a - b).abs() <= MARKER_TOLERANCE * a.abs().max(b.abs())
}

/// Decimal numeric data: sign, digits with an optional point (at least one digit), optional
/// exponent. Rust's own parser also takes `inf`, `nan` and `infinity`, which must not pass here.
fn is_scpi_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> f64 {
        match parse_number(s, &[]) {
            Ok(Value::Number(v)) => v,
            other => panic!("{s:?} -> {other:?}"),
        }
    }

    fn kind(s: &str, markers: &[InvalidMarker]) -> InvalidKind {
        match parse_number(s, markers) {
            Ok(Value::Invalid { kind, raw }) => {
                assert_eq!(raw, s.trim());
                kind
            }
            other => panic!("{s:?} -> {other:?}"),
        }
    }

    fn token_marker(t: &str, kind: InvalidKind) -> InvalidMarker {
        InvalidMarker {
            token: Some(t.to_string()),
            value: None,
            kind,
        }
    }

    fn value_marker(v: f64, kind: InvalidKind) -> InvalidMarker {
        InvalidMarker {
            token: None,
            value: Some(v),
            kind,
        }
    }

    #[test]
    fn nr1_nr2_nr3() {
        let cases = [
            ("123", 123.0),
            ("-5", -5.0),
            ("+7", 7.0),
            ("1.5", 1.5),
            (".5", 0.5),
            ("-.5", -0.5),
            ("5.", 5.0),
            ("2.3001E+02", 230.01),
            ("1e-3", 0.001),
            ("-1.25E-03", -0.00125),
            ("  230.0 \r\n", 230.0),
            ("\t0\t", 0.0),
        ];
        for (s, want) in cases {
            assert_eq!(num(s), want, "{s:?}");
        }
    }

    #[test]
    fn random_numbers_round_trip_in_every_notation() {
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..5_000 {
            let mag = 10f64.powi(rng.i32(-30..30));
            let v = (rng.f64() - 0.5) * mag;
            for text in [
                format!("{v}"),
                format!("{v:E}"),
                format!("{v:e}"),
                format!("{v:+.6E}"),
            ] {
                let got = num(&text);
                let want: f64 = text.parse().unwrap();
                assert_eq!(got, want, "{text}");
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let alphabet: Vec<char> = "0123456789+-.eE,;: \"\r\nNAIFONaé日\u{0}".chars().collect();
        let markers = [
            token_marker("é", InvalidKind::Invalid),
            value_marker(-1.0, InvalidKind::NoData),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let text: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = parse_number(&text, &markers);
            let _ = parse_list(&text, ",", &markers);
            let _ = parse_list(&text, "", &markers);
            let _ = parse_list(&text, "日", &markers);
            for n in 0..3 {
                let _ = field(&text, ",", n);
                let _ = field(&text, "é", n);
            }
            let _ = parse_bool(&text);
            let _ = parse_error_entry(&text);
            let _ = check_identity(&text, &["日".to_string()]);
            let _ = preview(&text.repeat(10));
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_token() {
        for bad in [
            "", "abc", "230.0V", "1.2.3", "e5", "1e", "--1", "0x10", "1,5", ". ", "+",
        ] {
            let err = parse_number(bad, &[]).unwrap_err();
            assert_eq!(err.expected, "a number");
            assert_eq!(err.got, bad.trim());
        }
        let err = parse_number("abc", &[]).unwrap_err();
        assert_eq!(err.to_string(), "expected a number, got \"abc\"");
    }

    #[test]
    fn long_garbage_is_truncated_in_error() {
        let long = "x".repeat(10_000);
        let err = parse_number(&long, &[]).unwrap_err();
        assert!(err.got.len() < 100, "{}", err.got.len());
        assert!(err.got.ends_with("..."));
    }

    #[test]
    fn builtin_sentinels_never_become_numbers() {
        assert_eq!(kind("NAN", &[]), InvalidKind::NoData);
        assert_eq!(kind("nan", &[]), InvalidKind::NoData);
        assert_eq!(kind("INF", &[]), InvalidKind::Overrange);
        assert_eq!(kind("-INF", &[]), InvalidKind::Overrange);
        assert_eq!(kind("+inf", &[]), InvalidKind::Overrange);
        assert_eq!(kind("9.91E+37", &[]), InvalidKind::NoData);
        assert_eq!(kind("9.910000E+37", &[]), InvalidKind::NoData);
        assert_eq!(kind("9.9E+37", &[]), InvalidKind::Overrange);
        assert_eq!(kind("-9.9E+37", &[]), InvalidKind::Overrange);
        assert_eq!(kind("9.95E+37", &[]), InvalidKind::Invalid);
        assert_eq!(kind("1e400", &[]), InvalidKind::Invalid);
        // Just below the sentinel range is still a (huge) number.
        assert_eq!(num("9.8E+37"), 9.8e37);
    }

    #[test]
    fn driver_markers_take_precedence() {
        let markers = [
            token_marker("nan", InvalidKind::Invalid),
            value_marker(-1.0, InvalidKind::NoData),
            value_marker(-2.0, InvalidKind::RangeChanged),
            value_marker(-3.0, InvalidKind::Overrange),
            value_marker(9.9e37, InvalidKind::OpenSensor),
            token_marker("----", InvalidKind::NoData),
        ];
        assert_eq!(kind("NAN", &markers), InvalidKind::Invalid);
        assert_eq!(kind("-1", &markers), InvalidKind::NoData);
        assert_eq!(kind("-1.000", &markers), InvalidKind::NoData);
        assert_eq!(kind("-2.0", &markers), InvalidKind::RangeChanged);
        assert_eq!(kind("-3", &markers), InvalidKind::Overrange);
        assert_eq!(kind("+9.90000E+37", &markers), InvalidKind::OpenSensor);
        assert_eq!(kind(" ---- ", &markers), InvalidKind::NoData);
        // Close to but outside the tolerance: a real reading.
        assert_eq!(num("-1.0001"), -1.0001);
        assert_eq!(
            parse_number("-1.0001", &markers).unwrap(),
            Value::Number(-1.0001)
        );
        // Unrelated numbers pass through.
        assert_eq!(parse_number("-4", &markers).unwrap(), Value::Number(-4.0));
    }

    #[test]
    fn value_marker_tolerance_is_relative() {
        let m = [value_marker(9.91e37, InvalidKind::NoData)];
        assert_eq!(kind("9.9100000001E+37", &m), InvalidKind::NoData);
        let zero = [value_marker(0.0, InvalidKind::NoData)];
        assert_eq!(kind("0", &zero), InvalidKind::NoData);
        assert_eq!(
            parse_number("1e-300", &zero).unwrap(),
            Value::Number(1e-300)
        );
    }

    #[test]
    fn lists() {
        let v = parse_list("1.0E+00,2.5E+00,NAN,-3\n", ",", &[]).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], Value::Number(1.0));
        assert!(v[2].is_invalid());
        assert_eq!(parse_list("", ",", &[]).unwrap(), vec![]);
        assert_eq!(parse_list("  \r\n", ",", &[]).unwrap(), vec![]);
        // Trailing separator tolerated, inner empty field not.
        assert_eq!(parse_list("1,2,", ",", &[]).unwrap().len(), 2);
        let err = parse_list("1,,3", ",", &[]).unwrap_err();
        assert_eq!(err.expected, "a number at position 1 of the list");
        let err = parse_list("1;2;x", ";", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a number at position 2 of the list, got \"x\""
        );
        assert_eq!(parse_list("1 2\t3", "", &[]).unwrap().len(), 3);
        assert_eq!(
            parse_list("1, 2 , 3", ",", &[]).unwrap()[1],
            Value::Number(2.0)
        );
    }

    #[test]
    fn spectrum_of_401_values() {
        let reply: Vec<String> = (0..401)
            .map(|i| format!("{:.6E}", i as f64 * 0.01))
            .collect();
        let reply = reply.join(",");
        let start = std::time::Instant::now();
        let v = parse_list(&reply, ",", &[]).unwrap();
        // Generous bound: this is microseconds of work even in a debug build.
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(v.len(), 401);
        match list_value(v) {
            Value::List(l) => {
                assert_eq!(l.len(), 401);
                assert!((l[400] - 4.0).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_value_keeps_positions() {
        let v = parse_list("1,NAN,3", ",", &[]).unwrap();
        match list_value(v) {
            Value::List(l) => {
                assert_eq!(l[0], 1.0);
                assert!(l[1].is_nan());
                assert_eq!(l[2], 3.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_per_driver_parse_kind() {
        let m = [value_marker(-1.0, InvalidKind::NoData)];
        let reply = "2.3E+02,-1,ON,\"a,b\"\r";
        let v = |k, f| parse_value(reply, k, f, ",", &m);
        assert_eq!(v(Parse::Number, Some(0)).unwrap(), Value::Number(230.0));
        assert!(v(Parse::Number, Some(1)).unwrap().is_invalid());
        assert_eq!(v(Parse::Bool, Some(2)).unwrap(), Value::Bool(true));
        assert_eq!(
            v(Parse::Text, Some(3)).unwrap(),
            Value::Text("\"a,b\"".to_string())
        );
        assert!(v(Parse::Number, Some(9)).is_err());
        assert!(v(Parse::Number, None).is_err());
        assert_eq!(
            parse_value(" 1,NAN ", Parse::List, None, ",", &[])
                .unwrap()
                .to_string(),
            "[1, NaN]"
        );
        assert_eq!(
            parse_value(" hello \n", Parse::Text, None, ",", &[]).unwrap(),
            Value::Text("hello".to_string())
        );
    }

    #[test]
    fn fields() {
        assert_eq!(field("1.0,2.0,3.0", ",", 0).unwrap(), "1.0");
        assert_eq!(field("1.0, 2.0 ,3.0", ",", 1).unwrap(), "2.0");
        assert_eq!(field("a;b", ";", 1).unwrap(), "b");
        assert_eq!(field("-222,\"a,b\",7", ",", 2).unwrap(), "7");
        assert_eq!(field("-222,\"a,b\"", ",", 1).unwrap(), "\"a,b\"");
        assert_eq!(field("x  y", "", 1).unwrap(), "y");
        assert_eq!(field("\"日本,語\",2", ",", 1).unwrap(), "2");
        assert_eq!(field("a::b::c", "::", 2).unwrap(), "c");
        let err = field("1,2", ",", 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected at least 5 fields separated by \",\", got \"1,2\""
        );
    }

    #[test]
    fn bools() {
        for t in ["1", "ON", "on", " On\n", "+1"] {
            assert!(parse_bool(t).unwrap(), "{t:?}");
        }
        for t in ["0", "OFF", "off", "+0"] {
            assert!(!parse_bool(t).unwrap(), "{t:?}");
        }
        for t in ["", "2", "yes", "ONN", "1.0"] {
            assert!(parse_bool(t).is_err(), "{t:?}");
        }
        assert_eq!(
            parse_bool("maybe").unwrap_err().to_string(),
            "expected 1, 0, ON or OFF, got \"maybe\""
        );
    }

    #[test]
    fn error_entries() {
        let e = parse_error_entry("0,\"No error\"\n").unwrap();
        assert!(e.is_no_error());
        assert_eq!(e.message, "No error");
        let e = parse_error_entry("+0,\"No error\"").unwrap();
        assert!(e.is_no_error());
        let e = parse_error_entry("-113,\"Undefined header\"").unwrap();
        assert_eq!((e.code, e.message.as_str()), (-113, "Undefined header"));
        assert!(!e.is_no_error());
        let e = parse_error_entry("113,\"Undefined header\"").unwrap();
        assert_eq!(e.code, 113);
        let e = parse_error_entry("-222,\"Data out of range;VOLT 999\"").unwrap();
        assert_eq!(e.message, "Data out of range;VOLT 999");
        let e = parse_error_entry("-100,\"say \"\"hi\"\", then, go\"").unwrap();
        assert_eq!(e.message, "say \"hi\", then, go");
        let e = parse_error_entry("0,No error").unwrap();
        assert_eq!(e.message, "No error");
        let e = parse_error_entry("0").unwrap();
        assert!(e.is_no_error());
        assert_eq!(e.to_string(), "error 0");
        for bad in [
            "",
            "abc",
            "No error",
            "1x,\"a\"",
            "99999999999,\"a\"",
            "-,\"a\"",
        ] {
            assert!(parse_error_entry(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_error_entry("-113,\"Undefined header\"")
                .unwrap()
                .to_string(),
            "error -113: Undefined header"
        );
    }

    #[test]
    fn identity() {
        let want = vec!["YOKOGAWA".to_string(), "WT310".to_string()];
        assert!(check_identity("YOKOGAWA,WT310E-C1-F,91K000001,F1.01", &want).is_ok());
        assert!(check_identity("yokogawa,wt310,x,y", &want).is_ok());
        assert!(check_identity("anything", &[]).is_ok());
        let err = check_identity("CHROMA,66202,0,1.0\n", &want).unwrap_err();
        assert_eq!(err.missing, want);
        assert_eq!(
            err.to_string(),
            "identity mismatch: expected a reply containing \"YOKOGAWA\", \"WT310\", \
             got \"CHROMA,66202,0,1.0\" (missing \"YOKOGAWA\", \"WT310\")"
        );
        let err = check_identity("YOKOGAWA,WT1600", &want).unwrap_err();
        assert_eq!(err.missing, vec!["WT310".to_string()]);
    }
}
