//! Loading and checking driver files.
//!
//! Every entry (quantity, block, measurement, action) is decoded on its own and then every
//! cross-reference is checked, so one load reports all of a file's problems with their
//! file:line:col and key. A driver that loads here is one the instrument engine can run
//! without meeting a dangling name or an impossible register at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::schema::*;
use super::{Driver, DriverSet};
use crate::diag::{DeValue, Diagnostics, Doc, Source, suggest_or_list};
use crate::modbus::value::{Table, ValueType};
use toml::Spanned;

/// Parse and check one driver file.
pub fn parse_driver(source: &Source) -> Result<Driver, Diagnostics> {
    parse_with_name_span(source).map(|(d, _)| d)
}

/// Read, parse and check one driver file.
pub fn load_file(path: &Path) -> Result<Driver, Diagnostics> {
    let source = Source::read(path)?;
    parse_driver(&source)
}

/// Parse and check several driver files; names must be unique across them.
pub fn load_sources(sources: &[Source]) -> Result<DriverSet, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut set = DriverSet::new();
    for source in sources {
        match parse_with_name_span(source) {
            Ok((driver, span)) => {
                if let Some(first) = set.get(driver.name()) {
                    diags.push(source.error(
                        span,
                        "driver.name",
                        format!(
                            "duplicate driver name \"{}\" (also in {})",
                            driver.name(),
                            first.source.display()
                        ),
                    ));
                } else {
                    set.insert(driver.name().to_string(), Arc::new(driver));
                }
            }
            Err(d) => diags.extend(d),
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(set)
    }
}

/// Load every `*.toml` file in each directory (in name order, not recursing).
pub fn load_dirs(dirs: &[PathBuf]) -> Result<DriverSet, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut sources = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                diags.push(crate::diag::Diagnostic {
                    file: dir.clone(),
                    line: 1,
                    col: 1,
                    key: String::new(),
                    message: format!("cannot read drivers directory: {e}"),
                    severity: crate::diag::Severity::Error,
                });
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            match Source::read(&p) {
                Ok(s) => sources.push(s),
                Err(d) => diags.push(d),
            }
        }
    }
    match load_sources(&sources) {
        Ok(set) if !diags.has_errors() => Ok(set),
        Ok(_) => Err(diags),
        Err(d) => {
            diags.extend(d);
            Err(diags)
        }
    }
}

/// The `[driver] name` of every parseable `*.toml` in `dirs`, valid or not; lets the config
/// check tell "no such driver" from "that driver's file has errors".
pub fn declared_names(dirs: &[PathBuf]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let Ok(source) = Source::read(&p) else {
                continue;
            };
            let Ok(doc) = source.parse_toml() else {
                continue;
            };
            let name = doc
                .get_ref()
                .get("driver")
                .and_then(|d| d.get_ref().get("name"))
                .and_then(|n| n.get_ref().as_str().map(str::to_string));
            if let Some(n) = name {
                names.insert(n);
            }
        }
    }
    names
}

const TOP_KEYS: &[&str] = &[
    "driver",
    "identity",
    "scpi",
    "modbus",
    "init",
    "quantities",
    "blocks",
    "measurements",
    "actions",
];

fn parse_with_name_span(source: &Source) -> Result<(Driver, Range<usize>), Diagnostics> {
    let doc = source.parse_toml()?;
    let mut diags = Diagnostics::new();
    let root = doc.get_ref();
    source.unknown_sections(&doc, TOP_KEYS, &mut diags);

    let meta: Option<DriverMeta> = match root.get("driver") {
        Some(v) => source.decode("driver", v, &mut diags),
        None => {
            diags.push(source.error(0..0, "driver", "missing [driver] section"));
            None
        }
    };
    let identity: Option<Identity> = root
        .get("identity")
        .and_then(|v| source.decode("identity", v, &mut diags));
    let scpi: Option<ScpiSettings> = root
        .get("scpi")
        .and_then(|v| source.decode("scpi", v, &mut diags));
    let modbus: Option<ModbusSettings> = root
        .get("modbus")
        .and_then(|v| source.decode("modbus", v, &mut diags));
    let init: Vec<String> = root
        .get("init")
        .and_then(|v| source.decode("init", v, &mut diags))
        .unwrap_or_default();
    let mut names = BTreeMap::new();
    let quantities: BTreeMap<String, Quantity> =
        decode_map(source, &doc, "quantities", &mut diags, &mut names);
    let blocks: BTreeMap<String, Block> =
        decode_map(source, &doc, "blocks", &mut diags, &mut names);
    let measurements: BTreeMap<String, Measurement> =
        decode_map(source, &doc, "measurements", &mut diags, &mut names);
    let actions: BTreeMap<String, Action> =
        decode_map(source, &doc, "actions", &mut diags, &mut names);

    let Some(meta) = meta else {
        return Err(diags);
    };
    let name_span = span_of(&doc, &["driver", "name"]);
    let file = DriverFile {
        driver: meta,
        identity,
        scpi: scpi.clone(),
        modbus,
        init,
        quantities,
        blocks,
        measurements,
        actions,
    };
    let mut cx = Check {
        src: source,
        doc: &doc,
        diags,
        names,
    };
    cx.check(&file, scpi.is_some());
    if cx.diags.has_errors() {
        return Err(cx.diags);
    }
    Ok((
        Driver {
            source: source.path.clone(),
            file,
        },
        name_span,
    ))
}

/// Decode every entry of a `[section.name]` table on its own. `names` records every entry
/// name present in the file, decoded or not, so a reference to a broken entry is not also
/// reported as dangling.
fn decode_map<T: DeserializeOwned>(
    source: &Source,
    doc: &Doc<'_>,
    section: &str,
    diags: &mut Diagnostics,
    names: &mut BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(v) = doc.get_ref().get(section) else {
        return out;
    };
    let Some(table) = v.get_ref().as_table() else {
        diags.push(source.error(
            v.span(),
            section,
            format!("`{section}` must be a table of named entries"),
        ));
        return out;
    };
    let seen = names.entry(section.to_string()).or_default();
    for (k, entry) in table.iter() {
        let name = k.get_ref().to_string();
        seen.insert(name.clone());
        if let Some(t) = source.decode(&format!("{section}.{name}"), entry, diags) {
            out.insert(name, t);
        }
    }
    out
}

/// The span of the value at `path` (segments like `fields` or `[2]`), or of the nearest
/// parent that exists.
pub(crate) fn span_of(doc: &Doc<'_>, path: &[&str]) -> Range<usize> {
    let mut span = doc.span();
    let mut cur: Option<&Spanned<DeValue<'_>>> = None;
    for (i, seg) in path.iter().enumerate() {
        let next = match (cur.map(|c| c.get_ref()), seg.strip_prefix('[')) {
            (None, _) if i == 0 => doc.get_ref().get(*seg),
            (Some(DeValue::Table(t)), None) => t.get(*seg),
            (Some(DeValue::Array(a)), Some(idx)) => idx
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(v) => {
                span = v.span();
                cur = Some(v);
            }
            None => break,
        }
    }
    span
}

fn key_text(path: &[&str]) -> String {
    let mut s = String::new();
    for seg in path {
        if !seg.starts_with('[') && !s.is_empty() {
            s.push('.');
        }
        s.push_str(seg);
    }
    s
}

struct Check<'a, 'd> {
    src: &'a Source,
    doc: &'a Doc<'d>,
    diags: Diagnostics,
    names: BTreeMap<String, BTreeSet<String>>,
}

impl Check<'_, '_> {
    fn err(&mut self, path: &[&str], msg: impl Into<String>) {
        let span = span_of(self.doc, path);
        self.diags.push(self.src.error(span, &key_text(path), msg));
    }

    fn has(&self, section: &str, name: &str) -> bool {
        self.names.get(section).is_some_and(|s| s.contains(name))
    }

    fn known(&self, section: &str) -> Vec<String> {
        self.names
            .get(section)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn unknown_name(&mut self, path: &[&str], what: &str, name: &str, sections: &[&str]) {
        let known: Vec<String> = sections.iter().flat_map(|s| self.known(s)).collect();
        let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
        self.err(
            path,
            format!(
                "unknown {what} \"{name}\"{}",
                suggest_or_list(name, &known_refs)
            ),
        );
    }

    fn nonzero(&mut self, path: &[&str], d: Option<Duration>) {
        if d == Some(Duration::ZERO) {
            self.err(path, "duration must be greater than zero");
        }
    }

    fn check(&mut self, f: &DriverFile, has_scpi: bool) {
        let scpi_proto = f.driver.protocol == Protocol::Scpi;
        if f.driver.name.trim().is_empty() {
            self.err(&["driver", "name"], "driver name must not be empty");
        }
        if !scpi_proto && has_scpi {
            self.err(
                &["scpi"],
                "[scpi] section is only allowed with protocol \"scpi\"",
            );
        }
        if scpi_proto && f.modbus.is_some() {
            self.err(
                &["modbus"],
                "[modbus] section is only allowed with protocol \"modbus\"",
            );
        }
        if !scpi_proto && f.modbus.is_none() && self.doc.get_ref().get("modbus").is_none() {
            self.err(
                &["driver", "protocol"],
                "protocol \"modbus\" needs a [modbus] section with address_base",
            );
        }
        if !scpi_proto && !f.init.is_empty() {
            self.err(&["init"], "init commands are only for scpi drivers");
        }
        if let Some(s) = &f.scpi {
            self.check_scpi(s);
        }
        let base = match &f.modbus {
            Some(m) => {
                if m.address_base > 1 {
                    self.err(&["modbus", "address_base"], "address_base must be 0 or 1");
                }
                if m.max_count == 0 {
                    self.err(&["modbus", "max_count"], "max_count must be at least 1");
                }
                self.nonzero(&["modbus", "timeout"], m.timeout);
                u32::from(m.address_base.min(1))
            }
            None => 0,
        };
        if let Some(id) = &f.identity {
            self.check_identity(id, scpi_proto);
        }

        // Quantities that a block field or a measurement fetch provides need no query.
        let mut provided: BTreeSet<&str> = BTreeSet::new();
        for b in f.blocks.values() {
            provided.extend(b.fields.iter().map(String::as_str));
        }
        for m in f.measurements.values() {
            provided.extend(m.fetch.iter().map(String::as_str));
        }
        for (name, q) in &f.quantities {
            if scpi_proto {
                self.check_scpi_quantity(name, q, provided.contains(name.as_str()));
            } else {
                self.check_modbus_quantity(name, q, base);
            }
        }
        for (name, b) in &f.blocks {
            self.check_block(name, b, scpi_proto);
        }
        for (name, m) in &f.measurements {
            self.check_measurement(name, m, scpi_proto);
        }
        for (name, a) in &f.actions {
            self.check_action(name, a, scpi_proto, base);
        }
    }

    fn check_scpi(&mut self, s: &ScpiSettings) {
        self.nonzero(&["scpi", "timeout"], s.timeout);
        if s.check_errors && s.error_query.as_deref().is_none_or(|q| q.trim().is_empty()) {
            self.err(&["scpi", "check_errors"], "check_errors needs error_query");
        }
        if s.read_termination.is_empty() {
            self.err(
                &["scpi", "read_termination"],
                "read_termination must not be empty",
            );
        }
        for (i, m) in s.invalid.iter().enumerate() {
            let idx = format!("[{i}]");
            if m.token.is_some() == m.value.is_some() {
                self.err(
                    &["scpi", "invalid", &idx],
                    "an invalid marker needs exactly one of token or value",
                );
            }
        }
    }

    fn check_identity(&mut self, id: &Identity, scpi_proto: bool) {
        if scpi_proto {
            if id.query.as_deref().is_none_or(|q| q.trim().is_empty()) {
                self.err(&["identity"], "identity of a scpi driver needs query");
            }
            if id.quantity.is_some() {
                self.err(
                    &["identity", "quantity"],
                    "identity quantity is for modbus drivers; use query",
                );
            }
        } else {
            if id.query.is_some() {
                self.err(
                    &["identity", "query"],
                    "identity query is for scpi drivers; use quantity",
                );
            }
            match &id.quantity {
                None => self.err(&["identity"], "identity of a modbus driver needs quantity"),
                Some(q) if !self.has("quantities", q) => {
                    self.unknown_name(&["identity", "quantity"], "quantity", q, &["quantities"])
                }
                Some(_) => {}
            }
        }
    }

    fn check_scpi_quantity(&mut self, name: &str, q: &Quantity, provided: bool) {
        let p = ["quantities", name];
        for (key, set) in [
            ("table", q.table.is_some()),
            ("address", q.address.is_some()),
            ("type", q.value_type.is_some()),
            ("order", q.order.is_some()),
            ("bit", q.bit.is_some()),
            ("length", q.length.is_some()),
        ] {
            if set {
                self.err(
                    &["quantities", name, key],
                    format!("`{key}` is a modbus key; this is a scpi driver"),
                );
            }
        }
        match &q.query {
            Some(query) if query.trim().is_empty() => {
                self.err(&["quantities", name, "query"], "query must not be empty")
            }
            Some(_) => {}
            None if !provided => self.err(
                &p,
                "quantity needs query (or must be a block field or a measurement fetch)",
            ),
            None => {}
        }
        self.nonzero(&["quantities", name, "timeout"], q.timeout);
    }

    fn check_modbus_quantity(&mut self, name: &str, q: &Quantity, base: u32) {
        for (key, set) in [
            ("query", q.query.is_some()),
            ("field", q.field.is_some()),
            ("timeout", q.timeout.is_some()),
        ] {
            if set {
                self.err(
                    &["quantities", name, key],
                    format!("`{key}` is a scpi key; this is a modbus driver"),
                );
            }
        }
        let mut missing = Vec::new();
        if q.table.is_none() {
            missing.push("table");
        }
        if q.address.is_none() {
            missing.push("address");
        }
        if q.value_type.is_none() {
            missing.push("type");
        }
        if !missing.is_empty() {
            self.err(
                &["quantities", name],
                format!(
                    "modbus quantity needs table, address and type (missing: {})",
                    missing.join(", ")
                ),
            );
        }
        self.check_register(
            &["quantities", name],
            q.table,
            q.address,
            q.value_type,
            q.bit,
            q.length,
            base,
        );
    }

    /// Checks shared by quantities and writes: the value fits its table and the address space.
    #[allow(clippy::too_many_arguments)]
    fn check_register(
        &mut self,
        path: &[&str],
        table: Option<Table>,
        address: Option<u16>,
        ty: Option<ValueType>,
        bit: Option<u8>,
        length: Option<u16>,
        base: u32,
    ) {
        let at = |k: &'static str| -> Vec<&str> {
            let mut v = path.to_vec();
            v.push(k);
            v
        };
        if let Some(b) = bit {
            if ty != Some(ValueType::Bit) {
                self.err(&at("bit"), "bit is only allowed with type \"bit\"");
            } else if b > 15 {
                self.err(&at("bit"), "bit must be 0..=15");
            }
        } else if ty == Some(ValueType::Bit) {
            self.err(path, "type \"bit\" needs bit (0..=15)");
        }
        if length.is_some() && ty != Some(ValueType::String) {
            self.err(&at("length"), "length is only allowed with type \"string\"");
        }
        if ty == Some(ValueType::String) && length.unwrap_or(0) == 0 {
            self.err(path, "type \"string\" needs length (registers, at least 1)");
        }
        let bit_table = matches!(table, Some(Table::Coil | Table::DiscreteInput));
        if bit_table {
            if let Some(t) = ty.filter(|t| *t != ValueType::Bool) {
                self.err(
                    &at("type"),
                    format!(
                        "coil and discrete_input hold single bits; type must be \"bool\", not \"{}\"",
                        t
                    ),
                );
            }
        }
        if let Some(addr) = address {
            let addr = u32::from(addr);
            if addr < base {
                self.err(
                    &at("address"),
                    format!("address {addr} is below address_base {base}"),
                );
            } else {
                let count = if bit_table {
                    1
                } else {
                    ty.map_or(1, |t| registers(t, length))
                };
                let last = addr - base + count.max(1) - 1;
                if last > 65535 {
                    self.err(
                        &at("address"),
                        format!("address {addr} plus {count} registers goes beyond 65535"),
                    );
                }
            }
        }
    }

    fn check_block(&mut self, name: &str, b: &Block, scpi_proto: bool) {
        if !scpi_proto {
            self.err(&["blocks", name], "blocks are only for scpi drivers");
        }
        if b.query.trim().is_empty() {
            self.err(&["blocks", name, "query"], "query must not be empty");
        }
        if b.fields.is_empty() {
            self.err(&["blocks", name, "fields"], "fields must not be empty");
        }
        if b.fields.iter().all(String::is_empty) && !b.fields.is_empty() {
            self.err(&["blocks", name, "fields"], "fields name no quantity");
        }
        for (i, f) in b.fields.iter().enumerate() {
            if !f.is_empty() && !self.has("quantities", f) {
                let idx = format!("[{i}]");
                self.unknown_name(
                    &["blocks", name, "fields", &idx],
                    "quantity",
                    f,
                    &["quantities"],
                );
            }
        }
        self.nonzero(&["blocks", name, "timeout"], b.timeout);
    }

    fn check_measurement(&mut self, name: &str, m: &Measurement, scpi_proto: bool) {
        let p = ["measurements", name];
        if m.start.is_empty() {
            self.err(&["measurements", name, "start"], "start must not be empty");
        }
        if m.fetch.is_empty() {
            self.err(&["measurements", name, "fetch"], "fetch must not be empty");
        }
        if !scpi_proto {
            self.err(&p, "measurements are only for scpi drivers");
        }
        for (i, f) in m.fetch.iter().enumerate() {
            if !self.has("quantities", f) && !self.has("blocks", f) {
                let idx = format!("[{i}]");
                self.unknown_name(
                    &["measurements", name, "fetch", &idx],
                    "quantity or block",
                    f,
                    &["quantities", "blocks"],
                );
            }
        }
        self.nonzero(&["measurements", name, "timeout"], m.timeout);
        match &m.wait {
            Wait::Opc(q) if q.trim().is_empty() => self.err(
                &["measurements", name, "wait", "opc"],
                "query must not be empty",
            ),
            Wait::Poll {
                query, interval, ..
            } => {
                if query.trim().is_empty() {
                    self.err(
                        &["measurements", name, "wait", "poll", "query"],
                        "query must not be empty",
                    );
                }
                self.nonzero(
                    &["measurements", name, "wait", "poll", "interval"],
                    Some(*interval),
                );
            }
            Wait::Delay(d) => {
                self.nonzero(&["measurements", name, "wait", "delay"], Some(*d));
            }
            Wait::Opc(_) => {}
        }
    }

    fn check_action(&mut self, name: &str, a: &Action, scpi_proto: bool, base: u32) {
        let p = ["actions", name];
        self.nonzero(&["actions", name, "settle"], a.settle);
        if scpi_proto {
            if !a.writes.is_empty() {
                self.err(
                    &["actions", name, "writes"],
                    "writes are for modbus drivers; use commands",
                );
            }
            if a.commands.is_empty() {
                self.err(&p, "action needs at least one command");
            }
        } else {
            if !a.commands.is_empty() {
                self.err(
                    &["actions", name, "commands"],
                    "commands are for scpi drivers; use writes",
                );
            }
            if a.writes.is_empty() {
                self.err(&p, "action needs at least one write");
            }
        }
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (i, c) in a.commands.iter().enumerate() {
            let idx = format!("[{i}]");
            match placeholders(c) {
                Ok(names) => {
                    for n in names {
                        if !a.args.contains_key(&n) {
                            let known: Vec<&str> = a.args.keys().map(String::as_str).collect();
                            self.err(
                                &["actions", name, "commands", &idx],
                                format!(
                                    "template names undeclared argument \"{n}\"{}",
                                    suggest_or_list(&n, &known)
                                ),
                            );
                        }
                        used.insert(n);
                    }
                }
                Err(msg) => self.err(&["actions", name, "commands", &idx], msg),
            }
        }
        for (i, w) in a.writes.iter().enumerate() {
            let idx = format!("[{i}]");
            let wp = ["actions", name, "writes", idx.as_str()];
            let at = |k: &'static str| ["actions", name, "writes", idx.as_str(), k];
            if matches!(w.table, Table::Input | Table::DiscreteInput) {
                self.err(
                    &at("table"),
                    format!("table \"{}\" is read-only", table_name(w.table)),
                );
            }
            let ty = w.value_type.unwrap_or(match w.table {
                Table::Coil | Table::DiscreteInput => ValueType::Bool,
                _ => ValueType::U16,
            });
            match (&w.arg, w.value) {
                (Some(_), Some(_)) | (None, None) => {
                    self.err(&wp, "a write needs exactly one of arg or value")
                }
                (Some(arg), None) => {
                    match a.args.get(arg) {
                        None => self.unknown_arg(&at("arg"), arg, a),
                        Some(def) => self.check_written_enum(name, i, w, ty, arg, def),
                    }
                    used.insert(arg.clone());
                }
                (None, Some(_)) => {}
            }
            if let Some(arg) = &w.address_arg {
                used.insert(arg.clone());
            }
            if ty == ValueType::String {
                self.err(&at("type"), "writing type \"string\" is not supported");
            } else {
                let fixed = if w.address_arg.is_some() {
                    None
                } else {
                    w.address
                };
                self.check_register(&wp, Some(w.table), fixed, Some(ty), w.bit, None, base);
                self.check_write_address(name, i, w, a, ty, base);
            }
        }
        for (arg_name, arg) in &a.args {
            self.check_arg(name, arg_name, arg, scpi_proto);
            if !used.contains(arg_name) {
                self.err(
                    &["actions", name, "args", arg_name],
                    format!("argument \"{arg_name}\" is not used by any command or write"),
                );
            }
        }
    }

    fn unknown_arg(&mut self, path: &[&str], arg: &str, a: &Action) {
        let known: Vec<&str> = a.args.keys().map(String::as_str).collect();
        self.err(
            path,
            format!("unknown argument \"{arg}\"{}", suggest_or_list(arg, &known)),
        );
    }

    /// Where a write goes: a fixed `address`, or `address_arg` whose whole `min..=max` range
    /// must land inside the table, so no value the argument check lets through can miss it.
    fn check_write_address(
        &mut self,
        action: &str,
        i: usize,
        w: &ModbusWrite,
        a: &Action,
        ty: ValueType,
        base: u32,
    ) {
        let idx = format!("[{i}]");
        let wp = ["actions", action, "writes", idx.as_str()];
        let at = |k: &'static str| ["actions", action, "writes", idx.as_str(), k];
        let Some(arg) = &w.address_arg else {
            if w.address.is_none() {
                self.err(&wp, "a write needs address");
            }
            if w.address_step.is_some() {
                self.err(
                    &at("address_step"),
                    "address_step is only for writes with address_arg",
                );
            }
            return;
        };
        if w.address.is_none() {
            self.err(
                &wp,
                format!(
                    "a write with address_arg needs address: the address written when \
                     {arg} = 1"
                ),
            );
            return;
        }
        let count = if matches!(w.table, Table::Coil | Table::DiscreteInput) {
            1
        } else {
            registers(ty, None)
        };
        let step = w.address_step.unwrap_or(1);
        if step == 0 {
            self.err(&at("address_step"), "address_step must be at least 1");
        } else if u32::from(step) < count {
            let (path, default) = match w.address_step {
                Some(_) => (at("address_step").to_vec(), ""),
                None => (wp.to_vec(), " (the default)"),
            };
            self.err(
                &path,
                format!(
                    "address_step {step}{default} is less than the {count} registers of type \
                     \"{ty}\": neighbouring values of {arg} would overlap"
                ),
            );
        }
        let Some(def) = a.args.get(arg) else {
            self.unknown_arg(&at("address_arg"), arg, a);
            return;
        };
        if def.arg_type != ArgType::Int {
            self.err(
                &at("address_arg"),
                format!(
                    "address_arg \"{arg}\" must be an int argument, not {}",
                    arg_type_name(def.arg_type)
                ),
            );
            return;
        }
        let (Some(min), Some(max)) = (def.min, def.max) else {
            self.err(
                &at("address_arg"),
                format!(
                    "address_arg \"{arg}\" needs min and max: they bound the addresses this \
                     write can reach"
                ),
            );
            return;
        };
        // The integers the argument check accepts (`as` saturates far-out bounds).
        let (lo, hi) = (min.ceil() as i64, max.floor() as i64);
        if lo > hi {
            return;
        }
        let base = i128::from(base);
        let count = i128::from(count);
        let (Some(first), Some(last)) = (w.address_for(lo), w.address_for(hi)) else {
            return;
        };
        if first < base {
            self.err(
                &at("address_arg"),
                format!(
                    "at {arg} = {lo} (its min) this write's address is {first}, below \
                     address_base {base}"
                ),
            );
        }
        if last - base + count - 1 > 65535 {
            self.err(
                &at("address_arg"),
                format!(
                    "at {arg} = {hi} (its max) this write's address {last} plus {count} \
                     registers goes beyond 65535"
                ),
            );
        }
    }

    /// An enum written to a register needs a number per choice, and each number must fit
    /// the register the write puts it in.
    fn check_written_enum(
        &mut self,
        action: &str,
        i: usize,
        w: &ModbusWrite,
        ty: ValueType,
        arg: &str,
        def: &Arg,
    ) {
        if def.arg_type != ArgType::Enum {
            return;
        }
        let idx = format!("[{i}]");
        let Some(values) = &def.values else {
            self.err(
                &["actions", action, "writes", &idx, "arg"],
                format!(
                    "enum argument \"{arg}\" has no values: a register write needs a number for \
                     each choice (values = [...], one per choice, in order)"
                ),
            );
            return;
        };
        // Coils and bit writes take any number as on/off.
        if matches!(w.table, Table::Coil) || matches!(ty, ValueType::Bit | ValueType::Bool) {
            return;
        }
        for (k, v) in values.iter().enumerate() {
            if !v.is_finite() {
                continue; // reported by check_arg
            }
            let raw = crate::modbus::value::unscale(*v, w.scale, w.offset);
            let decoded = crate::modbus::value::Decoded::Number(raw);
            // The word order moves bytes around; it never decides whether a value fits.
            let order = w.order.unwrap_or_default();
            if let Err(e) = crate::modbus::value::encode(&decoded, ty, order, None) {
                let vk = format!("[{k}]");
                self.err(
                    &["actions", action, "args", arg, "values", &vk],
                    format!("cannot be written by writes{idx}: {e}"),
                );
            }
        }
    }

    /// Choices are matched ignoring case, so two that differ only in case could never both be
    /// chosen; `values` pairs one number with each choice.
    fn check_choices(&mut self, action: &str, name: &str, a: &Arg, scpi_proto: bool) {
        for (j, c) in a.choices.iter().enumerate() {
            if let Some(first) = a.choices[..j].iter().find(|d| d.eq_ignore_ascii_case(c)) {
                let idx = format!("[{j}]");
                let msg = if first == c {
                    format!("choice \"{c}\" is listed twice")
                } else {
                    format!(
                        "choice \"{c}\" repeats \"{first}\" (choices are matched ignoring case)"
                    )
                };
                self.err(&["actions", action, "args", name, "choices", &idx], msg);
            }
        }
        let Some(values) = &a.values else {
            return;
        };
        let at = ["actions", action, "args", name, "values"];
        if scpi_proto {
            self.err(
                &at,
                "values are for modbus writes; a scpi template sends the choice's text",
            );
            return;
        }
        if values.len() != a.choices.len() {
            self.err(
                &at,
                format!(
                    "{} values for {} choices: give one value per choice, in the same order",
                    values.len(),
                    a.choices.len()
                ),
            );
        }
        for (k, v) in values.iter().enumerate() {
            if !v.is_finite() {
                let idx = format!("[{k}]");
                self.err(
                    &["actions", action, "args", name, "values", &idx],
                    "value must be a finite number",
                );
            }
        }
    }

    fn check_arg(&mut self, action: &str, name: &str, a: &Arg, scpi_proto: bool) {
        let p = ["actions", action, "args", name];
        let at = |k: &'static str| ["actions", action, "args", name, k];
        if let (Some(lo), Some(hi)) = (a.min, a.max) {
            if lo > hi {
                self.err(&at("max"), format!("min {lo} is greater than max {hi}"));
            }
        }
        match a.arg_type {
            ArgType::Enum => {
                if a.choices.is_empty() {
                    self.err(&p, "enum argument needs choices");
                }
                self.check_choices(action, name, a, scpi_proto);
            }
            _ => {
                if !a.choices.is_empty() {
                    self.err(&at("choices"), "choices are only for type \"enum\"");
                }
                if a.values.is_some() {
                    self.err(&at("values"), "values are only for type \"enum\"");
                }
            }
        }
        if matches!(a.arg_type, ArgType::Bool | ArgType::Enum)
            && (a.min.is_some() || a.max.is_some())
        {
            let k = if a.min.is_some() { "min" } else { "max" };
            self.err(&at(k), "min and max are only for numeric arguments");
        }
        let Some(def) = &a.default else {
            return;
        };
        let problem = match (a.arg_type, def) {
            (ArgType::Float, toml::Value::Float(_) | toml::Value::Integer(_))
            | (ArgType::Int, toml::Value::Integer(_)) => {
                let x = match def {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    _ => 0.0,
                };
                if a.min.is_some_and(|lo| x < lo) || a.max.is_some_and(|hi| x > hi) {
                    Some(format!(
                        "default {x} is outside {}..={}",
                        a.min.map_or("".into(), |v| v.to_string()),
                        a.max.map_or("".into(), |v| v.to_string())
                    ))
                } else {
                    None
                }
            }
            (ArgType::Bool, toml::Value::Boolean(_)) => None,
            (ArgType::Enum, toml::Value::String(s)) => {
                if a.choices.is_empty() || a.choices.contains(s) {
                    None
                } else {
                    Some(format!(
                        "default \"{s}\" is not one of the choices ({})",
                        a.choices.join(", ")
                    ))
                }
            }
            (t, v) => Some(format!(
                "default must be a {} for type \"{}\", not a {}",
                match t {
                    ArgType::Float => "number",
                    ArgType::Int => "integer",
                    ArgType::Bool => "boolean",
                    ArgType::Enum => "string",
                },
                arg_type_name(t),
                v.type_str()
            )),
        };
        if let Some(msg) = problem {
            self.err(&at("default"), msg);
        }
    }
}

/// The names in `{name}` placeholders of a command template: the same parser the renderer uses,
/// so a template that loads is a template that renders.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    crate::instrument::args::placeholders(template).map_err(|e| e.to_string())
}

fn registers(t: ValueType, length: Option<u16>) -> u32 {
    u32::from(t.registers(length))
}

/// The table as spelled in a driver file (Display says "discrete input" for people).
fn table_name(t: Table) -> &'static str {
    match t {
        Table::Coil => "coil",
        Table::DiscreteInput => "discrete_input",
        Table::Holding => "holding",
        Table::Input => "input",
    }
}

fn arg_type_name(t: ArgType) -> &'static str {
    match t {
        ArgType::Float => "float",
        ArgType::Int => "int",
        ArgType::Bool => "bool",
        ArgType::Enum => "enum",
    }
}
