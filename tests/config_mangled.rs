//! Mangled input never panics: every truncation and every dropped line of the shipped files
//! either loads or yields diagnostics that point inside the file.

use labgate::config::{DEMO_CONFIG, load_with_drivers};
use labgate::diag::{Diagnostics, Source};
use labgate::driver::{EMBEDDED_DRIVERS, load_sources, parse_driver};

fn variants(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cut = 0;
    while cut < text.len() {
        if text.is_char_boundary(cut) {
            out.push(text[..cut].to_string());
        }
        cut += 5;
    }
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..lines.len() {
        let mut l = lines.clone();
        l.remove(i);
        out.push(l.join("\n"));
    }
    out
}

fn assert_in_file(d: &Diagnostics, text: &str) {
    let lines = text.lines().count().max(1) + 1;
    for e in &d.0 {
        assert!(e.line >= 1 && e.line <= lines, "{e}");
        assert!(e.col >= 1, "{e}");
    }
}

#[test]
fn mangled_drivers_never_panic() {
    for (name, text) in EMBEDDED_DRIVERS {
        for v in variants(text) {
            if let Err(d) = parse_driver(&Source::new(*name, v.as_str())) {
                assert!(d.has_errors());
                assert_in_file(&d, &v);
            }
        }
    }
}

#[test]
fn mangled_demo_config_never_panics() {
    let sources: Vec<Source> = EMBEDDED_DRIVERS
        .iter()
        .map(|(n, t)| Source::new(*n, *t))
        .collect();
    let drivers = load_sources(&sources).expect("shipped drivers load");
    let mut failures = 0;
    for v in variants(DEMO_CONFIG) {
        if let Err(d) = load_with_drivers(&Source::new("demo.toml", v.as_str()), drivers.clone()) {
            assert!(d.has_errors());
            assert_in_file(&d, &v);
            failures += 1;
        }
    }
    // Dropping e.g. the `link` line of an instrument must be caught.
    assert!(
        failures > 10,
        "only {failures} mangled configs were refused"
    );
}
