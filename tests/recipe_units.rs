//! Unit checking before the run: every expression's unit is inferred from its variables' units,
//! and each mismatch is reported at the expression's file:line:col naming both units (no
//! instruments here, only the embedded demo bench's drivers).

use std::collections::BTreeMap;

use labgate::config;
use labgate::diag::Source;
use labgate::recipe::{self, StationView, load};

/// Parse and validate `text` as `units.toml` against the demo station; every diagnostic.
fn problems(text: &str) -> String {
    let bench = config::demo().expect("the demo bench loads");
    let view = StationView::of(&bench, "demo").expect("demo station");
    let source = Source::new("units.toml", text);
    let (recipe, mut diags) = load::parse_partial(&source);
    if let Some(r) = recipe
        && let Err(d) = recipe::validate(&r, &view, &BTreeMap::new())
    {
        diags.extend(d);
    }
    diags.to_string()
}

const HEAD: &str = r#"[recipe]
name = "u"
roles = ["source", "analyzer", "sphere", "chamber"]

[parameters.rated_power]
unit = "W"
default = 9.5

[parameters.rated_current]
unit = "mA"
default = 100.0

[parameters.settle]
unit = "min"
default = 1.0

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["voltage", "current", "power"]

[[steps]]
kind = "measure"
role = "sphere"
measurement = "spectrum"
quantities = ["flux", "cct"]
"#;

#[test]
fn consistent_units_pass() {
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "compute"
output = "efficacy"
expr = "flux / power"
unit = "lm/W"
limit = {{ min = "0.5 * flux / rated_power" }}

[[steps]]
kind = "compute"
output = "efficacy_mw"
expr = "flux / power"
unit = "lm/mW"

[[steps]]
kind = "compute"
output = "apparent"
expr = "voltage * current"
unit = "VA"

[[steps]]
kind = "check"
name = "power factor"
expr = "power / apparent"
limit = {{ min = 0.5 }}

[[steps]]
kind = "check"
name = "power vs rated"
expr = "power / rated_power - 1"
unit = "%"
limit = {{ min = -10, max = 10 }}

[[steps]]
kind = "check"
name = "current sum"
expr = "current + rated_current"
unit = "mA"
limit = {{ max = "2 * rated_current + 1000 * 0.001" }}

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["current"]
limits.current = {{ max = "max(rated_current, 0.2 * current)", marginal_pct = 10 }}

[[steps]]
kind = "wait"
duration = "settle + 30"

[[steps]]
kind = "wait_until"
role = "chamber"
quantities = ["temperature"]
condition = "math::abs(temperature - 25) <= 0.5 && cct > 2000"
interval = "1s"
max_duration = "2 * settle"
"#
    );
    assert_eq!(problems(&text), "");
}

#[test]
fn every_unit_mismatch_at_its_expression_naming_both_units() {
    let text = format!(
        r#"{HEAD}
[[steps]]
kind = "compute"
output = "efficacy"
expr = "flux / power"
unit = "%"

[[steps]]
kind = "check"
expr = "flux + power"
unit = "lm"
limit = {{ min = 0 }}

[[steps]]
kind = "check"
name = "pct"
expr = "100 * power / rated_power"
unit = "%"
limit = {{ max = 110 }}

[[steps]]
kind = "measure"
role = "analyzer"
quantities = ["current"]
limits.current = {{ max = "rated_current * rated_power" }}

[[steps]]
kind = "compute"
output = "odd"
expr = "power ^ current + math::sqrt(power) + math::ln(flux) + str::len(flux)"
unit = "W"

[[steps]]
kind = "compute"
output = "bad_unit"
expr = "power"
unit = "W/"

[[steps]]
kind = "wait"
duration = "settle * rated_power"

[[steps]]
kind = "check"
name = "cct band"
expr = "cct - 25"
unit = "degC"
limit = {{ max = 1 }}

[[steps]]
kind = "wait_until"
role = "chamber"
quantities = ["temperature"]
condition = "temperature > cct"
interval = "1s"
max_duration = "1min"
"#
    );
    let got = problems(&text);
    let expected = "\
units.toml:31:8: steps[2].expr: `flux / power`: unit mismatch: the expression is in lm/W but the step declares %
units.toml:36:8: steps[3].expr: `flux + power`: cannot add lm and W: the units do not convert
units.toml:43:8: steps[4].expr: `100 * power / rated_power`: the expression is a plain ratio already multiplied by 100, and a ratio converts to % by itself: drop the `100 *` (or the result is 100 times too large)
units.toml:51:26: steps[5].limits.current.max: `rated_current * rated_power`: unit mismatch: the expression is in mA*W but the value compared is in A
units.toml:56:8: steps[6].expr: `power ^ current + math::sqrt(power) + math::ln(flux) + str::len(flux)`: a value in W can only be raised to a whole-number literal power (use math::sqrt for a square root)
units.toml:63:8: steps[7].unit: bad unit `W/`: a term is missing
units.toml:67:12: steps[8].duration: `settle * rated_power`: unit mismatch: the expression is in min*W but a duration needs s
units.toml:72:8: steps[9].expr: `cct - 25`: unit mismatch: the expression is in K but the step declares degC
units.toml:80:13: steps[10].condition: `temperature > cct`: cannot compare degC and K: the units do not convert";
    assert_eq!(got, expected, "\n--- got ---\n{got}\n");
}

/// Each function's unit rule refuses what it cannot give a unit to.
#[test]
fn function_rules_refuse_what_has_no_unit() {
    for (expr, needle) in [
        ("math::sqrt(power)", "no square root unit"),
        ("math::ln(flux)", "needs a plain ratio, not a value in lm"),
        ("str::len(flux)", "has no unit rule"),
        ("min(power, flux)", "cannot compare W and lm"),
        (
            "if(power > 1, power, flux)",
            "cannot choose between W and lm",
        ),
        ("power = 3", "assignments"),
    ] {
        let text = format!(
            "{HEAD}\n[[steps]]\nkind = \"compute\"\noutput = \"x\"\nexpr = \"{expr}\"\nunit = \"W\"\n"
        );
        let got = problems(&text);
        assert!(got.contains(needle), "{expr}: {got}");
        assert!(
            got.starts_with("units.toml:31:8: steps[2].expr:"),
            "{expr}: {got}"
        );
    }
}
