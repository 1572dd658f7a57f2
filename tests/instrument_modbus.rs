//! The Modbus instruments end to end over Modbus TCP: config file -> gateway -> instrument ->
//! link actor -> the simulated chamber (unit 1), Eurotherm (unit 2) and relay rack (unit 3)
//! sharing one server. Word orders, scaling, coils, input registers and exceptions by name.

mod common;

use std::collections::BTreeMap;

use common::{Ports, sim_gateway, sim_gateway_with, wait_connected, write_driver};
use labgate::instrument::InstrumentError;
use labgate::link::{LinkError, LinkState};
use labgate::modbus::ops::{ModbusOp, ModbusReply};
use labgate::modbus::value::Table;
use labgate::reading::{Reading, Value};
use labgate::sim::bench::{BenchFaults, SimBenchConfig};
use labgate::sim::modbus::SimDevice;

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(r: &Reading) -> f64 {
    match r.value {
        Value::Number(v) => v,
        ref other => panic!("{} is not a number: {other:?}", r.quantity),
    }
}

fn find<'a>(readings: &'a [Reading], name: &str) -> &'a Reading {
    readings
        .iter()
        .find(|r| r.quantity == name)
        .unwrap_or_else(|| panic!("no reading {name} in {readings:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chamber_f32_cdab_read_write_read_back() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let chamber = gw.instrument("chamber1").unwrap();
    let r = chamber
        .read(&["temperature", "setpoint", "constant_setpoint", "mode"])
        .await
        .unwrap();
    let t = number(find(&r, "temperature"));
    assert!((20.0..26.0).contains(&t), "ambient, got {t}");
    assert_eq!(find(&r, "temperature").unit, "degC");
    assert_eq!(number(find(&r, "constant_setpoint")), 23.0);
    assert_eq!(number(find(&r, "mode")), 10.0, "auto");

    chamber
        .act("set_setpoint", &args(&[("celsius", "42.5")]))
        .await
        .unwrap();
    let r = chamber.read(&["constant_setpoint"]).await.unwrap();
    assert_eq!(number(&r[0]), 42.5);
    match bench.modbus_devices.device(1) {
        Some(SimDevice::Chamber(c)) => assert_eq!(c.setpoint(), 42.5),
        other => panic!("unit 1 is {other:?}"),
    }
    // On the wire the low word comes first: 42.5f32 = 0x422A0000 -> [0x0000, 0x422A].
    let raw = chamber
        .modbus_raw(ModbusOp::Read {
            table: Table::Holding,
            address: 2782,
            count: 2,
        })
        .await
        .unwrap();
    assert_eq!(raw, ModbusReply::Words(vec![0x0000, 0x422A]));

    // Out of the driver's range: refused before anything is sent.
    let link = &gw.links["plc_link"];
    let before = link.status();
    let e = chamber
        .act("set_setpoint", &args(&[("celsius", "500")]))
        .await
        .unwrap_err();
    assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
    assert_eq!(link.status().requests_ok, before.requests_ok);
    assert_eq!(link.status().requests_failed, before.requests_failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eurotherm_i16_tenths_scaling_both_ways() {
    let (_bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let ctrl = gw.instrument("ctrl1").unwrap();
    let r = ctrl
        .read(&["temperature", "target_setpoint", "working_setpoint"])
        .await
        .unwrap();
    assert!((20.0..26.0).contains(&number(find(&r, "temperature"))));
    assert!((number(find(&r, "target_setpoint")) - 23.0).abs() < 1e-9);

    ctrl.act("set_setpoint", &args(&[("celsius", "123.4")]))
        .await
        .unwrap();
    let r = ctrl.read(&["working_setpoint"]).await.unwrap();
    assert!((number(&r[0]) - 123.4).abs() < 1e-9, "{:?}", r[0]);
    let raw = ctrl
        .modbus_raw(ModbusOp::Read {
            table: Table::Holding,
            address: 5,
            count: 1,
        })
        .await
        .unwrap();
    assert_eq!(raw, ModbusReply::Words(vec![1234]));

    // Negative values go out as two's complement and come back signed.
    ctrl.act("set_setpoint", &args(&[("celsius", "-12.5")]))
        .await
        .unwrap();
    let r = ctrl.read(&["working_setpoint"]).await.unwrap();
    assert!((number(&r[0]) + 12.5).abs() < 1e-9, "{:?}", r[0]);
    // The EEPROM target setpoint was not touched.
    let r = ctrl.read(&["target_setpoint"]).await.unwrap();
    assert!((number(&r[0]) - 23.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_coils_discrete_inputs_and_input_registers() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let rack = gw.instrument("rack1").unwrap();
    let r = rack
        .read(&["relay_02", "position_02", "failed_13", "failed_02"])
        .await
        .unwrap();
    assert_eq!(find(&r, "relay_02").value, Value::Bool(false));
    assert_eq!(number(find(&r, "position_02")), 0.0);
    assert_eq!(find(&r, "failed_13").value, Value::Bool(true));
    assert_eq!(find(&r, "failed_02").value, Value::Bool(false));

    rack.act("relay_on", &args(&[("position", "2")]))
        .await
        .unwrap();
    rack.act("relay_on", &args(&[("position", "13")]))
        .await
        .unwrap();
    match bench.modbus_devices.device(3) {
        Some(SimDevice::RelayRack(rr)) => {
            assert_eq!(rr.relay(2), Some(true));
            assert_eq!(rr.relay(1), Some(false));
        }
        other => panic!("unit 3 is {other:?}"),
    }
    let link = &gw.links["plc_link"];
    let before = link.status().requests_ok;
    let names = [
        "relay_02",
        "position_01",
        "position_02",
        "position_03",
        "position_13",
        "supply_voltage",
    ];
    let r = rack.read(&names).await.unwrap();
    let used = link.status().requests_ok - before;
    assert!(
        used < names.len() as u64,
        "adjacent reads merged: {used} requests"
    );
    assert_eq!(find(&r, "relay_02").value, Value::Bool(true));
    let ma = number(find(&r, "position_02"));
    assert!(ma > 10.0, "a lit lamp draws current: {ma} mA");
    assert_eq!(find(&r, "position_02").unit, "mA");
    assert_eq!(number(find(&r, "position_01")), 0.0);
    assert_eq!(
        number(find(&r, "position_13")),
        0.0,
        "failed lamp draws nothing"
    );
    let v = number(find(&r, "supply_voltage"));
    assert!(v.is_finite() && v > 1.0, "supply {v}");
    assert_eq!(find(&r, "supply_voltage").unit, "V");

    rack.act("all_off", &args(&[])).await.unwrap();
    let r = rack.read(&["relay_02", "relay_13"]).await.unwrap();
    assert!(r.iter().all(|r| r.value == Value::Bool(false)), "{r:?}");
}

fn rack_relays(bench: &labgate::sim::bench::SimBench) -> Vec<u16> {
    match bench.modbus_devices.device(3) {
        Some(SimDevice::RelayRack(rr)) => (1..=16).filter(|&n| rr.relay(n) == Some(true)).collect(),
        other => panic!("unit 3 is {other:?}"),
    }
}

/// relay_on / relay_off take the position as an argument that picks the coil: each position
/// switches its own coil and no other, and a position outside 1..16 never reaches the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_position_argument_picks_the_coil() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let rack = gw.instrument("rack1").unwrap();
    let link = &gw.links["plc_link"];
    assert_eq!(rack_relays(&bench), Vec::<u16>::new());

    let mut on = Vec::new();
    for position in [1u16, 5, 9, 16] {
        rack.act("relay_on", &args(&[("position", &position.to_string())]))
            .await
            .unwrap();
        on.push(position);
        assert_eq!(
            rack_relays(&bench),
            on,
            "after relay_on position={position}"
        );
    }
    // Read back through the driver's own quantities too: the coil numbering agrees.
    let r = rack
        .read(&["relay_01", "relay_04", "relay_05", "relay_06", "relay_16"])
        .await
        .unwrap();
    let closed: Vec<bool> = r.iter().map(|r| r.value == Value::Bool(true)).collect();
    assert_eq!(closed, [true, false, true, false, true]);

    rack.act("relay_off", &args(&[("position", "9")]))
        .await
        .unwrap();
    assert_eq!(rack_relays(&bench), [1, 5, 16]);
    // Typed arguments (recipes, the API) take the same path.
    let mut typed = BTreeMap::new();
    typed.insert("position".to_string(), toml::Value::Integer(12));
    rack.act_typed("relay_on", &typed).await.unwrap();
    assert_eq!(rack_relays(&bench), [1, 5, 12, 16]);

    // Outside the rack: refused by the argument check, before any request.
    let before = link.status();
    for (position, why) in [("0", "out of range 1..16"), ("17", "out of range 1..16")] {
        let e = rack
            .act("relay_on", &args(&[("position", position)]))
            .await
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
        let text = e.to_string();
        for part in ["rack1", "relay_on", "position", why] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
    }
    for bad in ["2.5", "two", ""] {
        let e = rack
            .act("relay_off", &args(&[("position", bad)]))
            .await
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Args { .. }), "{bad:?}: {e:?}");
    }
    let e = rack.act("relay_on", &args(&[])).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("missing required argument \"position\""),
        "{e}"
    );
    typed.insert("position".to_string(), toml::Value::Integer(-3));
    assert!(matches!(
        rack.act_typed("relay_off", &typed).await,
        Err(InstrumentError::Args { .. })
    ));
    let after = link.status();
    assert_eq!(after.requests_ok, before.requests_ok, "nothing was sent");
    assert_eq!(after.requests_failed, before.requests_failed);
    assert_eq!(rack_relays(&bench), [1, 5, 12, 16]);
}

/// Drivers for the same rack written other ways: every second coil, channels numbered from 0,
/// and an action whose second write cannot be encoded.
const RACK_VARIANTS: &str = r#"
[driver]
name = "test-rack-variants"
protocol = "modbus"

[modbus]
address_base = 1

[actions.odd_on]
writes = [{ table = "coil", address = 1, address_arg = "pair", address_step = 2, value = 1 }]
args.pair = { type = "int", min = 1, max = 8 }

[actions.channel_on]
writes = [{ table = "coil", address = 2, address_arg = "channel", value = 1 }]
args.channel = { type = "int", min = 0, max = 15 }

[actions.on_then_bad]
writes = [
    { table = "coil", address = 1, address_arg = "position", value = 1 },
    { table = "holding", address = 1, type = "u16", value = 70000 },
]
args.position = { type = "int", min = 1, max = 16 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_step_anchor_and_all_writes_built_before_any_is_sent() {
    // A second connection to the simulated Modbus server reaches the same rack (unit 3).
    let (bench, gw, _dir) = sim_gateway_with(SimBenchConfig::ephemeral(), |b, dir| {
        write_driver(dir, "test-rack-variants.toml", RACK_VARIANTS);
        format!(
            "[links.variants_link]\nprotocol = \"modbus-tcp\"\nkind = \"tcp\"\nhost = \"127.0.0.1\"\n\
             port = {}\n\n[instruments.variants]\ndriver = \"test-rack-variants\"\n\
             link = \"variants_link\"\nunit = 3\n",
            Ports::of(b).modbus
        )
    })
    .await;
    let rack = gw.instrument("variants").unwrap();
    let link = &gw.links["variants_link"];
    // pair N is coil 2N - 1.
    rack.act("odd_on", &args(&[("pair", "3")])).await.unwrap();
    assert_eq!(rack_relays(&bench), [5]);
    rack.act("odd_on", &args(&[("pair", "8")])).await.unwrap();
    assert_eq!(rack_relays(&bench), [5, 15]);
    // `address` is channel 1's coil, so channel 0 is the coil before it.
    rack.act("channel_on", &args(&[("channel", "0")]))
        .await
        .unwrap();
    rack.act("channel_on", &args(&[("channel", "15")]))
        .await
        .unwrap();
    assert_eq!(rack_relays(&bench), [1, 5, 15, 16]);

    // The holding write cannot be encoded: the coil write before it is not sent either.
    let before = link.status();
    let e = rack
        .act("on_then_bad", &args(&[("position", "2")]))
        .await
        .unwrap_err();
    assert!(matches!(e, InstrumentError::Invalid { .. }), "{e:?}");
    let text = e.to_string();
    for part in ["variants", "on_then_bad", "70000"] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert_eq!(
        link.status().requests_ok,
        before.requests_ok,
        "nothing was sent"
    );
    assert_eq!(rack_relays(&bench), [1, 5, 15, 16]);
}

fn chamber_mode(bench: &labgate::sim::bench::SimBench) -> u16 {
    match bench.modbus_devices.device(1) {
        Some(SimDevice::Chamber(c)) => c.mode(),
        other => panic!("unit 1 is {other:?}"),
    }
}

/// set_mode's enum argument writes the register code its choice maps to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chamber_mode_choice_writes_its_code() {
    let (bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let chamber = gw.instrument("chamber1").unwrap();
    let link = &gw.links["plc_link"];
    assert_eq!(chamber_mode(&bench), 10, "starts in auto");
    for (choice, code) in [("manual", 54u16), ("off", 62), ("AUTO", 10), ("Off", 62)] {
        chamber
            .act("set_mode", &args(&[("mode", choice)]))
            .await
            .unwrap();
        assert_eq!(chamber_mode(&bench), code, "mode={choice}");
        let r = chamber.read(&["mode"]).await.unwrap();
        assert_eq!(number(&r[0]), f64::from(code), "mode={choice} read back");
    }
    let mut typed = BTreeMap::new();
    typed.insert("mode".to_string(), toml::Value::String("manual".into()));
    chamber.act_typed("set_mode", &typed).await.unwrap();
    assert_eq!(chamber_mode(&bench), 54);

    // A choice the driver does not list (or a raw code) is refused by name, before any request.
    let before = link.status();
    for bad in ["standby", "54", ""] {
        let e = chamber
            .act("set_mode", &args(&[("mode", bad)]))
            .await
            .unwrap_err();
        assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
        let text = e.to_string();
        for part in [
            "chamber1",
            "set_mode",
            "\"mode\"",
            "not one of auto, manual, off",
        ] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
    }
    typed.insert("mode".to_string(), toml::Value::Integer(10));
    let e = chamber.act_typed("set_mode", &typed).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Args { .. }), "{e:?}");
    let after = link.status();
    assert_eq!(after.requests_ok, before.requests_ok, "nothing was sent");
    assert_eq!(after.requests_failed, before.requests_failed);
    assert_eq!(chamber_mode(&bench), 54);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_are_named_and_keep_the_link_up() {
    let (_bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let ctrl = gw.instrument("ctrl1").unwrap();
    let link = &gw.links["plc_link"];
    ctrl.read(&["temperature"]).await.unwrap();
    let connected = wait_connected(link).await;

    // The working setpoint is read-only on a 3200.
    let e = ctrl
        .modbus_raw(ModbusOp::WriteRegister {
            address: 5,
            value: 100,
        })
        .await
        .unwrap_err();
    match e.link_error() {
        Some(LinkError::Exception {
            unit, code, name, ..
        }) => {
            assert_eq!(*unit, 2);
            assert_eq!(*code, 2);
            assert_eq!(*name, "illegal data address");
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    assert!(e.to_string().contains("illegal data address"), "{e}");
    assert!(e.to_string().contains("ctrl1"), "{e}");
    assert!(e.link_error().unwrap().is_device_refusal());

    // The chamber refuses an unknown mode code: illegal data value. (set_mode only sends the
    // codes of its choices, so the code goes out raw.)
    let chamber = gw.instrument("chamber1").unwrap();
    let e = chamber
        .modbus_raw(ModbusOp::WriteRegister {
            address: 2730,
            value: 11,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.link_error(), Some(LinkError::Exception { code: 3, .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("illegal data value"), "{e}");

    let s = link.status();
    assert_eq!(s.state, LinkState::Connected);
    assert_eq!(
        s.reconnects, connected.reconnects,
        "no reconnect after a refusal"
    );
    // And the link still serves.
    let r = ctrl.read(&["working_setpoint"]).await.unwrap();
    assert!((number(&r[0]) - 23.0).abs() < 1e-9);
    let r = chamber.read(&["mode"]).await.unwrap();
    assert_eq!(number(&r[0]), 10.0);
}

/// Reads reuse the last read plan while the list is the same; a different list, or the same
/// names in another order, must get readings for exactly what it asked, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_quantity_list_never_reuses_a_stale_plan() {
    let (_bench, gw, _dir) = sim_gateway(BenchFaults::default()).await;
    let rack = gw.instrument("rack1").unwrap();
    let link = &gw.links["plc_link"];
    // (list, requests): the supply voltage is 100 registers from position 1, beyond the merge
    // gap, and coils are another table; positions 1 and 2 are adjacent.
    let lists: [(&[&str], u64); 6] = [
        (&["position_01", "supply_voltage"], 2),
        (&["position_01", "supply_voltage"], 2),
        (&["supply_voltage", "position_01"], 2),
        (&["relay_02"], 1),
        (&["position_01", "relay_02", "supply_voltage"], 3),
        (&["position_02", "position_01"], 1),
    ];
    for (names, requests) in lists {
        let before = link.status().requests_ok;
        let r = rack.read(names).await.unwrap();
        let used = link.status().requests_ok - before;
        let got: Vec<&str> = r.iter().map(|r| r.quantity.as_str()).collect();
        assert_eq!(got, names, "readings follow the asked order");
        for reading in &r {
            match reading.quantity.as_str() {
                "relay_02" => assert!(matches!(reading.value, Value::Bool(_)), "{reading:?}"),
                "supply_voltage" => {
                    assert_eq!(reading.unit, "V");
                    assert!(number(reading) > 1.0, "{reading:?}");
                }
                _ => assert_eq!(reading.unit, "mA", "{reading:?}"),
            }
        }
        assert_eq!(used, requests, "{names:?}");
    }
}
