//! Recipe validation (every problem reported at once, each at its exact file:line:col, before any
//! instrument is touched) and instrument-free runs on a paused clock: no instruments at all here,
//! only the embedded demo bench's drivers.

use std::collections::BTreeMap;
use std::path::Path;

use labgate::config;
use labgate::diag::Source;
use labgate::recipe::{self, StationView, load};

fn demo_station() -> (config::Bench, StationView) {
    let bench = config::demo().expect("the demo bench loads");
    let view = StationView::of(&bench, "demo").expect("demo station");
    (bench, view)
}

/// Parse and validate `text` as `bad.toml`; every diagnostic, one per line, sorted.
fn problems(text: &str, overrides: &[(&str, f64)]) -> String {
    let (_, view) = demo_station();
    let source = Source::new("bad.toml", text);
    let (recipe, mut diags) = load::parse_partial(&source);
    let overrides: BTreeMap<String, f64> =
        overrides.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    if let Some(r) = recipe
        && let Err(d) = recipe::validate(&r, &view, &overrides)
    {
        diags.extend(d);
    }
    diags.to_string()
}

const BAD: &str = r#"[recipe]
name = "bad"
colour = "red"
roles = ["source", "analyser"]

[parameters.rated_voltage]
unit = "V"
default = 230.0

[parameters.rated_flux]
unit = "lm"
default = 800.0

[parameters.settle]
unit = "degC"
default = 1.0

[[steps]]
kind = "act"
role = "source"
action = "set_voltag"
args = { volts = 230 }

[[steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = { volts = "rated_voltage * 2" }

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["voltage", "powr"]
limits.voltage = { min = "0.9 * rated_flux" }
limits.current = { max = 1 }

[[steps]]
kind = "measure"
role = "sphere"
quantities = ["flux"]
limits.flux = { max = 1000, unit = "degC" }

[[steps]]
kind = "compute"
output = "efficacy"
expr = "flux / (power"
unit = "lm/W"

[[steps]]
kind = "check"
expr = "efficacy * 2 + nothing"
limit = { nominal = 10 }

[[steps]]
kind = "wiat"
duration = "1s"

[[steps]]
kind = "wait"
duration = "settle"
sampels = 3

[[steps]]
kind = "wait"
duration = "settle"

[[steps]]
kind = "sweep"
var = "volts"
unit = "V"
values = [200.0, 320.0]

[[steps.steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = { volts = "volts" }

[[cleanup]]
kind = "act"
role = "sourse"
action = "output"
args = { on = false }
"#;

#[test]
fn every_problem_at_once_with_exact_positions() {
    let got = problems(BAD, &[("rated_voltag", 3.0)]);
    let expected = r#"bad.toml:1:1: recipe: --param rated_voltag: the recipe has no parameter `rated_voltag` (did you mean `rated_voltage`?)
bad.toml:3:1: recipe.colour: unknown key `colour` (known: name, version, description, roles)
bad.toml:4:20: recipe.roles[1]: station `demo` has no role `analyser` (it has: analyzer, chamber, logger, rack, source, sphere)
bad.toml:21:10: steps[0].action: driver `chroma-61500` has no action `set_voltag` (did you mean `set_voltage`?)
bad.toml:28:18: steps[1].args.volts: action "set_voltage": argument "volts" = 460 V is out of range 0..300 V
bad.toml:32:8: steps[2].role: role `analyzer` is not listed in [recipe] roles (source, analyser)
bad.toml:33:26: steps[2].quantities[1]: driver `yokogawa-wt310e` has no quantity `powr` (did you mean `power`?)
bad.toml:34:26: steps[2].limits.voltage.min: `0.9 * rated_flux`: unit mismatch: the expression is in lm but the value compared is in V
bad.toml:35:8: steps[2].limits.current: limit for `current`, which this step does not measure (it measures: voltage, powr)
bad.toml:39:8: steps[3].role: role `sphere` is not listed in [recipe] roles (source, analyser)
bad.toml:40:15: steps[3].quantities[0]: `flux` only exists after a triggered measurement: add `measurement = "..."` (driver `labgate-sim-sphere` has: spectrum)
bad.toml:41:36: steps[3].limits.flux.unit: unit mismatch: the limit is in degC but the value is in lm
bad.toml:46:8: steps[4].expr: bad expression `flux / (power`: found an unmatched opening parenthesis '('
bad.toml:51:8: steps[5].expr: `efficacy * 2 + nothing`: unknown variable `nothing` (known: efficacy, flux, rated_flux, rated_voltage, settle, voltage)
bad.toml:52:21: steps[5].limit.nominal: nominal needs exactly one of tolerance, tolerance_pct, tolerance_ppm
bad.toml:55:8: steps[6].kind: unknown step kind `wiat` (did you mean `wait`?)
bad.toml:61:1: steps[7].sampels: unknown key `sampels` (known: duration)
bad.toml:65:12: steps[8].duration: `settle`: unit mismatch: the expression is in degC but a duration needs s
bad.toml:77:18: steps[9].steps[0].args.volts: action "set_voltage": argument "volts" = 320 V is out of range 0..300 V (at volts = 320V)
bad.toml:81:8: cleanup[0].role: role `sourse` is not listed in [recipe] roles (source, analyser)
bad.toml:81:8: cleanup[0].role: station `demo` has no role `sourse` (did you mean `source`?)"#;
    assert_eq!(got, expected, "\n--- got ---\n{got}\n");
}

#[test]
fn parameters_without_default_and_out_of_range() {
    let text = r#"[recipe]
name = "p"
roles = ["source"]

[parameters.rated_voltage]
unit = "V"
min = 90.0
max = 264.0

[parameters.count]
type = "int"
default = 2.5

[[steps]]
kind = "act"
role = "source"
action = "set_voltage"
args = { volts = "rated_voltage" }
"#;
    let got = problems(text, &[]);
    assert_eq!(
        got,
        "bad.toml:5:1: parameters.rated_voltage: parameter `rated_voltage` has no default: give it with --param rated_voltage=VALUE\n\
         bad.toml:12:11: parameters.count.default: 2.5 is not an integer",
        "\n{got}"
    );
    let got = problems(text, &[("rated_voltage", 300.0)]);
    assert!(
        got.contains("parameters.rated_voltage: --param rated_voltage=300: 300 is outside 90..264"),
        "{got}"
    );
}

#[test]
fn limit_units_convert_or_are_refused() {
    let text = r#"[recipe]
name = "u"
roles = ["analyzer"]

[parameters.max_current]
unit = "mA"
default = 100.0

[parameters.max_temp]
unit = "degC"
default = 100.0

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["current", "power"]
limits.current = { max = "max_current" }
limits.power = { max = 10000, unit = "mW" }

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["current"]
limits.current = { max = "max_temp" }
"#;
    let got = problems(text, &[]);
    assert_eq!(
        got,
        "bad.toml:24:26: steps[1].limits.current.max: `max_temp`: unit mismatch: the expression is in degC but the value compared is in A",
        "\n{got}"
    );
}

#[test]
fn shipped_recipes_validate_against_the_demo_station() {
    let (bench, view) = demo_station();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes");
    let (n, diags) = recipe::check_dir(&dir, &bench);
    assert!(n >= 3, "found {n} recipes");
    assert!(diags.is_empty(), "{diags}");
    let r = recipe::load_file(&dir.join("lm79-led-lamp.toml")).unwrap();
    assert_eq!(r.meta.name, "lm79-led-lamp");
    assert!(recipe::validate(&r, &view, &BTreeMap::new()).is_ok());
}

#[test]
fn syntax_errors_and_missing_sections() {
    let got = problems("[recipe\nname = 1\n", &[]);
    assert!(got.starts_with("bad.toml:1:"), "{got}");
    let got = problems("[[steps]]\nkind = \"wait\"\nduration = \"1s\"\n", &[]);
    assert!(got.contains("missing section [recipe]"), "{got}");
}

/// The reference's complete example is a working recipe, so an engineer can start from it.
#[test]
fn the_reference_example_validates() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes.md"))
            .unwrap();
    let start = doc.find("## A complete example").expect("example section");
    let rest = &doc[start..];
    let open = rest.find("```toml\n").unwrap() + "```toml\n".len();
    let close = rest[open..].find("```").unwrap();
    let example = &rest[open..open + close];
    assert!(example.contains("[[cleanup]]"));
    assert_eq!(problems(example, &[]), "");
}

#[test]
fn sweep_ranges_are_checked() {
    let text = r#"[recipe]
name = "s"
roles = ["source"]

[[steps]]
kind = "sweep"
var = "v"
range = { from = 10, to = 0, step = 1 }

[[steps.steps]]
kind = "wait"
duration = "1s"
"#;
    assert_eq!(
        problems(text, &[]),
        "bad.toml:8:1: steps[0].range: range 10 to 0 by 1 is empty, endless or longer than 10000 values"
    );
}

/// A rack position swept in a recipe is checked against the driver's range per value, and a
/// mode is given by name.
#[test]
fn positions_and_modes_are_checked_against_the_driver() {
    let text = r#"[recipe]
name = "s"
roles = ["rack", "chamber"]

[[steps]]
kind = "act"
role = "chamber"
action = "set_mode"
args = { mode = "auto" }

[[steps]]
kind = "sweep"
var = "position"
values = [1, 16, 17]

[[steps.steps]]
kind = "act"
role = "rack"
action = "relay_on"
args = { position = "position" }

[[steps]]
kind = "act"
role = "chamber"
action = "set_mode"
args = { mode = 10 }
"#;
    assert_eq!(
        problems(text, &[]),
        "bad.toml:20:21: steps[1].steps[0].args.position: action \"relay_on\": argument \"position\" = 17 is out of range 1..16 (at position = 17)\n\
bad.toml:26:17: steps[2].args.mode: action \"set_mode\": argument \"mode\": expected a string, got \"10\""
    );
}

/// An int argument computed to a fraction is refused where it is written, not rounded to
/// another rack position.
#[test]
fn an_int_argument_computed_to_a_fraction_is_refused() {
    let text = r#"[recipe]
name = "s"
roles = ["rack"]

[[steps]]
kind = "act"
role = "rack"
action = "relay_on"
args = { position = "5 / 2" }

[[steps]]
kind = "act"
role = "rack"
action = "relay_on"
args = { position = "3 * 0.1 * 10" }
"#;
    assert_eq!(
        problems(text, &[]),
        "bad.toml:9:21: steps[0].args.position: `5 / 2` gives 2.5, not a whole number (the argument is an int)"
    );
}

/// The engine waits on tokio's clock, so a recipe with hour-long waits runs in a test with a
/// paused clock (no instruments involved: a wait and computed values only).
#[tokio::test(start_paused = true)]
async fn hour_long_waits_on_a_paused_clock() {
    use labgate::recipe::RunSpec;
    use labgate::store::{RunVerdict, Store};
    let (_, station) = demo_station();
    let text = r#"[recipe]
name = "slow"

[parameters.soak]
unit = "h"
default = 2.0

[[steps]]
kind = "wait"
name = "soak"
duration = "soak"
timeout = "3h"

[[steps]]
kind = "compute"
output = "soak_s"
expr = "soak"
unit = "s"
limit = { nominal = 7200, tolerance = 0.001 }
"#;
    let recipe = load::parse(&Source::new("slow.toml", text)).unwrap();
    let params = recipe::validate(&recipe, &station, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("r.db")).unwrap();
    let spec = RunSpec {
        recipe,
        station,
        params,
        dut: "P".into(),
        operator: String::new(),
    };
    let started = std::time::Instant::now();
    let t0 = tokio::time::Instant::now();
    let o = recipe::run(
        &spec,
        &BTreeMap::new(),
        &store,
        None,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(o.verdict, RunVerdict::Pass);
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(7200),
        "the clock moved 2 h"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// The remaining classes of validation error, each reported (all at once) at its key.
#[test]
fn every_other_validation_class_at_once() {
    let text = r#"[recipe]
name = "classes"
roles = ["source", "analyzer", "sphere"]

[parameters.odd]
unit = "V*"
default = 1.0

[[steps]]
kind = "measure"
role = "analyzer"
quantities = []
samples = 0
interval = "soon"

[[steps]]
kind = "measure"
role = "sphere"
measurement = "spectrun"
quantities = ["flux"]

[[steps]]
kind = "stabilize"
role = "analyzer"
quantities = ["power"]
interval = "later * 2"
readings = 1
within = 1.0
within_pct = 1.0
max_duration = "1h"

[[steps]]
kind = "stabilize"
role = "analyzer"
quantities = ["power"]
interval = "1s"
max_duration = "1h"

[[steps]]
kind = "compute"
output = "2nd-value"
expr = "1"
limit = { tolerance = 1 }

[[steps]]
kind = "check"
expr = "1"
limit = { nominal = 1, min = 0, tolerance = 1, marginal = 1, marginal_pct = 5 }

[[steps]]
kind = "confirm"
prompt = " "

[[steps]]
kind = "group"
tries = 0

[[steps.steps]]
kind = "wait"
duration = "1s"

[[steps]]
kind = "sweep"
var = "1x"
values = [1.0]
range = { from = 1, to = 2, step = 1 }

[[steps.steps]]
kind = "wait"
duration = "1s"

[[steps]]
kind = "sweep"
var = "v"

[[steps]]
name = "no kind"
"#;
    let got = problems(text, &[]);
    let expected = "\
bad.toml:6:8: parameters.odd.unit: bad unit `V*`: a term is missing
bad.toml:12:14: steps[0].quantities: name at least one quantity
bad.toml:13:11: steps[0].samples: samples must be at least 1
bad.toml:14:12: steps[0].interval: `soon`: `soon` is not a parameter (durations may use parameters only)
bad.toml:19:15: steps[1].measurement: driver `labgate-sim-sphere` has no measurement `spectrun` (did you mean `spectrum`?)
bad.toml:26:12: steps[2].interval: `later * 2`: `later` is not a parameter (durations may use parameters only)
bad.toml:27:12: steps[2].readings: readings must be at least 2
bad.toml:28:10: steps[2].within: give within or within_pct, not both
bad.toml:32:1: steps[3]: stabilize needs a band: within (absolute) or within_pct
bad.toml:41:10: steps[4].output: `2nd-value` is not a name expressions can use (letters, digits, _)
bad.toml:43:23: steps[4].limit.tolerance: a tolerance needs a nominal value
bad.toml:48:21: steps[5].limit.nominal: give either nominal with a tolerance or min/max, not both
bad.toml:48:59: steps[5].limit.marginal: give marginal or marginal_pct, not both
bad.toml:52:10: steps[6].prompt: the prompt is empty
bad.toml:56:9: steps[7].tries: tries must be at least 1
bad.toml:64:7: steps[8].var: `1x` is not a usable variable name
bad.toml:66:1: steps[8].range: give values or range, not both
bad.toml:72:1: steps[9].steps: missing key (the steps to run for each value)
bad.toml:72:1: steps[9].values: a sweep needs at least one value
bad.toml:76:1: steps[10].kind: missing key (one of: act, measure, wait, stabilize, wait_until, compute, check, sweep, group, confirm)";
    assert_eq!(got, expected, "\n--- got ---\n{got}\n");
}
