//! Driver file loading: every check reports file:line:col, key and an exact message.

use labgate::diag::Source;
use labgate::driver::{load_dirs, parse_driver};

const SCPI: &str = "[driver]\nname = \"t\"\nprotocol = \"scpi\"\n";
const MODBUS: &str = "[driver]\nname = \"m\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 0\n";

/// Every diagnostic of a driver text, one per line, sorted.
fn errors(text: &str) -> String {
    match parse_driver(&Source::new("d.toml", text)) {
        Ok(_) => String::new(),
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

fn scpi(rest: &str) -> String {
    format!("{SCPI}{rest}")
}
fn modbus(rest: &str) -> String {
    format!("{MODBUS}{rest}")
}

#[test]
fn valid_scpi_and_modbus_drivers_load() {
    let d = parse_driver(&Source::new(
        "d.toml",
        scpi(
            "[scpi]\nerror_query = \"SYST:ERR?\"\ncheck_errors = true\n\
             [quantities.v]\nquery = \"V?\"\n[quantities.i]\n[quantities.p]\nmeasurement_only = true\n\
             [blocks.all]\nquery = \"ALL?\"\nfields = [\"i\", \"\"]\n\
             [measurements.m]\nstart = [\"GO\"]\nwait = { poll = { query = \"DONE?\", until = \"1\", interval = \"100ms\" } }\nfetch = [\"p\", \"all\"]\n\
             [actions.set]\ncommands = [\"VOLT {v}\", \"OUTP {on}\"]\nargs.v = { type = \"float\", min = 0, max = 300, default = 230 }\n\
             args.on = { type = \"bool\" }\n",
        ),
    ))
    .expect("valid scpi driver");
    assert_eq!(d.name(), "t");
    assert_eq!(d.file.quantities.len(), 3);
    let m = parse_driver(&Source::new(
        "m.toml",
        modbus(
            "[identity]\nquantity = \"model\"\nequals = 3200\n\
             [quantities.model]\ntable = \"input\"\naddress = 122\ntype = \"u16\"\n\
             [quantities.run]\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n\
             [quantities.name]\ntable = \"holding\"\naddress = 65528\ntype = \"string\"\nlength = 8\n\
             [actions.sp]\nwrites = [{ table = \"holding\", address = 26, arg = \"c\", scale = 10 }]\nargs.c = { type = \"float\" }\n",
        ),
    ))
    .expect("valid modbus driver");
    assert_eq!(m.file.quantities.len(), 3);
}

#[test]
fn syntax_error_has_line_and_col() {
    check(
        &scpi("[quantities.v\nquery = \"V?\"\n"),
        "d.toml:4:14: TOML syntax error: unclosed table, expected `]`",
    );
}

#[test]
fn unknown_keys_at_every_level() {
    check(
        "[driver]\nname = \"t\"\nprotocol = \"scpi\"\nvendor = \"x\"\n\
             [scpi]\ntimout = \"1s\"\ninvalid = [{ token = \"NAN\", kind = \"no_data\", colour = 1 }]\n\
             [quantity.v]\nquery = \"V?\"\n\
             [quantities.v]\nquerry = \"V?\"\nquery = \"V?\"\n\
             [blocks.b]\nquery = \"B?\"\nfields = [\"v\"]\nfield = 1\n\
             [measurements.m]\nstart = [\"GO\"]\nwait = { opc = \"*OPC?\", extra = 1 }\nfetch = [\"v\"]\n\
             [actions.a]\ncommands = [\"X {n}\"]\nargs.n = { type = \"int\", maximum = 3 }\n",
        "d.toml:4:1: driver.vendor: unknown key `vendor` (known: name, protocol, manufacturer, model, description)\n\
d.toml:6:1: scpi.timout: unknown key `timout` (did you mean `timeout`?)\n\
d.toml:7:47: scpi.invalid[0].colour: unknown key `colour` (known: token, value, kind)\n\
d.toml:8:2: quantity: unknown section `quantity` (did you mean `quantities`?)\n\
d.toml:11:1: quantities.v.querry: unknown key `querry` (did you mean `query`?)\n\
d.toml:16:1: blocks.b.field: unknown key `field` (did you mean `fields`?)\n\
d.toml:19:8: measurements.m.wait: must be a table with exactly one key\n\
d.toml:23:26: actions.a.args.n.maximum: unknown key `maximum` (did you mean `max`?)",
    );
}

#[test]
fn unknown_keys_in_modbus_write() {
    check(
        &modbus(
            "[actions.a]\nwrites = [{ table = \"coil\", address = 1, value = 1, adress = 2 }]\n",
        ),
        "d.toml:7:53: actions.a.writes[0].adress: unknown key `adress` (did you mean `address`?)",
    );
}

#[test]
fn wrong_types_and_values() {
    check(
        &scpi(
            "[quantities.v]\nquery = 5\nparse = \"nmber\"\n[quantities.w]\nquery = \"W?\"\ntimeout = \"soon\"\n",
        ),
        "d.toml:5:9: quantities.v.query: wrong type: integer `5`, expected a string\n\
d.toml:6:9: quantities.v.parse: unknown value \"nmber\" (did you mean `number`?)\n\
d.toml:9:11: quantities.w.timeout: invalid value: string \"soon\", expected a duration",
    );
}

#[test]
fn scpi_section_only_with_scpi_protocol() {
    check(
        &modbus("[scpi]\nerror_query = \"E?\"\n"),
        "d.toml:6:1: scpi: [scpi] section is only allowed with protocol \"scpi\"",
    );
}

#[test]
fn modbus_section_only_with_modbus_protocol() {
    check(
        &scpi("[modbus]\naddress_base = 0\n"),
        "d.toml:4:1: modbus: [modbus] section is only allowed with protocol \"modbus\"",
    );
}

#[test]
fn modbus_needs_modbus_section() {
    check(
        "[driver]\nname = \"m\"\nprotocol = \"modbus\"\n",
        "d.toml:3:12: driver.protocol: protocol \"modbus\" needs a [modbus] section with address_base",
    );
}

#[test]
fn address_base_is_0_or_1() {
    check(
        "[driver]\nname = \"m\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 2\n",
        "d.toml:5:16: modbus.address_base: address_base must be 0 or 1",
    );
}

#[test]
fn missing_driver_section() {
    check(
        "[quantities.v]\nquery = \"V?\"\n",
        "d.toml:1:1: driver: missing [driver] section",
    );
}

#[test]
fn scpi_quantity_needs_query() {
    check(
        &scpi("[quantities.v]\nunit = \"V\"\n"),
        "d.toml:4:1: quantities.v: quantity needs query (or must be a block field or a measurement fetch)",
    );
}

#[test]
fn scpi_quantity_with_modbus_keys() {
    check(
        &scpi("[quantities.v]\nquery = \"V?\"\ntable = \"holding\"\n"),
        "d.toml:6:9: quantities.v.table: `table` is a modbus key; this is a scpi driver",
    );
}

#[test]
fn modbus_quantity_needs_table_address_type() {
    check(
        &modbus("[quantities.t]\nunit = \"degC\"\ntable = \"holding\"\n"),
        "d.toml:6:1: quantities.t: modbus quantity needs table, address and type (missing: address, type)",
    );
}

#[test]
fn modbus_quantity_with_scpi_keys() {
    check(
        &modbus(
            "[quantities.t]\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\nquery = \"T?\"\n",
        ),
        "d.toml:10:9: quantities.t.query: `query` is a scpi key; this is a modbus driver",
    );
}

#[test]
fn bit_only_with_type_bit_and_in_range() {
    check(
        &modbus(
            "[quantities.a]\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\nbit = 3\n\
             [quantities.b]\ntable = \"holding\"\naddress = 1\ntype = \"bit\"\nbit = 16\n\
             [quantities.c]\ntable = \"holding\"\naddress = 1\ntype = \"bit\"\n",
        ),
        "d.toml:10:7: quantities.a.bit: bit is only allowed with type \"bit\"\n\
d.toml:15:7: quantities.b.bit: bit must be 0..=15\n\
d.toml:16:1: quantities.c: type \"bit\" needs bit (0..=15)",
    );
}

#[test]
fn string_needs_length() {
    check(
        &modbus("[quantities.s]\ntable = \"holding\"\naddress = 1\ntype = \"string\"\n"),
        "d.toml:6:1: quantities.s: type \"string\" needs length (registers, at least 1)",
    );
}

#[test]
fn coil_tables_hold_bools() {
    check(
        &modbus(
            "[quantities.c]\ntable = \"coil\"\naddress = 1\ntype = \"f32\"\n\
             [quantities.r]\ntable = \"holding\"\naddress = 1\ntype = \"bool\"\n",
        ),
        "d.toml:9:8: quantities.c.type: coil and discrete_input hold single bits; type must be \"bool\", not \"f32\"",
    );
}

#[test]
fn address_below_base() {
    check(
        "[driver]\nname = \"m\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 1\n\
         [quantities.t]\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n",
        "d.toml:8:11: quantities.t.address: address 0 is below address_base 1",
    );
}

#[test]
fn address_beyond_65535() {
    check(
        &modbus(
            "[quantities.f]\ntable = \"input\"\naddress = 65535\ntype = \"f32\"\n\
             [quantities.g]\ntable = \"input\"\naddress = 65534\ntype = \"f32\"\n",
        ),
        "d.toml:8:11: quantities.f.address: address 65535 plus 2 registers goes beyond 65535",
    );
}

#[test]
fn writes_to_read_only_tables_refused() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"input\", address = 1, value = 1 },\n  { table = \"discrete_input\", address = 1, value = 1 },\n]\n",
        ),
        "d.toml:8:13: actions.a.writes[0].table: table \"input\" is read-only\n\
d.toml:9:13: actions.a.writes[1].table: table \"discrete_input\" is read-only",
    );
}

#[test]
fn write_needs_exactly_one_of_arg_or_value() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"holding\", address = 1, value = 1, arg = \"x\" },\n  { table = \"holding\", address = 2 },\n  { table = \"holding\", address = 3, arg = \"y\" },\n]\nargs.x = { type = \"int\" }\n",
        ),
        "d.toml:8:3: actions.a.writes[0]: a write needs exactly one of arg or value\n\
d.toml:9:3: actions.a.writes[1]: a write needs exactly one of arg or value\n\
d.toml:10:43: actions.a.writes[2].arg: unknown argument \"y\" (known: x)\n\
d.toml:12:10: actions.a.args.x: argument \"x\" is not used by any command or write",
    );
}

#[test]
fn block_fields_and_fetch_name_known_quantities() {
    check(
        &scpi(
            "[quantities.volt]\nquery = \"V?\"\n\
             [blocks.b]\nquery = \"B?\"\nfields = [\"volt\", \"\", \"vlt\"]\n\
             [measurements.m]\nstart = [\"GO\"]\nwait = { delay = \"1s\" }\nfetch = [\"b\", \"flux\"]\n",
        ),
        "d.toml:8:23: blocks.b.fields[2]: unknown quantity \"vlt\" (did you mean `volt`?)\n\
d.toml:12:15: measurements.m.fetch[1]: unknown quantity or block \"flux\" (known: volt, b)",
    );
}

#[test]
fn templates_name_declared_args_and_args_are_used() {
    check(
        &scpi(
            "[actions.a]\ncommands = [\"VOLT {volts}\", \"FREQ {hz\"]\nargs.volt = { type = \"float\" }\n",
        ),
        "d.toml:5:13: actions.a.commands[0]: template names undeclared argument \"volts\" (did you mean `volt`?)\n\
d.toml:5:29: actions.a.commands[1]: template \"FREQ {hz\": unclosed '{' (write '{{' for a literal brace)\n\
d.toml:6:13: actions.a.args.volt: argument \"volt\" is not used by any command or write",
    );
}

#[test]
fn arg_checks() {
    check(
        &scpi(
            "[actions.a]\ncommands = [\"X {a},{b},{c},{d},{e}\"]\n\
             args.a = { type = \"float\", min = 5, max = 1 }\n\
             args.b = { type = \"enum\" }\n\
             args.c = { type = \"int\", min = 0, max = 10, default = 11 }\n\
             args.d = { type = \"enum\", choices = [\"on\", \"off\"], default = \"auto\" }\n\
             args.e = { type = \"bool\", default = \"yes\" }\n",
        ),
        "d.toml:6:43: actions.a.args.a.max: min 5 is greater than max 1\n\
d.toml:7:10: actions.a.args.b: enum argument needs choices\n\
d.toml:8:55: actions.a.args.c.default: default 11 is outside 0..=10\n\
d.toml:9:62: actions.a.args.d.default: default \"auto\" is not one of the choices (on, off)\n\
d.toml:10:37: actions.a.args.e.default: default must be a boolean for type \"bool\", not a string",
    );
}

#[test]
fn invalid_marker_needs_exactly_one_of_token_or_value() {
    check(
        &scpi(
            "[scpi]\ninvalid = [\n  { token = \"NAN\", value = 9.91e37, kind = \"no_data\" },\n  { kind = \"overrange\" },\n]\n",
        ),
        "d.toml:6:3: scpi.invalid[0]: an invalid marker needs exactly one of token or value\n\
d.toml:7:3: scpi.invalid[1]: an invalid marker needs exactly one of token or value",
    );
}

#[test]
fn identity_checks() {
    check(
        &scpi("[identity]\ncontains = [\"X\"]\n"),
        "d.toml:4:1: identity: identity of a scpi driver needs query",
    );
    check(
        &modbus("[identity]\nquantity = \"model\"\n"),
        "d.toml:7:12: identity.quantity: unknown quantity \"model\" (none are known)",
    );
}

#[test]
fn check_errors_needs_error_query() {
    check(
        &scpi("[scpi]\ncheck_errors = true\n"),
        "d.toml:5:16: scpi.check_errors: check_errors needs error_query",
    );
}

#[test]
fn zero_durations_refused() {
    check(
        &scpi(
            "[scpi]\ntimeout = \"0s\"\n[quantities.v]\nquery = \"V?\"\ntimeout = \"0ms\"\n\
             [measurements.m]\nstart = [\"GO\"]\nwait = { poll = { query = \"D?\", until = \"1\", interval = \"0s\" } }\nfetch = [\"v\"]\n\
             [actions.a]\ncommands = [\"*RST\"]\nsettle = \"0s\"\n",
        ),
        "d.toml:5:11: scpi.timeout: duration must be greater than zero\n\
d.toml:8:11: quantities.v.timeout: duration must be greater than zero\n\
d.toml:11:57: measurements.m.wait.poll.interval: duration must be greater than zero\n\
d.toml:15:10: actions.a.settle: duration must be greater than zero",
    );
}

#[test]
fn empty_start_fetch_and_commands_refused() {
    check(
        &scpi(
            "[quantities.v]\nquery = \"V?\"\n\
             [measurements.m]\nstart = []\nwait = { opc = \"*OPC?\" }\nfetch = []\n\
             [actions.a]\ndescription = \"nothing\"\n",
        ),
        "d.toml:7:9: measurements.m.start: start must not be empty\n\
d.toml:9:9: measurements.m.fetch: fetch must not be empty\n\
d.toml:10:1: actions.a: action needs at least one command",
    );
    check(
        &modbus("[actions.a]\nwrites = []\n"),
        "d.toml:6:1: actions.a: action needs at least one write",
    );
}

#[test]
fn several_errors_in_one_file_all_reported() {
    check(
        &scpi(
            "[quantities.a]\nunit = \"V\"\n[quantities.b]\nquery = \"B?\"\nbogus = 1\n\
             [blocks.x]\nquery = \"X?\"\nfields = [\"nope\"]\n\
             [actions.y]\ncommands = [\"Y {z}\"]\n",
        ),
        "d.toml:4:1: quantities.a: quantity needs query (or must be a block field or a measurement fetch)\n\
d.toml:8:1: quantities.b.bogus: unknown key `bogus` (known: unit, description, query, parse, field, timeout, table, address, type, order, bit, length, scale, offset, measurement_only)\n\
d.toml:11:11: blocks.x.fields[0]: unknown quantity \"nope\" (known: a, b)\n\
d.toml:13:13: actions.y.commands[0]: template names undeclared argument \"z\" (none are known)",
    );
}

#[test]
fn duplicate_driver_names_across_files() {
    let err = load_dirs(&["tests/fixtures/drivers_dup".into()]).expect_err("duplicate names");
    assert_eq!(
        err.to_string(),
        "tests/fixtures/drivers_dup/b.toml:4:8: driver.name: duplicate driver name \"dup\" (also in tests/fixtures/drivers_dup/a.toml)"
    );
}

#[test]
fn load_dirs_reads_every_toml_file() {
    let set =
        load_dirs(&["tests/fixtures/drivers_ok".into(), "drivers".into()]).expect("drivers load");
    assert!(set.contains_key("ok"));
    assert!(set.contains_key("yokogawa-wt310e"));
    assert!(set.contains_key("relay-rack"));
}

#[test]
fn missing_dir_is_reported() {
    let err = load_dirs(&["tests/fixtures/no_such_dir".into()]).expect_err("missing dir");
    let text = err.to_string();
    assert!(
        text.starts_with("tests/fixtures/no_such_dir:1:1: cannot read drivers directory:"),
        "{text}"
    );
}

#[test]
fn every_embedded_driver_is_valid() {
    assert!(!labgate::driver::EMBEDDED_DRIVERS.is_empty());
    for (name, text) in labgate::driver::EMBEDDED_DRIVERS {
        if let Err(e) = parse_driver(&Source::new(*name, *text)) {
            panic!("{name}:\n{e}");
        }
    }
}

#[test]
fn complete_examples_in_the_reference_are_valid() {
    let readme = std::fs::read_to_string("drivers/README.md").expect("drivers/README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("[driver]"))
        .collect();
    assert_eq!(blocks.len(), 2, "the two complete examples");
    for b in blocks {
        if let Err(e) = parse_driver(&Source::new("README.md", b)) {
            panic!("{b}\n{e}");
        }
    }
}

#[test]
fn every_missing_key_of_an_entry_is_reported() {
    check(
        &scpi(
            "[measurements.m]\ndescription = \"empty\"\n[actions.a]\ncommands = [\"X {v}\"]\nargs.v = { unit = \"V\" }\n",
        ),
        "d.toml:4:1: measurements.m.start: missing key\n\
d.toml:4:1: measurements.m.wait: missing key\n\
d.toml:8:10: actions.a.args.v.type: missing key",
    );
}

const BASE1: &str = "[driver]\nname = \"m\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 1\n";

fn modbus1(rest: &str) -> String {
    format!("{BASE1}{rest}")
}

#[test]
fn address_arg_and_enum_values_load() {
    let d = parse_driver(&Source::new(
        "d.toml",
        modbus1(
            "[actions.on]\nwrites = [{ table = \"coil\", address = 1, address_arg = \"position\", value = 1 }]\n\
             args.position = { type = \"int\", min = 1, max = 16, default = 1 }\n\
             [actions.loop_sp]\nwrites = [{ table = \"holding\", address = 2783, address_arg = \"loop\", address_step = 160, type = \"f32\", arg = \"c\" }]\n\
             args.loop = { type = \"int\", min = 1, max = 4 }\nargs.c = { type = \"float\" }\n\
             [actions.mode]\nwrites = [{ table = \"holding\", address = 2731, arg = \"mode\" }]\n\
             args.mode = { type = \"enum\", choices = [\"auto\", \"manual\", \"off\"], values = [10, 54, 62.0], default = \"auto\" }\n\
             [actions.edge]\nwrites = [{ table = \"holding\", address = 65534, address_arg = \"n\", address_step = 2, type = \"u32\", value = 0 }]\n\
             args.n = { type = \"int\", min = 1, max = 1 }\n",
        ),
    ))
    .expect("valid driver");
    let w = &d.file.actions["loop_sp"].writes[0];
    assert_eq!(w.address_for(1), Some(2783));
    assert_eq!(w.address_for(4), Some(2783 + 3 * 160));
    assert_eq!(
        d.file.actions["mode"].args["mode"].values.as_deref(),
        Some(&[10.0, 54.0, 62.0][..])
    );
}

#[test]
fn write_needs_an_address() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"coil\", value = 1 },\n  { table = \"coil\", address_arg = \"p\", value = 1 },\n]\n\
             args.p = { type = \"int\", min = 1, max = 4 }\n",
        ),
        "d.toml:8:3: actions.a.writes[0]: a write needs address\n\
d.toml:9:3: actions.a.writes[1]: a write with address_arg needs address: the address written when p = 1",
    );
}

#[test]
fn address_arg_names_a_declared_int_argument_with_a_range() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"coil\", address = 1, address_arg = \"positon\", value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"f\", value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"e\", value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"b\", value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"open\", value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"low\", value = 1 },\n]\n\
             args.position = { type = \"int\", min = 1, max = 4 }\n\
             args.f = { type = \"float\", min = 1, max = 4 }\n\
             args.e = { type = \"enum\", choices = [\"a\"] }\n\
             args.b = { type = \"bool\" }\n\
             args.open = { type = \"int\", min = 1 }\n\
             args.low = { type = \"int\", max = 4 }\n",
        ),
        "d.toml:8:48: actions.a.writes[0].address_arg: unknown argument \"positon\" (did you mean `position`?)\n\
d.toml:9:46: actions.a.writes[1].address_arg: address_arg \"f\" must be an int argument, not float\n\
d.toml:10:46: actions.a.writes[2].address_arg: address_arg \"e\" must be an int argument, not enum\n\
d.toml:11:46: actions.a.writes[3].address_arg: address_arg \"b\" must be an int argument, not bool\n\
d.toml:12:46: actions.a.writes[4].address_arg: address_arg \"open\" needs min and max: they bound the addresses this write can reach\n\
d.toml:13:46: actions.a.writes[5].address_arg: address_arg \"low\" needs min and max: they bound the addresses this write can reach\n\
d.toml:15:17: actions.a.args.position: argument \"position\" is not used by any command or write",
    );
}

#[test]
fn address_arg_range_stays_inside_the_table() {
    // Base 1: p = 0 would be address 0, below the base. q = 16 of an f32 at step 2 from 65505
    // ends exactly at protocol address 65535; from 65506 it would end one beyond.
    check(
        &modbus1(
            "[actions.a]\nwrites = [\n  { table = \"coil\", address = 1, address_arg = \"p\", value = 1 },\n\
               { table = \"holding\", address = 65505, address_arg = \"q\", address_step = 2, type = \"f32\", value = 1 },\n\
               { table = \"holding\", address = 65506, address_arg = \"q\", address_step = 2, type = \"f32\", value = 1 },\n]\n\
             args.p = { type = \"int\", min = 0, max = 16 }\n\
             args.q = { type = \"int\", min = 1, max = 16 }\n",
        ),
        "d.toml:8:48: actions.a.writes[0].address_arg: at p = 0 (its min) this write's address is 0, below address_base 1\n\
d.toml:10:53: actions.a.writes[2].address_arg: at q = 16 (its max) this write's address 65536 plus 2 registers goes beyond 65535",
    );
    // Huge bounds neither overflow nor pass.
    check(
        &modbus(
            "[actions.a]\nwrites = [{ table = \"coil\", address = 1, address_arg = \"p\", value = 1 }]\n\
             args.p = { type = \"int\", min = -1e300, max = 1e300 }\n",
        ),
        "d.toml:7:56: actions.a.writes[0].address_arg: at p = -9223372036854775808 (its min) this write's address is -9223372036854775808, below address_base 0\n\
d.toml:7:56: actions.a.writes[0].address_arg: at p = 9223372036854775807 (its max) this write's address 9223372036854775807 plus 1 registers goes beyond 65535",
    );
}

#[test]
fn address_step_checks() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"coil\", address = 1, address_step = 2, value = 1 },\n\
               { table = \"coil\", address = 1, address_arg = \"p\", address_step = 0, value = 1 },\n\
               { table = \"holding\", address = 1, address_arg = \"p\", type = \"f32\", value = 1 },\n\
               { table = \"holding\", address = 1, address_arg = \"p\", address_step = 3, type = \"f64\", value = 1 },\n]\n\
             args.p = { type = \"int\", min = 1, max = 4 }\n",
        ),
        "d.toml:8:49: actions.a.writes[0].address_step: address_step is only for writes with address_arg\n\
d.toml:9:66: actions.a.writes[1].address_step: address_step must be at least 1\n\
d.toml:10:1: actions.a.writes[2]: address_step 1 (the default) is less than the 2 registers of type \"f32\": neighbouring values of p would overlap\n\
d.toml:11:69: actions.a.writes[3].address_step: address_step 3 is less than the 4 registers of type \"f64\": neighbouring values of p would overlap",
    );
}

#[test]
fn enum_values_checks() {
    check(
        &modbus(
            "[actions.a]\nwrites = [\n  { table = \"holding\", address = 1, arg = \"short\" },\n\
               { table = \"holding\", address = 2, arg = \"n\" },\n\
               { table = \"holding\", address = 3, arg = \"bare\" },\n\
               { table = \"holding\", address = 4, arg = \"big\" },\n\
               { table = \"holding\", address = 5, arg = \"odd\" },\n]\n\
             args.short = { type = \"enum\", choices = [\"a\", \"b\", \"c\"], values = [1, 2] }\n\
             args.n = { type = \"int\", values = [1, 2] }\n\
             args.bare = { type = \"enum\", choices = [\"a\", \"b\"] }\n\
             args.big = { type = \"enum\", choices = [\"a\", \"b\"], values = [1, 70000] }\n\
             args.odd = { type = \"enum\", choices = [\"a\", \"b\"], values = [1, nan] }\n",
        ),
        "d.toml:10:41: actions.a.writes[2].arg: enum argument \"bare\" has no values: a register write needs a number for each choice (values = [...], one per choice, in order)\n\
d.toml:14:67: actions.a.args.short.values: 2 values for 3 choices: give one value per choice, in the same order\n\
d.toml:15:35: actions.a.args.n.values: values are only for type \"enum\"\n\
d.toml:17:64: actions.a.args.big.values[1]: cannot be written by writes[3]: 70000 does not fit in u16\n\
d.toml:18:64: actions.a.args.odd.values[1]: value must be a finite number",
    );
}

#[test]
fn enum_choices_are_unique_ignoring_case() {
    check(
        &scpi(
            "[actions.a]\ncommands = [\"M {m}\", \"N {n}\"]\n\
             args.m = { type = \"enum\", choices = [\"auto\", \"off\", \"auto\"] }\n\
             args.n = { type = \"enum\", choices = [\"ON\", \"on\"] }\n",
        ),
        "d.toml:6:53: actions.a.args.m.choices[2]: choice \"auto\" is listed twice\n\
d.toml:7:44: actions.a.args.n.choices[1]: choice \"on\" repeats \"ON\" (choices are matched ignoring case)",
    );
}

#[test]
fn enum_values_are_for_modbus_drivers() {
    check(
        &scpi(
            "[actions.a]\ncommands = [\"M {m}\"]\n\
             args.m = { type = \"enum\", choices = [\"auto\", \"off\"], values = [10, 62] }\n",
        ),
        "d.toml:6:63: actions.a.args.m.values: values are for modbus writes; a scpi template sends the choice's text",
    );
}

#[test]
fn modbus_action_examples_in_the_reference_are_valid() {
    let readme = std::fs::read_to_string("drivers/README.md").expect("drivers/README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| !b.starts_with("[driver]") && b.contains("writes = "))
        .collect();
    assert!(blocks.len() >= 3, "setpoint, relay and mode examples");
    for b in blocks {
        let text = modbus1(b);
        if let Err(e) = parse_driver(&Source::new("README.md", &text)) {
            panic!("{b}\n{e}");
        }
    }
}
