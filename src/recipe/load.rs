//! Loading a recipe file and checking it against a station, before any instrument is touched.
//!
//! Two passes, both reporting every problem at once with file:line:col: [`parse`] checks the
//! file's shape (unknown keys, wrong types, unknown step kinds); [`validate`] checks it against a
//! station's instruments and drivers (roles, quantities, actions, argument ranges), the
//! expressions (syntax, variables in scope) and the units of every limit and expression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::expr::{Expr, Var, Vars};
use super::limits;
use super::schema::*;
use super::units;
use crate::config::Bench;
use crate::diag::{DeTable, DeValue, Diagnostic, Diagnostics, Severity, Source, suggest_or_list};
use crate::driver::Driver;
use crate::driver::schema::ArgType;
use crate::instrument::args;

/// Where each key of a step (or other entry) starts: `role`, `quantities[1]`, `limits.power.min`.
#[derive(Debug, Clone, Default)]
pub struct Locs {
    pub file: PathBuf,
    /// Dotted key of the entry itself, e.g. `steps[2]`.
    pub key: String,
    pub at: (usize, usize),
    pub keys: BTreeMap<String, (usize, usize)>,
}

impl Locs {
    /// An error at `sub` (relative key) of this entry, or at the nearest enclosing key known.
    pub fn diag(&self, sub: &str, message: impl Into<String>) -> Diagnostic {
        let mut probe = sub.to_string();
        let at = loop {
            if let Some(at) = self.keys.get(&probe) {
                break *at;
            }
            match probe.rfind(['.', '[']) {
                Some(i) => probe.truncate(i),
                None => break self.at,
            }
        };
        let key = if sub.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{sub}", self.key)
        };
        Diagnostic {
            file: self.file.clone(),
            line: at.0,
            col: at.1,
            key,
            message: message.into(),
            severity: Severity::Error,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Act(Act),
    Measure(Measure),
    Wait(Wait),
    Stabilize(Stabilize),
    WaitUntil(WaitUntil),
    Compute(Compute),
    Check(Check),
    Sweep(SweepHead, Vec<Step>),
    Group(GroupHead, Vec<Step>),
    Confirm(Confirm),
}

pub const STEP_KINDS: &[&str] = &[
    "act",
    "measure",
    "wait",
    "stabilize",
    "wait_until",
    "compute",
    "check",
    "sweep",
    "group",
    "confirm",
];

impl StepKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Act(_) => "act",
            StepKind::Measure(_) => "measure",
            StepKind::Wait(_) => "wait",
            StepKind::Stabilize(_) => "stabilize",
            StepKind::WaitUntil(_) => "wait_until",
            StepKind::Compute(_) => "compute",
            StepKind::Check(_) => "check",
            StepKind::Sweep(..) => "sweep",
            StepKind::Group(..) => "group",
            StepKind::Confirm(_) => "confirm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    /// The step's name: `name` from the file, else `<kind> <n>`.
    pub name: String,
    pub common: Common,
    pub kind: StepKind,
    pub locs: Locs,
}

/// A recipe whose file has the right shape; see [`validate`] for the rest.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    /// FNV-1a 64 of the file's bytes, hex: tells runs of edited recipes apart.
    pub hash: String,
    pub meta: Meta,
    pub meta_locs: Locs,
    pub parameters: BTreeMap<String, Parameter>,
    pub param_locs: BTreeMap<String, Locs>,
    pub steps: Vec<Step>,
    pub cleanup: Vec<Step>,
}

const TOP_KEYS: &[&str] = &["recipe", "parameters", "steps", "cleanup"];
const COMMON_KEYS: &[&str] = &[
    "kind",
    "name",
    "on_fail",
    "timeout",
    "retries",
    "retry_delay",
];

/// Read and parse a recipe file.
pub fn load_file(path: &Path) -> Result<Recipe, Diagnostics> {
    let source = Source::read(path)?;
    parse(&source)
}

/// Parse a recipe's text; every shape problem is reported.
pub fn parse(source: &Source) -> Result<Recipe, Diagnostics> {
    match parse_partial(source) {
        (Some(r), d) if !d.has_errors() => Ok(r),
        (_, d) => Err(d),
    }
}

/// Parse what can be parsed: the recipe without the entries that have shape problems (if its
/// `[recipe]` section is usable), and every problem. Lets [`validate`] report the rest of the
/// file's problems in the same pass.
pub fn parse_partial(source: &Source) -> (Option<Recipe>, Diagnostics) {
    let doc = match source.parse_toml() {
        Ok(d) => d,
        Err(d) => return (None, d),
    };
    let mut diags = Diagnostics::new();
    let root = doc.get_ref();
    source.unknown_sections(&doc, TOP_KEYS, &mut diags);
    let (meta, meta_locs) = match root.get("recipe") {
        Some(v) => (
            source.decode::<Meta>("recipe", v, &mut diags),
            locs_of(source, "recipe", v),
        ),
        None => {
            diags.push(source.error(0..0, "recipe", "missing section [recipe]"));
            let at_start = Locs {
                file: source.path.clone(),
                key: "recipe".to_string(),
                at: (1, 1),
                keys: BTreeMap::new(),
            };
            (None, at_start)
        }
    };
    let mut parameters = BTreeMap::new();
    let mut param_locs = BTreeMap::new();
    if let Some(v) = root.get("parameters") {
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, pv) in t.iter() {
                    let key = format!("parameters.{}", k.get_ref());
                    param_locs.insert(k.get_ref().to_string(), locs_of(source, &key, pv));
                    if let Some(p) = source.decode::<Parameter>(&key, pv, &mut diags) {
                        parameters.insert(k.get_ref().to_string(), p);
                    }
                }
            }
            _ => diags.push(source.error(
                v.span(),
                "parameters",
                "`parameters` must be a table of named entries",
            )),
        }
    }
    let steps = step_list(source, root.get("steps"), "steps", &mut diags);
    let cleanup = step_list(source, root.get("cleanup"), "cleanup", &mut diags);
    // A broken [recipe] section (already reported) must not hide the steps' problems.
    let meta = meta.unwrap_or_else(|| Meta {
        name: String::new(),
        version: String::new(),
        description: String::new(),
        roles: root
            .get("recipe")
            .and_then(|r| r.get_ref().get("roles"))
            .and_then(|r| r.get_ref().as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.get_ref().as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    });
    let recipe = Recipe {
        path: source.path.clone(),
        hash: format!("{:016x}", fnv1a(source.text.as_bytes())),
        meta,
        meta_locs,
        parameters,
        param_locs,
        steps,
        cleanup,
    };
    (Some(recipe), diags)
}

/// Read, parse and validate a recipe file against a station: every problem of both passes.
pub fn load_and_validate(
    path: &Path,
    station: &StationView,
    overrides: &BTreeMap<String, f64>,
) -> Result<(Recipe, Vars), Diagnostics> {
    let source = Source::read(path)?;
    let (recipe, mut diags) = parse_partial(&source);
    let Some(recipe) = recipe else {
        return Err(diags);
    };
    match validate(&recipe, station, overrides) {
        Ok(vars) if !diags.has_errors() => Ok((recipe, vars)),
        Ok(_) => Err(diags),
        Err(d) => {
            diags.extend(d);
            Err(diags)
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Byte offset -> line and column without rescanning the text for every key (a 1,000-step
/// recipe has thousands of keys).
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        LineIndex { text, starts }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|s| *s <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

fn locs_of(source: &Source, key: &str, v: &Spanned<DeValue<'_>>) -> Locs {
    let index = LineIndex::new(&source.text);
    locs_with(&index, source, key, v)
}

fn locs_with(index: &LineIndex<'_>, source: &Source, key: &str, v: &Spanned<DeValue<'_>>) -> Locs {
    let mut keys = BTreeMap::new();
    collect_locs(index, v, "", &mut keys);
    Locs {
        file: source.path.clone(),
        key: key.to_string(),
        at: index.line_col(v.span().start),
        keys,
    }
}

fn collect_locs(
    source: &LineIndex<'_>,
    v: &Spanned<DeValue<'_>>,
    prefix: &str,
    out: &mut BTreeMap<String, (usize, usize)>,
) {
    match v.get_ref() {
        DeValue::Table(t) => {
            for (k, child) in t.iter() {
                let key = if prefix.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                // Point at the value: that is what is wrong when a name is unknown.
                let at = match child.get_ref() {
                    DeValue::Table(_) => k.span().start,
                    _ => child.span().start,
                };
                out.insert(key.clone(), source.line_col(at));
                collect_locs(source, child, &key, out);
            }
        }
        DeValue::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let key = format!("{prefix}[{i}]");
                out.insert(key.clone(), source.line_col(child.span().start));
                collect_locs(source, child, &key, out);
            }
        }
        _ => {}
    }
}

fn step_list(
    source: &Source,
    v: Option<&Spanned<DeValue<'_>>>,
    key: &str,
    diags: &mut Diagnostics,
) -> Vec<Step> {
    let Some(v) = v else {
        return Vec::new();
    };
    let DeValue::Array(a) = v.get_ref() else {
        diags.push(source.error(
            v.span(),
            key,
            format!("`{key}` must be an array of tables ([[{key}]])"),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, sv) in a.iter().enumerate() {
        if let Some(s) = step(source, sv, &format!("{key}[{i}]"), i, diags) {
            out.push(s);
        }
    }
    out
}

fn step(
    source: &Source,
    v: &Spanned<DeValue<'_>>,
    key: &str,
    index: usize,
    diags: &mut Diagnostics,
) -> Option<Step> {
    let Some(table) = v.get_ref().as_table() else {
        diags.push(source.error(v.span(), key, "a step must be a table"));
        return None;
    };
    let locs = locs_of(source, key, v);
    let kind = match table.get("kind") {
        None => {
            diags.push(source.error(
                v.span(),
                &format!("{key}.kind"),
                format!("missing key (one of: {})", STEP_KINDS.join(", ")),
            ));
            None
        }
        Some(k) => match k.get_ref().as_str() {
            Some(s) if STEP_KINDS.contains(&s) => Some(s.to_string()),
            other => {
                let shown = other.unwrap_or("");
                diags.push(source.error(
                    k.span(),
                    &format!("{key}.kind"),
                    format!(
                        "unknown step kind `{shown}`{}",
                        suggest_or_list(shown, STEP_KINDS)
                    ),
                ));
                None
            }
        },
    };
    // Split common keys from the kind's own so each half decodes with its spans intact.
    let mut common = DeTable::new();
    let mut own = DeTable::new();
    let mut nested = None;
    for (k, val) in table.iter() {
        let kn: &str = k.get_ref();
        if kn == "kind" {
            continue;
        }
        if COMMON_KEYS.contains(&kn) {
            common.insert(k.clone(), val.clone());
        } else if kn == "steps" && matches!(kind.as_deref(), Some("sweep" | "group")) {
            nested = Some(val);
        } else {
            own.insert(k.clone(), val.clone());
        }
    }
    let common_v = Spanned::new(v.span(), DeValue::Table(common));
    let own_v = Spanned::new(v.span(), DeValue::Table(own));
    let common: Option<Common> = source.decode(key, &common_v, diags);
    let kind = kind?;
    let kind = match kind.as_str() {
        "act" => StepKind::Act(source.decode(key, &own_v, diags)?),
        "measure" => StepKind::Measure(source.decode(key, &own_v, diags)?),
        "wait" => StepKind::Wait(source.decode(key, &own_v, diags)?),
        "stabilize" => StepKind::Stabilize(source.decode(key, &own_v, diags)?),
        "wait_until" => StepKind::WaitUntil(source.decode(key, &own_v, diags)?),
        "confirm" => StepKind::Confirm(source.decode(key, &own_v, diags)?),
        "compute" => StepKind::Compute(source.decode(key, &own_v, diags)?),
        "check" => StepKind::Check(source.decode(key, &own_v, diags)?),
        "sweep" => {
            let head = source.decode(key, &own_v, diags);
            if nested.is_none() {
                diags.push(source.error(
                    v.span(),
                    &format!("{key}.steps"),
                    "missing key (the steps to run for each value)",
                ));
            }
            let inner = step_list(source, nested, &format!("{key}.steps"), diags);
            let mut head: SweepHead = head?;
            if let Some(r) = &head.range {
                match (head.values.is_empty(), r.values()) {
                    (true, Some(v)) => head.values = v,
                    (false, _) => diags.push(locs.diag("range", "give values or range, not both")),
                    (_, None) => diags.push(locs.diag(
                        "range",
                        format!(
                            "range {} to {} by {} is empty, endless or longer than {MAX_SWEEP_VALUES} values",
                            r.from, r.to, r.step
                        ),
                    )),
                }
            }
            StepKind::Sweep(head, inner)
        }
        "group" => {
            let head = source.decode(key, &own_v, diags);
            if nested.is_none() {
                diags.push(source.error(
                    v.span(),
                    &format!("{key}.steps"),
                    "missing key (the steps of the group)",
                ));
            }
            let inner = step_list(source, nested, &format!("{key}.steps"), diags);
            StepKind::Group(head?, inner)
        }
        _ => return None,
    };
    let common = common?;
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| format!("{} {}", kind.as_str(), index + 1));
    Some(Step {
        name,
        common,
        kind,
        locs,
    })
}

/// The instruments a station gives a recipe, by role.
#[derive(Debug, Clone)]
pub struct StationView {
    pub name: String,
    /// Role -> (instrument id, driver).
    pub roles: BTreeMap<String, (String, Arc<Driver>)>,
}

impl StationView {
    /// The station `name` of a loaded bench.
    pub fn of(bench: &Bench, name: &str) -> Result<StationView, String> {
        let Some(st) = bench.stations.get(name) else {
            let known: Vec<&str> = bench.stations.keys().map(String::as_str).collect();
            return Err(format!(
                "no station `{name}` in {}{}",
                bench.source.display(),
                suggest_or_list(name, &known)
            ));
        };
        let mut roles = BTreeMap::new();
        for (role, id) in &st.roles {
            if let Some(def) = bench.instruments.get(id) {
                roles.insert(role.clone(), (id.clone(), def.driver.clone()));
            }
        }
        Ok(StationView {
            name: name.to_string(),
            roles,
        })
    }
}

/// Parameter values for a run: defaults with `overrides` applied.
pub fn resolve_params(
    recipe: &Recipe,
    overrides: &BTreeMap<String, f64>,
) -> Result<Vars, Diagnostics> {
    let mut diags = Diagnostics::new();
    let mut vars = Vars::new();
    let known: Vec<&str> = recipe.parameters.keys().map(String::as_str).collect();
    for name in overrides.keys() {
        if !recipe.parameters.contains_key(name) {
            diags.push(recipe.meta_locs.diag(
                "",
                format!(
                    "--param {name}: the recipe has no parameter `{name}`{}",
                    suggest_or_list(name, &known)
                ),
            ));
        }
    }
    for (name, p) in &recipe.parameters {
        let locs = &recipe.param_locs[name];
        if let Err(m) = units::Unit::parse(&p.unit) {
            diags.push(locs.diag("unit", m));
        }
        let given = overrides.get(name).copied();
        let Some(value) = given.or(p.default) else {
            diags.push(locs.diag(
                "",
                format!("parameter `{name}` has no default: give it with --param {name}=VALUE"),
            ));
            continue;
        };
        let from = if given.is_some() {
            format!("--param {name}={value}: ")
        } else {
            String::new()
        };
        let at = if given.is_some() { "" } else { "default" };
        if p.min.is_some_and(|m| value < m) || p.max.is_some_and(|m| value > m) {
            diags.push(locs.diag(
                at,
                format!(
                    "{from}{value} is outside {}..{}",
                    p.min.map_or("".into(), |m| m.to_string()),
                    p.max.map_or("".into(), |m| m.to_string())
                ),
            ));
        }
        if p.param_type == ParamType::Int && value.fract() != 0.0 {
            diags.push(locs.diag(at, format!("{from}{value} is not an integer")));
        }
        vars.insert(
            name.clone(),
            Var {
                value,
                unit: p.unit.clone(),
            },
        );
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(vars)
    }
}

/// A sweep value as it appears in names: `198V` in `power@198V`, `198v` in `power_198v`.
pub fn sweep_label(value: f64, unit: &str) -> String {
    format!("{}{unit}", args::format_float(value))
}

/// The expression variable for a swept measurement: identifiers cannot hold `@` or `.`.
pub fn sweep_var(name: &str, value: f64, unit: &str) -> String {
    let label = sweep_label(value, unit)
        .to_ascii_lowercase()
        .replace(['.', '-', '/'], "_");
    format!("{name}_{label}")
}

/// Parse a duration spec to a fixed duration or an expression in a time unit.
pub fn duration(spec: &DurSpec, vars: &Vars) -> Result<Duration, String> {
    let secs = match spec {
        DurSpec::Secs(s) => *s,
        DurSpec::Text(t) => match humantime::parse_duration(t) {
            Ok(d) => return Ok(d),
            Err(_) => Expr::parse(t)?.eval(vars, Some("s"))?,
        },
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{secs} s is not a usable duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct Validator<'a> {
    station: &'a StationView,
    params: &'a Vars,
    diags: Diagnostics,
    /// Every value defined so far, in order (a sweep names what its steps defined).
    defined: Vec<(String, String)>,
    /// The recipe's `[recipe] roles`.
    roles: Vec<String>,
}

/// Everything a run needs checked: returns the parameter values to run with.
pub fn validate(
    recipe: &Recipe,
    station: &StationView,
    overrides: &BTreeMap<String, f64>,
) -> Result<Vars, Diagnostics> {
    let params = match resolve_params(recipe, overrides) {
        Ok(p) => p,
        Err(d) => {
            // Still check the steps with what there is, so all problems show at once.
            let mut d = d;
            let p = recipe
                .parameters
                .iter()
                .map(|(n, p)| {
                    let value = p.default.unwrap_or(0.0);
                    (
                        n.clone(),
                        Var {
                            value,
                            unit: p.unit.clone(),
                        },
                    )
                })
                .collect();
            let mut v = Validator {
                station,
                params: &p,
                diags: Diagnostics::new(),
                defined: Vec::new(),
                roles: recipe.meta.roles.clone(),
            };
            v.all(recipe);
            d.extend(v.diags);
            return Err(d);
        }
    };
    let mut v = Validator {
        station,
        params: &params,
        diags: Diagnostics::new(),
        defined: Vec::new(),
        roles: recipe.meta.roles.clone(),
    };
    v.all(recipe);
    if v.diags.has_errors() {
        Err(v.diags)
    } else {
        Ok(params)
    }
}

/// Name -> unit of everything an expression may refer to at a point of the recipe.
type Scope = BTreeMap<String, String>;

impl Validator<'_> {
    fn all(&mut self, recipe: &Recipe) {
        for (i, role) in recipe.meta.roles.iter().enumerate() {
            if !self.station.roles.contains_key(role) {
                let d = recipe.meta_locs.diag(
                    &format!("roles[{i}]"),
                    format!(
                        "station `{}` has no role `{role}` (it has: {})",
                        self.station.name,
                        self.station_roles()
                    ),
                );
                self.diags.push(d);
            }
        }
        let mut scope: Scope = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.unit.clone()))
            .collect();
        self.steps(&recipe.steps, &mut scope, &[]);
        // Cleanup may run after any step failed: only parameters are sure to have values.
        let mut cleanup_scope: Scope = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.unit.clone()))
            .collect();
        self.steps(&recipe.cleanup, &mut cleanup_scope, &[]);
    }

    fn station_roles(&self) -> String {
        self.station
            .roles
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn role(&mut self, locs: &Locs, role: &str) -> Option<Arc<Driver>> {
        // The listed roles are what a run locks and what `check` matches stations by.
        if !self.roles.iter().any(|r| r == role) {
            self.diags.push(locs.diag(
                "role",
                format!(
                    "role `{role}` is not listed in [recipe] roles ({})",
                    self.roles.join(", ")
                ),
            ));
        }
        match self.station.roles.get(role) {
            Some((_, d)) => Some(d.clone()),
            None => {
                let known: Vec<&str> = self.station.roles.keys().map(String::as_str).collect();
                self.diags.push(locs.diag(
                    "role",
                    format!(
                        "station `{}` has no role `{role}`{}",
                        self.station.name,
                        suggest_or_list(role, &known)
                    ),
                ));
                None
            }
        }
    }

    /// `sweeps`: the enclosing sweeps' variables and values, for checking args per value.
    fn steps(&mut self, steps: &[Step], scope: &mut Scope, sweeps: &[(String, f64, String)]) {
        for s in steps {
            self.step(s, scope, sweeps);
        }
    }

    fn step(&mut self, s: &Step, scope: &mut Scope, sweeps: &[(String, f64, String)]) {
        let l = &s.locs;
        match &s.kind {
            StepKind::Act(a) => self.act(l, a, scope, sweeps),
            StepKind::Measure(m) => {
                let Some(driver) = self.role(l, &m.role) else {
                    return;
                };
                if m.samples == 0 {
                    self.diags
                        .push(l.diag("samples", "samples must be at least 1"));
                }
                if let Some(iv) = &m.interval {
                    self.dur(l, "interval", iv);
                }
                let units_of = self.quantities(l, &driver, &m.quantities, m.measurement.as_deref());
                for (q, spec) in &m.limits {
                    let at = format!("limits.{q}");
                    match units_of.get(q) {
                        Some(unit) => self.limit(l, &at, spec, unit, scope),
                        None if m.quantities.contains(q) => {}
                        None => self.diags.push(l.diag(
                            &at,
                            format!(
                                "limit for `{q}`, which this step does not measure (it measures: {})",
                                m.quantities.join(", ")
                            ),
                        )),
                    }
                }
                for (q, unit) in units_of {
                    self.define(scope, &q, &unit);
                }
            }
            StepKind::Wait(w) => self.dur(l, "duration", &w.duration),
            StepKind::Stabilize(st) => {
                self.dur(l, "interval", &st.interval);
                self.dur(l, "max_duration", &st.max_duration);
                if st.readings < 2 {
                    self.diags
                        .push(l.diag("readings", "readings must be at least 2"));
                }
                match (st.within, st.within_pct) {
                    (Some(_), Some(_)) => self
                        .diags
                        .push(l.diag("within", "give within or within_pct, not both")),
                    (None, None) => self.diags.push(l.diag(
                        "",
                        "stabilize needs a band: within (absolute) or within_pct",
                    )),
                    (Some(b), _) | (_, Some(b)) if b.is_nan() || b < 0.0 => self
                        .diags
                        .push(l.diag("within", "the band must be zero or positive")),
                    _ => {}
                }
                if let Some(driver) = self.role(l, &st.role) {
                    // The last readings stay in scope, e.g. to check a chamber reached its setpoint.
                    let units_of =
                        self.quantities(l, &driver, &st.quantities, st.measurement.as_deref());
                    for (q, unit) in units_of {
                        self.define(scope, &q, &unit);
                    }
                }
            }
            StepKind::WaitUntil(w) => {
                self.dur(l, "interval", &w.interval);
                self.dur(l, "max_duration", &w.max_duration);
                if let Some(h) = &w.hold {
                    self.dur(l, "hold", h);
                }
                if let Some(driver) = self.role(l, &w.role) {
                    let units_of = self.quantities(l, &driver, &w.quantities, None);
                    for (q, unit) in units_of {
                        self.define(scope, &q, &unit);
                    }
                }
                self.expr(l, "condition", &w.condition, scope, None, "");
            }
            StepKind::Compute(c) => {
                self.unit(l, "unit", &c.unit);
                self.expr(
                    l,
                    "expr",
                    &c.expr,
                    scope,
                    Some(&c.unit),
                    super::expr::DECLARES,
                );
                if let Some(spec) = &c.limit {
                    self.limit(l, "limit", spec, &c.unit, scope);
                }
                if !is_identifier(&c.output) {
                    self.diags.push(l.diag(
                        "output",
                        format!(
                            "`{}` is not a name expressions can use (letters, digits, _)",
                            c.output
                        ),
                    ));
                }
                self.define(scope, &c.output, &c.unit);
            }
            StepKind::Check(c) => {
                self.unit(l, "unit", &c.unit);
                self.expr(
                    l,
                    "expr",
                    &c.expr,
                    scope,
                    Some(&c.unit),
                    super::expr::DECLARES,
                );
                self.limit(l, "limit", &c.limit, &c.unit, scope);
            }
            StepKind::Confirm(c) => {
                if c.prompt.trim().is_empty() {
                    self.diags.push(l.diag("prompt", "the prompt is empty"));
                }
            }
            StepKind::Group(head, inner) => {
                if head.tries == 0 {
                    self.diags.push(l.diag("tries", "tries must be at least 1"));
                }
                self.steps(inner, scope, sweeps);
            }
            StepKind::Sweep(head, inner) => {
                self.unit(l, "unit", &head.unit);
                if head.values.is_empty() && head.range.is_none() {
                    self.diags
                        .push(l.diag("values", "a sweep needs at least one value"));
                }
                if !is_identifier(&head.var) {
                    self.diags.push(l.diag(
                        "var",
                        format!("`{}` is not a usable variable name", head.var),
                    ));
                }
                let mut inner_scope = scope.clone();
                inner_scope.insert(head.var.clone(), head.unit.clone());
                // Args are checked for every value, so 400 V in a sweep is caught too.
                let values: &[f64] = if head.values.is_empty() {
                    &[0.0]
                } else {
                    &head.values
                };
                let mut first = true;
                for v in values {
                    let mut sw = sweeps.to_vec();
                    sw.push((head.var.clone(), *v, head.unit.clone()));
                    let mut sc = inner_scope.clone();
                    let mark = self.diags.len();
                    let log_mark = self.defined.len();
                    self.steps(inner, &mut sc, &sw);
                    if !first {
                        // Shape problems repeat per value; keep only those new to this value.
                        let seen: Vec<Diagnostic> = self.diags.0[..mark].to_vec();
                        let fresh: Vec<Diagnostic> = self.diags.0[mark..]
                            .iter()
                            .filter(|d| !seen.contains(d))
                            .cloned()
                            .collect();
                        self.diags.0.truncate(mark);
                        self.diags.0.extend(fresh);
                    }
                    first = false;
                    let new: Vec<(String, String)> = self.defined[log_mark..].to_vec();
                    for (name, unit) in new {
                        self.define(scope, &sweep_var(&name, *v, &head.unit), &unit);
                    }
                }
            }
        }
    }

    /// Check quantities (read directly, or fetched by `measurement`); returns their units.
    fn quantities(
        &mut self,
        l: &Locs,
        driver: &Driver,
        quantities: &[String],
        measurement: Option<&str>,
    ) -> BTreeMap<String, String> {
        let f = &driver.file;
        let mut units_of = BTreeMap::new();
        let mut fetched: Option<Vec<String>> = None;
        if let Some(name) = measurement {
            match f.measurements.get(name) {
                Some(meas) => {
                    let mut q = Vec::new();
                    for item in &meas.fetch {
                        match f.blocks.get(item) {
                            Some(b) => q.extend(b.fields.iter().cloned()),
                            None => q.push(item.clone()),
                        }
                    }
                    fetched = Some(q);
                }
                None => {
                    let known: Vec<&str> = f.measurements.keys().map(String::as_str).collect();
                    self.diags.push(l.diag(
                        "measurement",
                        format!(
                            "driver `{}` has no measurement `{name}`{}",
                            driver.name(),
                            suggest_or_list(name, &known)
                        ),
                    ));
                    return units_of;
                }
            }
        }
        if quantities.is_empty() {
            self.diags
                .push(l.diag("quantities", "name at least one quantity"));
        }
        for (i, q) in quantities.iter().enumerate() {
            let at = format!("quantities[{i}]");
            let Some(def) = f.quantities.get(q) else {
                let known: Vec<&str> = f.quantities.keys().map(String::as_str).collect();
                self.diags.push(l.diag(
                    &at,
                    format!(
                        "driver `{}` has no quantity `{q}`{}",
                        driver.name(),
                        suggest_or_list(q, &known)
                    ),
                ));
                continue;
            };
            match &fetched {
                Some(list) if !list.contains(q) => self.diags.push(l.diag(
                    &at,
                    format!(
                        "measurement `{}` does not fetch `{q}` (it fetches: {})",
                        measurement.unwrap_or(""),
                        list.join(", ")
                    ),
                )),
                None if def.measurement_only => self.diags.push(l.diag(
                    &at,
                    format!(
                        "`{q}` only exists after a triggered measurement: add \
                         `measurement = \"...\"` (driver `{}` has: {})",
                        driver.name(),
                        f.measurements
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                _ => {}
            }
            units_of.insert(q.clone(), def.unit.clone());
        }
        units_of
    }

    /// A new value in scope; inside sweeps it also gets its per-value name afterwards.
    fn define(&mut self, scope: &mut Scope, name: &str, unit: &str) {
        scope.insert(name.to_string(), unit.to_string());
        self.defined.push((name.to_string(), unit.to_string()));
    }

    fn act(&mut self, l: &Locs, a: &Act, scope: &Scope, sweeps: &[(String, f64, String)]) {
        let Some(driver) = self.role(l, &a.role) else {
            return;
        };
        let Some(action) = driver.file.actions.get(&a.action) else {
            let known: Vec<&str> = driver.file.actions.keys().map(String::as_str).collect();
            self.diags.push(l.diag(
                "action",
                format!(
                    "driver `{}` has no action `{}`{}",
                    driver.name(),
                    a.action,
                    suggest_or_list(&a.action, &known)
                ),
            ));
            return;
        };
        let mut vars = self.params.clone();
        for (n, v, u) in sweeps {
            vars.insert(
                n.clone(),
                Var {
                    value: *v,
                    unit: u.clone(),
                },
            );
        }
        let mut concrete = BTreeMap::new();
        let mut complete = true;
        for (name, value) in &a.args {
            let at = format!("args.{name}");
            let def = action.args.get(name);
            match (value, def) {
                (toml::Value::String(text), Some(def))
                    if matches!(def.arg_type, ArgType::Float | ArgType::Int) =>
                {
                    let target = (!def.unit.is_empty()).then_some(def.unit.as_str());
                    if !self.expr(l, &at, text, scope, target, "the argument is in") {
                        complete = false;
                        continue;
                    }
                    let Ok(e) = Expr::parse(text) else { continue };
                    if e.variables().iter().all(|v| vars.contains_key(v)) {
                        match e.eval(&vars, target) {
                            Ok(x) if def.arg_type == ArgType::Int => {
                                match super::expr::whole_number(x) {
                                    Ok(n) => {
                                        concrete.insert(name.clone(), toml::Value::Integer(n));
                                    }
                                    Err(msg) => {
                                        self.diags.push(l.diag(&at, format!("`{text}` {msg}")));
                                        complete = false;
                                    }
                                }
                            }
                            Ok(x) => {
                                concrete.insert(name.clone(), toml::Value::Float(x));
                            }
                            Err(msg) => {
                                self.diags.push(l.diag(&at, msg));
                                complete = false;
                            }
                        }
                    } else {
                        // Depends on a measured value: range-checked when the step runs.
                        complete = false;
                    }
                }
                _ => {
                    concrete.insert(name.clone(), value.clone());
                }
            }
        }
        if complete || concrete.len() == a.args.len() {
            if let Err(e) = args::resolve_typed_args(&a.action, action, &concrete) {
                let at = a
                    .args
                    .keys()
                    .find(|k| {
                        let m = e.to_string();
                        m.contains(&format!("`{k}`")) || m.contains(&format!("\"{k}\""))
                    })
                    .map(|k| format!("args.{k}"))
                    .unwrap_or_else(|| "args".to_string());
                let ctx = sweeps
                    .last()
                    .map(|(n, v, u)| format!(" (at {n} = {}{u})", args::format_float(*v)))
                    .unwrap_or_default();
                self.diags.push(l.diag(&at, format!("{e}{ctx}")));
            }
        }
    }

    /// Check an expression; `target` is the unit it is compared with or stored or passed as
    /// (`what`, for messages). True if fine.
    fn expr(
        &mut self,
        l: &Locs,
        at: &str,
        text: &str,
        scope: &Scope,
        target: Option<&str>,
        what: &str,
    ) -> bool {
        match Expr::parse(text) {
            Err(msg) => {
                self.diags.push(l.diag(at, msg));
                false
            }
            Ok(e) => {
                let problems = e.check(scope, target, what);
                let ok = problems.is_empty();
                for p in problems {
                    self.diags.push(l.diag(at, p));
                }
                ok
            }
        }
    }

    fn limit(&mut self, l: &Locs, at: &str, spec: &LimitSpec, value_unit: &str, scope: &Scope) {
        for (key, msg) in limits::shape_problems(spec) {
            let sub = if key.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{key}")
            };
            self.diags.push(l.diag(&sub, msg));
        }
        let limit_unit = spec.unit.as_deref().unwrap_or(value_unit);
        if let Some(u) = &spec.unit
            && !self.unit(l, &format!("{at}.unit"), u)
        {
            return;
        }
        if !units::compatible(limit_unit, value_unit) {
            self.diags.push(l.diag(
                &format!("{at}.unit"),
                format!(
                    "unit mismatch: the limit is in {} but the value is in {}",
                    units::shown(limit_unit),
                    units::shown(value_unit)
                ),
            ));
            return;
        }
        for (key, text) in limits::expressions(spec) {
            self.expr(
                l,
                &format!("{at}.{key}"),
                text,
                scope,
                Some(limit_unit),
                "the value compared is in",
            );
        }
    }

    /// Check a unit's syntax (`lm/W`, `mA`); true if it parses.
    fn unit(&mut self, l: &Locs, at: &str, unit: &str) -> bool {
        match units::Unit::parse(unit) {
            Ok(_) => true,
            Err(m) => {
                self.diags.push(l.diag(at, m));
                false
            }
        }
    }

    fn dur(&mut self, l: &Locs, at: &str, spec: &DurSpec) {
        let DurSpec::Text(t) = spec else {
            if let Err(e) = duration(spec, self.params) {
                self.diags.push(l.diag(at, e));
            }
            return;
        };
        if humantime::parse_duration(t).is_ok() {
            return;
        }
        let scope: Scope = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.unit.clone()))
            .collect();
        match Expr::parse(t) {
            Err(_) => self.diags.push(l.diag(
                at,
                format!("`{t}` is neither a duration (\"15min\", \"500ms\") nor an expression over parameters"),
            )),
            Ok(e) => {
                let mut problems = Vec::new();
                for v in e.variables() {
                    if !scope.contains_key(&v) {
                        problems.push(format!(
                            "`{t}`: `{v}` is not a parameter (durations may use parameters only)"
                        ));
                    }
                }
                if problems.is_empty() {
                    problems = e.check(&scope, Some("s"), "a duration needs");
                }
                if problems.is_empty() {
                    if let Err(msg) = duration(spec, self.params) {
                        problems.push(msg);
                    }
                }
                for p in problems {
                    self.diags.push(l.diag(at, p));
                }
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Validate every `*.toml` recipe in `dir` against every station of `bench` that has the
/// recipe's roles. Returns how many recipes were checked and every problem.
pub fn check_dir(dir: &Path, bench: &Bench) -> (usize, Diagnostics) {
    let mut diags = Diagnostics::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, diags);
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for f in &files {
        diags.extend(check_file(f, bench));
    }
    (files.len(), diags)
}

/// Validate one recipe file against the stations of `bench` that have its roles.
pub fn check_file(path: &Path, bench: &Bench) -> Diagnostics {
    let source = match Source::read(path) {
        Ok(s) => s,
        Err(d) => return d.into(),
    };
    let (recipe, mut diags) = parse_partial(&source);
    let Some(recipe) = recipe else {
        return diags;
    };
    let mut checked = 0;
    for name in bench.stations.keys() {
        let Ok(view) = StationView::of(bench, name) else {
            continue;
        };
        if !recipe.meta.roles.iter().all(|r| view.roles.contains_key(r)) {
            continue;
        }
        checked += 1;
        if let Err(d) = validate(&recipe, &view, &BTreeMap::new()) {
            for x in d.0 {
                if !diags.0.contains(&x) {
                    diags.push(x);
                }
            }
        }
    }
    if checked == 0 {
        diags.push(recipe.meta_locs.diag(
            "roles",
            format!(
                "no station of {} has every role this recipe needs ({})",
                bench.source.display(),
                recipe.meta.roles.join(", ")
            ),
        ));
    }
    diags
}
