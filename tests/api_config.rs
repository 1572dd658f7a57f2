//! The `[api]` config section: its validation, with file:line:col.

use labgate::config::load_with_drivers;
use labgate::diag::Source;
use labgate::driver::{EMBEDDED_DRIVERS, load::load_sources};

fn check(api: &str) -> Result<labgate::config::schema::ApiConfig, String> {
    let drivers: Vec<Source> = EMBEDDED_DRIVERS
        .iter()
        .map(|(n, t)| Source::new(*n, *t))
        .collect();
    let drivers = load_sources(&drivers).unwrap();
    let text = format!("{}\n{api}", labgate::config::DEMO_CONFIG);
    load_with_drivers(&Source::new("/bench/labgate.toml", text), drivers)
        .map(|b| b.api)
        .map_err(|d| d.to_string())
}

#[test]
fn defaults_when_absent() {
    let api = check("").unwrap();
    assert_eq!(api.listen, None);
    assert_eq!(api.token, None);
    assert!(!api.allow_raw);
}

#[test]
fn full_section_loads() {
    let api = check(
        "[api]\nlisten = \"0.0.0.0:8470\"\ntoken = \"a-long-enough-secret\"\nallow_raw = true\n",
    )
    .unwrap();
    assert_eq!(api.listen.as_deref(), Some("0.0.0.0:8470"));
    assert!(api.allow_raw);
}

#[test]
fn non_loopback_needs_a_token() {
    let e = check("[api]\nlisten = \"0.0.0.0:8470\"\n").unwrap_err();
    assert!(e.contains("api.listen"), "{e}");
    assert!(e.contains("not a loopback address"), "{e}");
    // The position of the offending value: the demo is followed by the section.
    let line = labgate::config::DEMO_CONFIG.lines().count() + 3;
    assert!(e.contains(&format!("labgate.toml:{line}:")), "{e}");
}

#[test]
fn bad_listen_short_token_unknown_key() {
    let e = check("[api]\nlisten = \"localhost\"\n").unwrap_err();
    assert!(e.contains("is not an address:port"), "{e}");
    let e = check("[api]\ntoken = \"short\"\n").unwrap_err();
    assert!(e.contains("at least 16 characters"), "{e}");
    let e = check("[api]\nallow_rwa = true\n").unwrap_err();
    assert!(e.contains("allow_rwa"), "{e}");
}
