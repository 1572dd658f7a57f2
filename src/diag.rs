//! Diagnostics: problems in a file, reported with file:line:col and key.
//!
//! Loading a config or driver file must report every problem at once, each pointing at the
//! exact place, so a lab engineer can fix a file in one pass. serde's derive stops at the first
//! error, so [`Source::decode`] deserializes one entry at a time from toml's spanned document
//! and, when an entry has a bad key, records it, drops that key and tries again.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
pub use toml::de::{DeArray, DeTable, DeValue};

/// How bad a problem is: errors make loading fail, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    #[default]
    Error,
    Warning,
}

/// One problem at one place in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// Dotted key path, e.g. `instruments.pa1.link`; empty for the file as a whole.
    pub key: String,
    pub message: String,
    pub severity: Severity,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found; `Display` prints one per line, sorted by file, line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics(Vec::new())
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Sorted by file, line, column, then key, so output is stable.
    pub fn sorted(&self) -> Vec<&Diagnostic> {
        let mut v: Vec<&Diagnostic> = self.0.iter().collect();
        v.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.key, &a.message)
                .cmp(&(&b.file, b.line, b.col, &b.key, &b.message))
        });
        v
    }

    /// `Err` if any diagnostic is an error; warnings alone pass through `Ok`.
    pub fn into_result(self) -> Result<Diagnostics, Diagnostics> {
        if self.has_errors() {
            Err(self)
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.sorted().into_iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// A file's path and text, for turning byte spans into diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A parsed TOML document whose values still know their byte spans.
pub type Doc<'a> = Spanned<DeTable<'a>>;

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Read a file; a read failure is a diagnostic at 1:1 of that file.
    pub fn read(path: &Path) -> Result<Source, Diagnostic> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source::new(path, text)),
            Err(e) => Err(Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                key: String::new(),
                message: format!("cannot read file: {e}"),
                severity: Severity::Error,
            }),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.line_col(span.start);
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            key: key.to_string(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// A warning at the start of `span`.
    pub fn warning(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..self.error(span, key, message)
        }
    }

    /// Parse the text as TOML, keeping spans. Every syntax error is reported.
    pub fn parse_toml(&self) -> Result<Doc<'_>, Diagnostics> {
        let (doc, errors) = DeTable::parse_recoverable(&self.text);
        if errors.is_empty() {
            return Ok(doc);
        }
        let mut diags = Diagnostics::new();
        let mut lines_seen = Vec::new();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let d = self.error(span, "", syntax_message(e.message()));
            // The parser recovers and often reports follow-on errors on the same line;
            // the first one on a line is the one worth reading.
            if !lines_seen.contains(&d.line) {
                lines_seen.push(d.line);
                diags.push(d);
            }
        }
        Err(diags)
    }

    /// Report every top-level section of `doc` that is not one of `known`, with a suggestion.
    pub fn unknown_sections(&self, doc: &Doc<'_>, known: &[&str], diags: &mut Diagnostics) {
        for (k, _) in doc.get_ref().iter() {
            let name = k.get_ref();
            if !known.contains(&name.as_ref()) {
                diags.push(self.error(
                    k.span(),
                    name,
                    format!("unknown section `{name}`{}", suggest_or_list(name, known)),
                ));
            }
        }
    }

    /// Deserialize one entry (`value`, found at dotted `key`) into `T`; `None` (with
    /// diagnostics pushed) if anything in it is wrong.
    ///
    /// Every bad key inside the entry is reported, not just the first: after an error
    /// attributed to a key, that key is dropped and deserialization retried. A "missing key"
    /// error for a key that was dropped this way is not reported again.
    pub fn decode<T: DeserializeOwned>(
        &self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        diags: &mut Diagnostics,
    ) -> Option<T> {
        let original = value;
        let mut value = value.clone();
        let mut dropped: Vec<String> = Vec::new();
        // Bounded: each round drops one key, and an entry has finitely many.
        for _ in 0..256 {
            let de = toml::de::ValueDeserializer::from(value.clone());
            let err = match T::deserialize(de) {
                // An entry that needed keys dropped is not what the file says: report, don't use.
                Ok(t) if dropped.is_empty() => return Some(t),
                Ok(_) => return None,
                Err(e) => e,
            };
            let span = err.span().unwrap_or_else(|| value.span());
            // Paths from the text as written: stand-ins carry their table's span.
            let (path, segs) = path_at(original, span.start, key);
            let message = tidy_message(err.message());
            if let Some(missing) = missing_field(err.message()) {
                let full = format!("{path}.{missing}");
                if dropped.contains(&full) {
                    return None;
                }
                diags.push(self.error(span.clone(), &full, "missing key"));
                // Stand in for the missing key so the keys after it are checked too.
                let mut segs = segs;
                segs.push(Seg::Key(missing.clone()));
                let at = span.start;
                // The stand-in works when the next error is elsewhere, or is another
                // missing key of the same table.
                let still_fails = |v| match T::deserialize(toml::de::ValueDeserializer::from(v)) {
                    Ok(_) => false,
                    Err(e) => {
                        e.span().is_none_or(|s| s.start == at)
                            && missing_field(e.message()).is_none_or(|m| m == missing)
                    }
                };
                if !insert_stand_in(&mut value, &segs, span, still_fails) {
                    return None;
                }
                dropped.push(full);
                continue;
            }
            diags.push(self.error(span.clone(), &path, message));
            if segs.is_empty() {
                return None;
            }
            // A bad value of a required key cannot just be dropped (serde would then stop
            // at "missing key"), so try a stand-in of another type first; the entry is not
            // used either way, the point is to reach the next problem.
            let substituted = !err.message().starts_with("unknown field")
                && substitute(&mut value, &segs, span.start, err.message(), |v| {
                    T::deserialize(toml::de::ValueDeserializer::from(v))
                        .err()
                        .map(|e| e.span().map_or(usize::MAX, |s| s.start))
                });
            if !substituted && !remove_at(value.get_mut(), &segs) {
                return None;
            }
            dropped.push(path);
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The dotted key path of the deepest key or element at byte `pos`, and how to reach it.
fn path_at(value: &Spanned<DeValue<'_>>, pos: usize, prefix: &str) -> (String, Vec<Seg>) {
    let segs = find_path(value, pos).unwrap_or_default();
    let mut path = prefix.to_string();
    for seg in &segs {
        match seg {
            Seg::Key(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Seg::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    (path, segs)
}

/// Searches the whole subtree rather than only children whose span holds `pos`: tables made
/// by dotted keys (`args.n = { .. }`) carry spans that need not cover their contents.
fn find_path(value: &Spanned<DeValue<'_>>, pos: usize) -> Option<Vec<Seg>> {
    let children: Vec<(Seg, &Spanned<DeValue<'_>>, bool)> = match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| {
                (
                    Seg::Key(k.get_ref().to_string()),
                    v,
                    k.span().contains(&pos),
                )
            })
            .collect(),
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (Seg::Index(i), v, false))
            .collect(),
        _ => return None,
    };
    for (seg, _, in_key) in &children {
        if *in_key {
            return Some(vec![seg.clone()]);
        }
    }
    for (seg, v, _) in &children {
        let here = v.span().contains(&pos) || v.span().start == pos;
        match find_path(v, pos) {
            Some(mut sub) => {
                sub.insert(0, seg.clone());
                return Some(sub);
            }
            None if here => return Some(vec![seg.clone()]),
            None => {}
        }
    }
    None
}

fn remove_at(value: &mut DeValue<'_>, segs: &[Seg]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (cur, seg) {
            (DeValue::Table(t), Seg::Key(k)) => match t.get_mut(k.as_str()) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            (DeValue::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
                Some(v) => v.get_mut(),
                None => return false,
            },
            _ => return false,
        };
    }
    match (cur, last) {
        (DeValue::Table(t), Seg::Key(k)) => t.remove(k.as_str()).is_some(),
        (DeValue::Array(a), Seg::Index(i)) => {
            let mut out = DeArray::new();
            for (j, v) in a.iter().enumerate() {
                if j != *i {
                    out.push(v.clone());
                }
            }
            *a = out;
            true
        }
        _ => false,
    }
}

/// Replace the value at `segs` with the first stand-in that moves the error away from `pos`.
/// `try_decode` returns where the next error starts, or `None` when decoding succeeds.
fn substitute<'i>(
    value: &mut Spanned<DeValue<'i>>,
    segs: &[Seg],
    pos: usize,
    message: &str,
    try_decode: impl Fn(Spanned<DeValue<'i>>) -> Option<usize>,
) -> bool {
    let Some(span) = get_at_mut(value, segs).map(|v| v.span()) else {
        return false;
    };
    let mut candidates: Vec<DeValue<'i>> = Vec::new();
    // "unknown variant `x`, expected one of `a`, `b`": the first expected name is valid.
    if let Some(first) = backticked(message).get(1) {
        candidates.push(DeValue::String(std::borrow::Cow::Owned(first.to_string())));
    }
    for text in ["\"\"", "\"1s\"", "1", "1.0", "true", "[]", "{}"] {
        if let Ok(v) = DeValue::parse(text) {
            candidates.push(v.into_inner());
        }
    }
    for c in candidates {
        let mut trial = value.clone();
        if let Some(slot) = get_at_mut(&mut trial, segs) {
            *slot = Spanned::new(span.clone(), c);
        }
        match try_decode(trial.clone()) {
            Some(next) if next == pos => continue,
            _ => {
                *value = trial;
                return true;
            }
        }
    }
    false
}

/// Add the key named by the last of `segs` with the first stand-in for which `still_fails`
/// is false.
fn insert_stand_in<'i>(
    value: &mut Spanned<DeValue<'i>>,
    segs: &[Seg],
    span: Range<usize>,
    still_fails: impl Fn(Spanned<DeValue<'i>>) -> bool,
) -> bool {
    let Some((Seg::Key(name), parent)) = segs.split_last() else {
        return false;
    };
    for text in ["\"\"", "\"1s\"", "1", "1.0", "true", "[]", "{}"] {
        let Ok(candidate) = DeValue::parse(text) else {
            continue;
        };
        let mut trial = value.clone();
        match get_at_mut(&mut trial, parent).map(|t| t.get_mut()) {
            Some(DeValue::Table(t)) => {
                t.insert(
                    Spanned::new(span.clone(), std::borrow::Cow::Owned(name.clone())),
                    Spanned::new(span.clone(), candidate.into_inner()),
                );
            }
            _ => return false,
        }
        if !still_fails(trial.clone()) {
            *value = trial;
            return true;
        }
    }
    false
}

fn get_at_mut<'a, 'i>(
    value: &'a mut Spanned<DeValue<'i>>,
    segs: &[Seg],
) -> Option<&'a mut Spanned<DeValue<'i>>> {
    let mut cur = value;
    for seg in segs {
        cur = match (cur.get_mut(), seg) {
            (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str())?,
            (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Names between backticks in a serde message, e.g. the expected fields or variants.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// serde's messages speak Rust ("field", "variant"); a lab engineer reads TOML keys and values.
fn tidy_message(msg: &str) -> String {
    let msg = msg.trim_end_matches('.').trim();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((bad, known)) = names.split_first() {
            return format!("unknown key `{bad}`{}", suggest_or_list(bad, known));
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        if let Some((bad, known)) = names.split_first() {
            return format!("unknown value \"{bad}\"{}", suggest_or_list(bad, known));
        }
    }
    if msg.starts_with("wanted exactly 1 element") {
        return "must be a table with exactly one key".to_string();
    }
    // serde's data-model words, in TOML's vocabulary.
    msg.replace("invalid type: ", "wrong type: ")
        .replace("type: sequence", "type: array")
        .replace("type: map", "type: table")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
}

fn syntax_message(msg: &str) -> String {
    format!("TOML syntax error: {}", msg.trim_end_matches('.'))
}

/// ` (did you mean `x`?)` when a known name is close, else ` (known: a, b)`.
pub fn suggest_or_list(bad: &str, known: &[&str]) -> String {
    if let Some(near) = nearest(bad, known.iter().copied()) {
        return format!(" (did you mean `{near}`?)");
    }
    if known.is_empty() {
        return " (none are known)".to_string();
    }
    format!(" (known: {})", known.join(", "))
}

/// The known name closest to `bad`, if it is close enough to be a likely typo.
pub fn nearest<'a>(bad: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(bad, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let s = Source::new("a.toml", "x = 1\ny = \"é\" z\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        // after the two-byte é the column still advances by one
        let z = s.text.find('z').unwrap();
        assert_eq!(s.line_col(z), (2, 9));
    }

    #[test]
    fn display_sorted() {
        let s = Source::new("f.toml", "a\nb\n");
        let d = Diagnostics(vec![
            s.error(2..3, "b", "second"),
            s.warning(0..1, "a", "first"),
        ]);
        assert_eq!(
            d.to_string(),
            "f.toml:1:1: a: warning: first\nf.toml:2:1: b: second"
        );
        assert!(d.has_errors());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest_or_list("pa_lnk", &["pa_link", "src_link"]),
            " (did you mean `pa_link`?)"
        );
        assert_eq!(suggest_or_list("zzz", &["a", "b"]), " (known: a, b)");
    }
}
