//! A generic line-based SCPI server for the simulated instruments.
//!
//! The server only frames lines and applies [`Faults`]; what a command means is up to the
//! [`ScpiDevice`]. Device state must not live in the per-connection device value: coupled
//! instruments share a [`super::plant::Plant`] and their own settings through an `Arc`, so the
//! `factory` of [`serve_tcp`] hands every connection a clone that sees the same instrument.
//!
//! Also here: a header matcher that accepts SCPI long and short forms ([`header_matches`]), an
//! argument splitter that respects quotes and channel lists, NR3 formatting, and the per-device
//! error queue ([`ErrorQueue`]).
//!
//! Simplification: every `;`-separated command in a line is matched from the root of the command
//! tree (real SCPI resolves a command without a leading colon relative to the previous one).

use std::collections::VecDeque;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fault::Faults;

/// Longest request line kept; a longer one is discarded up to its newline so a babbling client
/// cannot grow the buffer without bound.
pub const MAX_LINE: usize = 4096;

/// What a garbage fault answers instead of a reply: not a number, not even valid UTF-8.
pub const GARBAGE_REPLY: &[u8] = b"\xff\xfe#@!garbage\x00\xc3\n";

/// One simulated SCPI instrument.
pub trait ScpiDevice: Send {
    /// Handle one command (no `;` inside, no terminator). `None` for a command without reply.
    fn handle(&mut self, line: &str) -> Option<String>;

    /// When a command must not be answered before some instant (`*OPC?` during a measurement),
    /// the server waits until then before calling [`ScpiDevice::handle`]. Waiting here rather than
    /// in `handle` keeps the runtime free and works with a paused tokio clock.
    fn hold_until(&self, _command: &str) -> Option<Instant> {
        None
    }
}

impl<D: ScpiDevice + ?Sized> ScpiDevice for Box<D> {
    fn handle(&mut self, line: &str) -> Option<String> {
        (**self).handle(line)
    }
    fn hold_until(&self, command: &str) -> Option<Instant> {
        (**self).hold_until(command)
    }
}

/// Split a request line into its `;`-separated commands, ignoring `;` inside quotes.
pub fn split_commands(line: &str) -> Vec<&str> {
    split_outside(line, ';', false)
        .into_iter()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Split an argument list on `,`, ignoring commas inside quotes and parentheses (channel lists
/// such as `(@101,103)`). Empty input gives no arguments.
pub fn split_args(args: &str) -> Vec<&str> {
    if args.trim().is_empty() {
        return Vec::new();
    }
    split_outside(args, ',', true)
        .into_iter()
        .map(str::trim)
        .collect()
}

fn split_outside(s: &str, sep: char, parens: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' if parens => depth += 1,
                ')' if parens => depth = depth.saturating_sub(1),
                c if c == sep && depth == 0 => {
                    out.push(&s[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            },
        }
    }
    out.push(&s[start..]);
    out
}

/// One command split into header and arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// The header as sent, e.g. `:NUM:NORM:VAL?`.
    pub header: &'a str,
    /// Everything after the header's whitespace, trimmed.
    pub args: &'a str,
}

impl<'a> Command<'a> {
    pub fn parse(line: &'a str) -> Command<'a> {
        let line = line.trim();
        match line.find(char::is_whitespace) {
            Some(i) => Command {
                header: &line[..i],
                args: line[i..].trim(),
            },
            None => Command {
                header: line,
                args: "",
            },
        }
    }

    pub fn is_query(&self) -> bool {
        self.header.ends_with('?')
    }

    /// The numeric suffixes of the header if it matches `pattern` (see [`header_matches`]).
    pub fn matches(&self, pattern: &str) -> Option<Vec<u32>> {
        header_matches(pattern, self.header)
    }

    pub fn is(&self, pattern: &str) -> bool {
        self.matches(pattern).is_some()
    }

    pub fn args(&self) -> Vec<&'a str> {
        split_args(self.args)
    }
}

/// Match a header against a SCPI pattern and return the numeric suffixes of the pattern's
/// `#` nodes (1 when the header omits it).
///
/// Pattern syntax: `:NUMeric:NORMal:ITEM#?`. Upper-case letters are the short form, the whole
/// word the long form; either is accepted in any case. `[:NODE]` is optional; a trailing `?` makes
/// it a query. Common commands (`*IDN?`) match case-insensitively. A leading colon is optional in
/// the header.
pub fn header_matches(pattern: &str, header: &str) -> Option<Vec<u32>> {
    let (pattern, p_query) = strip_query(pattern);
    let (header, h_query) = strip_query(header.trim());
    if p_query != h_query {
        return None;
    }
    if pattern.starts_with('*') || header.starts_with('*') {
        return pattern.eq_ignore_ascii_case(header).then(Vec::new);
    }
    let nodes = parse_pattern(pattern);
    let parts: Vec<&str> = header.trim_start_matches(':').split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut suffixes = Vec::new();
    match_nodes(&nodes, &parts, &mut suffixes).then_some(suffixes)
}

fn strip_query(s: &str) -> (&str, bool) {
    match s.strip_suffix('?') {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

#[derive(Debug)]
struct Node<'a> {
    long: &'a str,
    optional: bool,
    suffix: bool,
}

fn parse_pattern(pattern: &str) -> Vec<Node<'_>> {
    let mut nodes = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let (optional, body, next) = if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            (true, &r[..end], r.get(end + 1..).unwrap_or(""))
        } else {
            let r = rest.strip_prefix(':').unwrap_or(rest);
            let end = r.find([':', '[']).unwrap_or(r.len());
            (false, &r[..end], &r[end..])
        };
        let body = body.trim_start_matches(':');
        let (long, suffix) = match body.strip_suffix('#') {
            Some(b) => (b, true),
            None => (body, false),
        };
        nodes.push(Node {
            long,
            optional,
            suffix,
        });
        rest = next;
    }
    nodes
}

fn match_nodes(nodes: &[Node<'_>], parts: &[&str], suffixes: &mut Vec<u32>) -> bool {
    let Some((node, rest_nodes)) = nodes.split_first() else {
        return parts.is_empty();
    };
    if let Some((part, rest_parts)) = parts.split_first() {
        let mark = suffixes.len();
        if let Some(n) = match_node(node, part) {
            if node.suffix {
                suffixes.push(n);
            }
            if match_nodes(rest_nodes, rest_parts, suffixes) {
                return true;
            }
            suffixes.truncate(mark);
        }
    }
    if node.optional {
        let mark = suffixes.len();
        if node.suffix {
            suffixes.push(1);
        }
        if match_nodes(rest_nodes, parts, suffixes) {
            return true;
        }
        suffixes.truncate(mark);
    }
    false
}

/// The suffix (1 when absent) if `part` names `node`.
fn match_node(node: &Node<'_>, part: &str) -> Option<u32> {
    let digits = part.len() - part.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (name, num) = part.split_at(part.len() - digits);
    let n = if num.is_empty() {
        1
    } else if node.suffix {
        num.parse().ok()?
    } else {
        return None;
    };
    let short: String = node
        .long
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        .collect();
    (name.eq_ignore_ascii_case(node.long) || name.eq_ignore_ascii_case(&short)).then_some(n)
}

/// Parse a SCPI boolean (`ON`, `OFF`, `1`, `0`).
pub fn parse_bool(arg: &str) -> Option<bool> {
    let a = arg.trim();
    if a.eq_ignore_ascii_case("ON") || a == "1" {
        Some(true)
    } else if a.eq_ignore_ascii_case("OFF") || a == "0" {
        Some(false)
    } else {
        None
    }
}

/// Parse a SCPI decimal number (NR1/NR2/NR3), finite only.
pub fn parse_number(arg: &str) -> Option<f64> {
    arg.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// NR3 with `decimals` digits after the point and a signed two-digit exponent
/// (`2.3001E+02`); `NAN` / `INF` for non-finite values, as the Yokogawa ASCII format does.
pub fn nr3(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "NAN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "INF" } else { "-INF" }.to_string();
    }
    let s = format!("{v:.decimals$E}");
    match s.split_once('E') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}E{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// A SCPI error/event queue. Holds at most 30 entries; when full the last one becomes
/// `-350,"Queue overflow"` as IEEE 488.2 prescribes.
#[derive(Debug, Clone, Default)]
pub struct ErrorQueue {
    entries: VecDeque<(i32, String)>,
}

impl ErrorQueue {
    const CAPACITY: usize = 30;

    pub fn push(&mut self, code: i32, message: &str) {
        if self.entries.len() >= Self::CAPACITY {
            if let Some(last) = self.entries.back_mut() {
                *last = (-350, "Queue overflow".to_string());
            }
            return;
        }
        self.entries.push_back((code, message.to_string()));
    }

    pub fn pop(&mut self) -> Option<(i32, String)> {
        self.entries.pop_front()
    }

    /// The oldest entry formatted as `code,"message"`, or `0,"No error"`. `plus` writes a `+`
    /// on non-negative codes (`+0,"No error"`, as the 34970A does).
    pub fn pop_formatted(&mut self, plus: bool) -> String {
        let (code, msg) = self.pop().unwrap_or((0, "No error".to_string()));
        if plus && code >= 0 {
            format!("+{code},\"{msg}\"")
        } else {
            format!("{code},\"{msg}\"")
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn undefined_header(&mut self) {
        self.push(-113, "Undefined header");
    }

    pub fn out_of_range(&mut self) {
        self.push(-222, "Data out of range");
    }

    pub fn illegal_parameter(&mut self) {
        self.push(-224, "Illegal parameter value");
    }

    pub fn missing_parameter(&mut self) {
        self.push(-109, "Missing parameter");
    }
}

/// Accept connections forever; each gets its own `factory()` device value (which must share the
/// instrument's state, see the module doc) and its own copy of `faults`. Dropping the future
/// closes every connection it accepted.
pub async fn serve_tcp<F>(listener: TcpListener, factory: F, faults: Faults) -> io::Result<()>
where
    F: Fn() -> Box<dyn ScpiDevice>,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Running out of file descriptors and similar are transient: keep serving.
                        tracing::warn!(message = "sim accept failed", error = %e);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let device = factory();
                let faults = faults.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_stream(stream, device, faults).await {
                        tracing::debug!(message = "sim connection ended", %peer, error = %e);
                    }
                });
            }
            // Reap finished connections so the set does not grow with every client.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serve one byte stream (a TCP connection or a pseudo-terminal) until the peer closes it, a
/// read fails, or the `drop_after` fault fires.
pub async fn serve_stream<S, D>(mut stream: S, mut device: D, faults: Faults) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: ScpiDevice,
{
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut discarding = false;
    let mut requests: u64 = 0;
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        for &b in &chunk[..n] {
            if b != b'\n' {
                if discarding {
                    continue;
                }
                if buf.len() >= MAX_LINE {
                    tracing::debug!(message = "sim discarding overlong request line");
                    buf.clear();
                    discarding = true;
                    continue;
                }
                buf.push(b);
                continue;
            }
            if std::mem::take(&mut discarding) {
                continue;
            }
            let line = String::from_utf8_lossy(&buf).trim().to_string();
            buf.clear();
            if line.is_empty() {
                continue;
            }
            requests += 1;
            if !faults.silent {
                if let Some(reply) = handle_line(&mut device, &line).await {
                    if let Some(d) = faults.delay {
                        tokio::time::sleep(d).await;
                    }
                    if faults.garbage {
                        stream.write_all(GARBAGE_REPLY).await?;
                    } else {
                        stream.write_all(reply.as_bytes()).await?;
                        stream.write_all(b"\n").await?;
                    }
                    stream.flush().await?;
                }
            }
            if faults.drop_after.is_some_and(|max| requests >= max) {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Run every command of one line through the device; replies joined by `;`.
async fn handle_line<D: ScpiDevice>(device: &mut D, line: &str) -> Option<String> {
    let mut replies = Vec::new();
    for command in split_commands(line) {
        if let Some(at) = device.hold_until(command) {
            tokio::time::sleep_until(at).await;
        }
        if let Some(r) = device.handle(command) {
            replies.push(r);
        }
    }
    (!replies.is_empty()).then(|| replies.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_short_and_case_forms_match() {
        let p = ":NUMeric:NORMal:VALue?";
        for h in [
            ":NUMeric:NORMal:VALue?",
            ":NUM:NORM:VAL?",
            ":num:norm:value?",
            "NUM:NORMAL:val?",
        ] {
            assert!(header_matches(p, h).is_some(), "{h}");
        }
        for h in [
            ":NUM:NORM:VAL",
            ":NUME:NORM:VAL?",
            ":NUM:NORM:VALU?",
            ":NUM::VAL?",
        ] {
            assert!(header_matches(p, h).is_none(), "{h}");
        }
    }

    #[test]
    fn suffixes_and_optional_nodes() {
        let p = ":NUMeric[:NORMal]:ITEM#";
        assert_eq!(header_matches(p, ":NUM:NORM:ITEM3"), Some(vec![3]));
        assert_eq!(header_matches(p, "num:item12"), Some(vec![12]));
        assert_eq!(header_matches(p, ":NUM:ITEM"), Some(vec![1]));
        assert!(header_matches(":STATus:FILTer#", ":STAT:FILT1").is_some());
        assert!(header_matches(":STATus:ERRor?", ":STAT:ERR1?").is_none());
        let v = "[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude][:AC]";
        for h in [
            "VOLT",
            ":SOUR:VOLT:AC",
            "sour:volt:lev:imm:ampl:ac",
            "volt:ac",
        ] {
            assert!(header_matches(v, h).is_some(), "{h}");
        }
        assert!(header_matches(v, "VOLT:RANG").is_none());
        assert!(header_matches("*IDN?", "*idn?").is_some());
        assert!(header_matches("*IDN?", "*IDN").is_none());
    }

    #[test]
    fn splitting_respects_quotes_and_channel_lists() {
        assert_eq!(
            split_commands("A 1; B?;;\"x;y\""),
            vec!["A 1", "B?", "\"x;y\""]
        );
        assert_eq!(split_args("TC,K,(@101,103)"), vec!["TC", "K", "(@101,103)"]);
        assert!(split_args("  ").is_empty());
        let c = Command::parse("  :NUM:NORM:ITEM1   U, 1 ");
        assert_eq!(c.header, ":NUM:NORM:ITEM1");
        assert_eq!(c.args(), vec!["U", "1"]);
    }

    #[test]
    fn nr3_formats_like_the_instruments() {
        assert_eq!(nr3(230.01, 4), "2.3001E+02");
        assert_eq!(nr3(0.0412, 4), "4.1200E-02");
        assert_eq!(nr3(0.0, 4), "0.0000E+00");
        assert_eq!(nr3(-12.5, 8), "-1.25000000E+01");
        assert_eq!(nr3(f64::NAN, 4), "NAN");
        assert_eq!(nr3(f64::INFINITY, 4), "INF");
        assert_eq!(nr3(9.9e37, 8), "9.90000000E+37");
    }

    #[test]
    fn error_queue_is_fifo_and_bounded() {
        let mut q = ErrorQueue::default();
        assert_eq!(q.pop_formatted(false), "0,\"No error\"");
        q.undefined_header();
        q.out_of_range();
        assert_eq!(q.pop_formatted(false), "-113,\"Undefined header\"");
        assert_eq!(q.pop_formatted(true), "-222,\"Data out of range\"");
        assert_eq!(q.pop_formatted(true), "+0,\"No error\"");
        for _ in 0..100 {
            q.undefined_header();
        }
        assert_eq!(q.len(), 30);
        for _ in 0..29 {
            q.pop();
        }
        assert_eq!(q.pop().map(|e| e.0), Some(-350));
    }
}
