//! Bench config loading: every check reports file:line:col, key and an exact message.

use labgate::config::{self, load_with_drivers};
use labgate::diag::Source;
use labgate::driver::{DriverSet, load_sources};

fn drivers() -> DriverSet {
    load_sources(&[
        Source::new(
            "s.toml",
            "[driver]\nname = \"scpi-dev\"\nprotocol = \"scpi\"\n\
             [quantities.volt]\nquery = \"V?\"\n\
             [quantities.flux]\nquery = \"F?\"\nmeasurement_only = true\n",
        ),
        Source::new(
            "m.toml",
            "[driver]\nname = \"mb-dev\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 0\n\
             [quantities.temp]\ntable = \"holding\"\naddress = 1\ntype = \"i16\"\n",
        ),
    ])
    .expect("test drivers are valid")
}

/// Two links and one instrument on each; cases append to it. 13 lines.
const BASE: &str = "\
[links.lan]
protocol = \"scpi\"
kind = \"tcp\"
host = \"127.0.0.1\"
port = 5025
[links.bus]
protocol = \"modbus-tcp\"
kind = \"tcp\"
host = \"127.0.0.1\"
port = 502
[instruments.pa]
driver = \"scpi-dev\"
link = \"lan\"
";

const CHAMBER: &str = "[instruments.ch]\ndriver = \"mb-dev\"\nlink = \"bus\"\nunit = 1\n";

fn errors(text: &str) -> String {
    match load_with_drivers(&Source::new("c.toml", text), drivers()) {
        Ok(b) => b.warnings.to_string(),
        Err(d) => d.to_string(),
    }
}

fn check(text: &str, expect: &str) {
    let got = errors(text);
    if std::env::var_os("PRINT").is_some() {
        println!("@@BEGIN\n{got}\n@@END");
        return;
    }
    assert_eq!(got, expect, "input:\n{text}");
}

fn base(rest: &str) -> String {
    format!("{BASE}{CHAMBER}{rest}")
}

#[test]
fn valid_config_loads_with_resolved_instruments() {
    let b = load_with_drivers(
        &Source::new(
            "/bench/c.toml",
            base(
                "[stations.s]\nroles = { analyzer = \"pa\", chamber = \"ch\" }\n\
                 [[polls]]\ninstrument = \"pa\"\nquantities = [\"volt\"]\ninterval = \"1s\"\n",
            ),
        ),
        drivers(),
    )
    .expect("valid config");
    assert_eq!(b.instruments["pa"].driver.name(), "scpi-dev");
    assert_eq!(b.instruments["ch"].config.unit, Some(1));
    assert_eq!(b.polls.len(), 1);
    assert!(b.warnings.is_empty(), "{}", b.warnings);
    assert_eq!(b.paths.data, std::path::PathBuf::from("/data"));
    assert_eq!(b.paths.drivers, vec![std::path::PathBuf::from("/drivers")]);
}

#[test]
fn syntax_error() {
    check(
        "[links.lan\nprotocol = \"scpi\"\n",
        "c.toml:1:11: TOML syntax error: unclosed table, expected `]`",
    );
}

#[test]
fn unknown_keys_at_every_level() {
    check(
        &format!(
            "{BASE}hostname = \"x\"\n[instruments.ch]\ndriver = \"mb-dev\"\nlink = \"bus\"\nunit = 1\ndescr = \"x\"\n\
             [paths]\ndriver = [\"d\"]\n\
             [station.s]\nroles = {{}}\n\
             [stations.t]\nroles = {{ a = \"pa\" }}\nname = \"t\"\n\
             [[polls]]\ninstrument = \"pa\"\nquantities = [\"volt\"]\ninterval = \"1s\"\nevery = \"1s\"\n\
             [links.ser]\nprotocol = \"scpi\"\nkind = \"serial\"\ndevice = \"/dev/ttyS0\"\nbaud = 9600\nport = 1\nparty = \"even\"\n"
        ),
        "c.toml:14:1: instruments.pa.hostname: unknown key `hostname` (known: driver, link, unit, address, description, skip_identity)\n\
c.toml:19:1: instruments.ch.descr: unknown key `descr` (did you mean `description`?)\n\
c.toml:21:1: paths.driver: unknown key `driver` (did you mean `drivers`?)\n\
c.toml:22:2: station: unknown section `station` (did you mean `stations`?)\n\
c.toml:26:1: stations.t.name: unknown key `name` (known: description, roles)\n\
c.toml:31:1: polls[0].every: unknown key `every` (known: instrument, quantities, interval)\n\
c.toml:32:1: links.ser: warning: no instrument uses this link\n\
c.toml:37:1: links.ser.port: unknown key `port` (known: protocol, kind, timeout, connect_timeout, backoff_initial, backoff_max, inter_frame_delay, device, baud, data_bits, parity, stop_bits, flow_control)\n\
c.toml:38:1: links.ser.party: unknown key `party` (did you mean `parity`?)",
    );
}

#[test]
fn wrong_types_in_link() {
    check(
        &base(
            "[links.x]\nprotocol = \"scpi-raw\"\nkind = \"tcp\"\nhost = \"h\"\nport = \"80\"\ntimeout = \"fast\"\n",
        ),
        "c.toml:19:12: links.x.protocol: unknown value \"scpi-raw\" (did you mean `scpi`?)\n\
c.toml:22:8: links.x.port: wrong type: string \"80\", expected u16\n\
c.toml:23:11: links.x.timeout: invalid value: string \"fast\", expected a duration",
    );
}

#[test]
fn link_kind_missing_or_unknown() {
    check(
        &base(
            "[links.x]\nprotocol = \"scpi\"\nhost = \"h\"\n[links.y]\nprotocol = \"scpi\"\nkind = \"usb\"\n",
        ),
        "c.toml:18:1: links.x.kind: missing key (one of tcp, serial, usbtmc, prologix, prologix_serial, vxi11, hislip)\n\
c.toml:23:8: links.y.kind: unknown link kind \"usb\" (did you mean `usbtmc`?)",
    );
}

#[test]
fn unknown_link_and_driver() {
    check(
        &base("[instruments.x]\ndriver = \"scpi-dv\"\nlink = \"lann\"\n"),
        "c.toml:19:10: instruments.x.driver: unknown driver \"scpi-dv\" (did you mean `scpi-dev`?)\n\
c.toml:20:8: instruments.x.link: unknown link \"lann\" (did you mean `lan`?)",
    );
}

#[test]
fn driver_protocol_must_match_link() {
    check(
        &base(
            "[instruments.x]\ndriver = \"mb-dev\"\nlink = \"lan\"\n[instruments.y]\ndriver = \"scpi-dev\"\nlink = \"bus\"\nunit = 2\n",
        ),
        "c.toml:20:8: instruments.x.link: driver \"mb-dev\" speaks modbus but link \"lan\" is scpi\n\
c.toml:20:8: instruments.x.link: scpi link \"lan\" already carries instrument \"pa\"; a raw scpi stream addresses one instrument\n\
c.toml:23:8: instruments.y.link: driver \"scpi-dev\" speaks scpi but link \"bus\" is modbus-tcp",
    );
}

#[test]
fn modbus_unit_rules() {
    check(
        &base(
            "[links.rtu]\nprotocol = \"modbus-rtu\"\nkind = \"serial\"\ndevice = \"/dev/ttyUSB0\"\nbaud = 9600\n\
             [instruments.a]\ndriver = \"mb-dev\"\nlink = \"bus\"\n\
             [instruments.b]\ndriver = \"mb-dev\"\nlink = \"bus\"\nunit = 0\n\
             [instruments.c]\ndriver = \"mb-dev\"\nlink = \"bus\"\nunit = 255\n\
             [instruments.d]\ndriver = \"mb-dev\"\nlink = \"rtu\"\nunit = 255\n\
             [instruments.e]\ndriver = \"scpi-dev\"\nlink = \"lan2\"\nunit = 1\n\
             [links.lan2]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"h\"\nport = 1\n",
        ),
        "c.toml:23:1: instruments.a: missing key `unit` (the modbus unit id on link \"bus\")\n\
c.toml:29:8: instruments.b.unit: unit 0 is out of range (1..=247, or 255 on modbus-tcp)\n\
c.toml:37:8: instruments.d.unit: unit 255 is out of range (1..=247)\n\
c.toml:41:8: instruments.e.unit: unit is only for modbus links",
    );
}

#[test]
fn same_unit_twice_on_one_link() {
    check(
        &base("[instruments.ch2]\ndriver = \"mb-dev\"\nlink = \"bus\"\nunit = 1\n"),
        "c.toml:21:8: instruments.ch2.unit: unit 1 on link \"bus\" is already used by instrument \"ch\"",
    );
}

#[test]
fn one_instrument_per_scpi_link() {
    check(
        &base("[instruments.pa2]\ndriver = \"scpi-dev\"\nlink = \"lan\"\n"),
        "c.toml:20:8: instruments.pa2.link: scpi link \"lan\" already carries instrument \"pa\"; a raw scpi stream addresses one instrument",
    );
}

#[test]
fn station_roles_name_instruments() {
    check(
        &base(
            "[stations.s]\nroles = { analyzer = \"pa\", chamber = \"chmbr\" }\n[stations.t]\nroles = {}\n",
        ),
        "c.toml:19:38: stations.s.roles.chamber: unknown instrument \"chmbr\" (known: ch, pa)\n\
c.toml:21:9: stations.t.roles: a station needs at least one role",
    );
}

#[test]
fn poll_checks() {
    check(
        &base(
            "[[polls]]\ninstrument = \"pa\"\nquantities = [\"volt\", \"flux\", \"vlt\"]\ninterval = \"5ms\"\n\
             [[polls]]\ninstrument = \"nobody\"\nquantities = []\ninterval = \"1s\"\n",
        ),
        "c.toml:20:23: polls[0].quantities[1]: quantity \"flux\" of driver \"scpi-dev\" is measurement_only and cannot be polled\n\
c.toml:20:31: polls[0].quantities[2]: driver \"scpi-dev\" has no quantity \"vlt\" (did you mean `volt`?)\n\
c.toml:21:12: polls[0].interval: interval must be at least 10ms\n\
c.toml:23:14: polls[1].instrument: unknown instrument \"nobody\" (known: ch, pa)\n\
c.toml:24:14: polls[1].quantities: quantities must not be empty",
    );
}

#[test]
fn serial_settings() {
    check(
        &base(
            "[links.s]\nprotocol = \"modbus-rtu\"\nkind = \"serial\"\ndevice = \"/dev/ttyUSB0\"\nbaud = 0\ndata_bits = 9\nstop_bits = 3\n\
             [instruments.r]\ndriver = \"mb-dev\"\nlink = \"s\"\nunit = 5\n",
        ),
        "c.toml:22:8: links.s.baud: baud must be greater than 0\n\
c.toml:23:13: links.s.data_bits: data_bits must be 5..=8\n\
c.toml:24:13: links.s.stop_bits: stop_bits must be 1 or 2",
    );
}

#[test]
fn tcp_settings_and_zero_timeouts() {
    check(
        &base(
            "[links.t]\nprotocol = \"modbus-tcp\"\nkind = \"tcp\"\nhost = \"\"\nport = 0\ntimeout = \"0s\"\nconnect_timeout = \"0ms\"\n\
             [instruments.r]\ndriver = \"mb-dev\"\nlink = \"t\"\nunit = 5\n",
        ),
        "c.toml:21:8: links.t.host: host must not be empty\n\
c.toml:22:8: links.t.port: port must not be 0\n\
c.toml:23:11: links.t.timeout: duration must be greater than zero\n\
c.toml:24:19: links.t.connect_timeout: duration must be greater than zero",
    );
}

#[test]
fn unused_link_is_only_a_warning() {
    check(
        &base("[links.spare]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"h\"\nport = 1\n"),
        "c.toml:18:1: links.spare: warning: no instrument uses this link",
    );
}

#[test]
fn several_errors_all_reported() {
    check(
        &base(
            "[instruments.x]\ndriver = \"nope\"\nlink = \"bus\"\nunit = 1\n\
             [stations.s]\nroles = { a = \"y\" }\n\
             [[polls]]\ninstrument = \"pa\"\nquantities = [\"volt\"]\ninterval = \"1ms\"\n",
        ),
        "c.toml:19:10: instruments.x.driver: unknown driver \"nope\" (known: mb-dev, scpi-dev)\n\
c.toml:21:8: instruments.x.unit: unit 1 on link \"bus\" is already used by instrument \"ch\"\n\
c.toml:23:15: stations.s.roles.a: unknown instrument \"y\" (known: ch, pa, x)\n\
c.toml:27:12: polls[0].interval: interval must be at least 10ms",
    );
}

#[test]
fn demo_config_loads() {
    let b = config::demo().unwrap_or_else(|e| panic!("demo config:\n{e}"));
    assert_eq!(b.instruments.len(), 7);
    assert_eq!(b.links.len(), 5);
    assert_eq!(b.instruments["chamber1"].config.unit, Some(1));
    assert_eq!(b.stations["demo"].roles["analyzer"], "pa1");
    assert!(b.warnings.is_empty(), "{}", b.warnings);
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(b.paths.data, cwd.join("data"));
}

#[test]
fn real_bench_example_loads_against_drivers_dir() {
    let b = config::load(std::path::Path::new("config/labgate.toml"))
        .unwrap_or_else(|e| panic!("config/labgate.toml:\n{e}"));
    assert_eq!(b.instruments["rack"].config.link, "rs485");
    assert!(b.paths.drivers[0].ends_with("drivers"));
    assert!(b.paths.drivers[0].is_absolute());
    assert!(b.warnings.is_empty(), "{}", b.warnings);
}

#[test]
fn missing_config_file() {
    let err =
        config::load(std::path::Path::new("tests/fixtures/no_such.toml")).expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("tests/fixtures/no_such.toml:1:1: cannot read file:"),
        "{err}"
    );
}

#[test]
fn config_and_driver_problems_reported_together() {
    let err = config::load(std::path::Path::new(
        "tests/fixtures/bench_bad/labgate.toml",
    ))
    .expect_err("bad bench");
    let cwd = std::env::current_dir().expect("cwd");
    let driver_file = cwd.join("tests/fixtures/bench_bad/drivers/dev.toml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:4:1: quantities.v: quantity needs query (or must be a block field or a measurement fetch)\n\
             tests/fixtures/bench_bad/labgate.toml:13:8: instruments.i.unit: unit is only for modbus links",
            driver_file.display()
        )
    );
}

#[test]
fn missing_keys_point_at_their_entry() {
    check(
        &base(
            "[instruments.x]\nlink = \"lan\"\n\
             [[polls]]\ninstrument = \"pa\"\nquantities = [\"volt\"]\n\
             [stations.s]\ndescription = \"no roles\"\n",
        ),
        "c.toml:18:1: instruments.x.driver: missing key\n\
c.toml:20:1: polls[0].interval: missing key\n\
c.toml:23:1: stations.s.roles: missing key",
    );
}

#[test]
fn display_matches_the_documented_shape() {
    let src = "[links.pa_link]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"h\"\nport = 1\n\
               [links.src_link]\nprotocol = \"scpi\"\nkind = \"tcp\"\nhost = \"h\"\nport = 2\n\
               [instruments.pa1]\ndriver = \"scpi-dev\"\nlink = \"pa_lnk\"\n\
               [instruments.src1]\ndriver = \"scpi-dev\"\nlink = \"src_link\"\n";
    let err = load_with_drivers(&Source::new("config/demo.toml", src), drivers())
        .expect_err("dangling link");
    let first = err.errors().next().expect("one error");
    assert_eq!((first.line, first.col), (13, 8));
    assert_eq!(first.key, "instruments.pa1.link");
    assert_eq!(
        first.to_string(),
        "config/demo.toml:13:8: instruments.pa1.link: unknown link \"pa_lnk\" (did you mean `pa_link`?)"
    );
}

#[test]
fn bad_required_value_does_not_hide_later_problems_in_the_entry() {
    check(
        &base(
            "[instruments.x]\ndriver = 5\nlink = [\"lan\"]\nunit = 300\nnote = \"x\"\n\
             [links.y]\nprotocol = \"scpy\"\nkind = \"tcp\"\nhost = 1\nport = 70000\n",
        ),
        "c.toml:19:10: instruments.x.driver: wrong type: integer `5`, expected a string\n\
c.toml:20:8: instruments.x.link: wrong type: array, expected a string\n\
c.toml:21:8: instruments.x.unit: invalid value: integer `300`, expected u8\n\
c.toml:22:1: instruments.x.note: unknown key `note` (known: driver, link, unit, address, description, skip_identity)\n\
c.toml:24:12: links.y.protocol: unknown value \"scpy\" (did you mean `scpi`?)\n\
c.toml:26:8: links.y.host: wrong type: integer `1`, expected a string\n\
c.toml:27:8: links.y.port: invalid value: integer `70000`, expected u16",
    );
}

#[test]
fn every_missing_key_of_an_entry_is_reported() {
    check(
        &base("[instruments.x]\ndescription = \"neither driver nor link\"\nbogus = 1\n[[polls]]\n"),
        "c.toml:18:1: instruments.x.driver: missing key\n\
c.toml:18:1: instruments.x.link: missing key\n\
c.toml:20:1: instruments.x.bogus: unknown key `bogus` (known: driver, link, unit, address, description, skip_identity)\n\
c.toml:21:1: polls[0].instrument: missing key\n\
c.toml:21:1: polls[0].interval: missing key\n\
c.toml:21:1: polls[0].quantities: missing key",
    );
}
