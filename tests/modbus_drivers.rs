//! The Modbus driver files parse as `DriverFile`s, and their register maps match the
//! simulated devices: every quantity reads without an exception and with a plausible value,
//! and the actions' writes do what their names say.

use std::sync::Arc;
use std::time::Duration;

use labgate::driver::DriverFile;
use labgate::driver::schema::{ArgType, Protocol, Quantity};
use labgate::instrument::args::{ArgValue, register_value, resolve_args};
use labgate::modbus::ops::{ModbusOp, ModbusReply, execute};
use labgate::modbus::value::{Decoded, ValueType, WordOrder, decode, encode, scale, unscale};
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, serve_tcp};
use tokio::time::timeout;
use tokio_modbus::client::Context;

const WAIT: Duration = Duration::from_secs(5);

fn load(name: &str) -> DriverFile {
    let path = format!("{}/drivers/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file: DriverFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(file.driver.name, name, "{path}");
    assert_eq!(file.driver.protocol, Protocol::Modbus, "{path}");
    let base = file.modbus.as_ref().expect("[modbus] section").address_base;
    assert!(base <= 1, "{path}: address_base {base}");
    for (key, q) in &file.quantities {
        assert!(
            q.table.is_some() && q.address.is_some() && q.value_type.is_some(),
            "{path}: quantity {key} lacks table, address or type"
        );
        assert!(
            q.address >= Some(u16::from(base)),
            "{path}: {key} below base"
        );
    }
    for (key, action) in &file.actions {
        assert!(
            !action.writes.is_empty(),
            "{path}: action {key} writes nothing"
        );
        for w in &action.writes {
            match &w.arg {
                Some(arg) => assert!(action.args.contains_key(arg), "{path}: {key} uses {arg}"),
                None => assert!(
                    w.value.is_some(),
                    "{path}: {key} writes neither arg nor value"
                ),
            }
            assert!(w.address.is_some(), "{path}: {key} writes no address");
            if let Some(arg) = &w.address_arg {
                assert!(action.args.contains_key(arg), "{path}: {key} uses {arg}");
            }
        }
    }
    file
}

/// Just enough of the instrument layer to drive a file against the simulator.
struct Bound {
    file: DriverFile,
    ctx: Context,
    unit: u8,
}

impl Bound {
    fn base(&self) -> u16 {
        u16::from(self.file.modbus.as_ref().map_or(0, |m| m.address_base))
    }

    fn order(&self, own: Option<WordOrder>) -> WordOrder {
        own.or(self.file.modbus.as_ref().and_then(|m| m.order))
            .unwrap_or_default()
    }

    async fn read(&mut self, key: &str) -> Decoded {
        let q: Quantity = self.file.quantities[key].clone();
        let (table, ty) = (q.table.unwrap(), q.value_type.unwrap());
        let op = ModbusOp::Read {
            table,
            address: q.address.unwrap() - self.base(),
            count: ty.registers(q.length),
        };
        let reply = timeout(WAIT, execute(&mut self.ctx, self.unit, &op))
            .await
            .unwrap_or_else(|_| panic!("{key}: {op} timed out"))
            .unwrap_or_else(|e| panic!("{}: {key}: {op}: {e}", self.file.driver.name));
        let regs: Vec<u16> = match reply {
            ModbusReply::Words(w) => w,
            ModbusReply::Bits(b) => b.into_iter().map(u16::from).collect(),
            ModbusReply::Written => panic!("{key}: read answered as a write"),
        };
        match decode(&regs, ty, self.order(q.order), q.bit) {
            Ok(Decoded::Number(v)) => Decoded::Number(scale(v, q.scale, q.offset)),
            Ok(other) => other,
            Err(e) => panic!("{key}: {e}"),
        }
    }

    async fn number(&mut self, key: &str) -> f64 {
        match self.read(key).await {
            Decoded::Number(v) => v,
            other => panic!("{key} is {other:?}"),
        }
    }

    async fn flag(&mut self, key: &str) -> bool {
        match self.read(key).await {
            Decoded::Bool(b) => b,
            other => panic!("{key} is {other:?}"),
        }
    }

    /// Run an action with `key=value` arguments, checked as `labgate act` checks them.
    async fn act(&mut self, action: &str, args: &[(&str, &str)]) {
        let def = self.file.actions[action].clone();
        let given = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let resolved = resolve_args(action, &def, &given).unwrap_or_else(|e| panic!("{e}"));
        for w in &def.writes {
            let value = match &w.arg {
                Some(a) => register_value(&resolved[a], &def.args[a])
                    .unwrap_or_else(|| panic!("{action}: {a} has no number")),
                None => w.value.unwrap(),
            };
            let address = match &w.address_arg {
                Some(a) => match resolved[a] {
                    ArgValue::Int(v) => w.address_for(v).unwrap(),
                    ref other => panic!("{action}: address from {other}"),
                },
                None => i128::from(w.address.unwrap()),
            };
            let address = u16::try_from(address - i128::from(self.base())).unwrap();
            let ty = w.value_type.unwrap_or(ValueType::U16);
            let raw = unscale(value, w.scale, w.offset);
            let regs = encode(&Decoded::Number(raw), ty, self.order(w.order), None)
                .unwrap_or_else(|e| panic!("{action}: {e}"));
            let op = ModbusOp::write(w.table, address, &regs).unwrap();
            let reply = timeout(WAIT, execute(&mut self.ctx, self.unit, &op))
                .await
                .unwrap_or_else(|_| panic!("{action}: {op} timed out"));
            assert!(
                matches!(reply, Ok(ModbusReply::Written)),
                "{action}: {op}: {reply:?}"
            );
        }
    }
}

async fn bind(name: &str, unit: u8, addr: std::net::SocketAddr) -> Bound {
    let ctx = timeout(WAIT, tokio_modbus::client::tcp::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    Bound {
        file: load(name),
        ctx,
        unit,
    }
}

#[test]
fn every_modbus_driver_file_parses() {
    for name in ["watlow-f4t", "eurotherm-3200", "relay-rack"] {
        load(name);
    }
    let rack = load("relay-rack");
    for n in 1..=16 {
        assert_eq!(rack.quantities[&format!("position_{n:02}")].unit, "mA");
    }
    // One action per switching direction, its position an argument covering the rack.
    for name in ["relay_on", "relay_off"] {
        let a = &rack.actions[name];
        let position = &a.args["position"];
        assert_eq!(position.arg_type, ArgType::Int, "{name}");
        assert_eq!(
            (position.min, position.max),
            (Some(1.0), Some(16.0)),
            "{name}"
        );
        assert_eq!(a.writes.len(), 1, "{name}");
        assert_eq!(
            a.writes[0].address_arg.as_deref(),
            Some("position"),
            "{name}"
        );
    }
    assert!(!rack.actions.keys().any(|k| k.starts_with("relay_on_")));
    let f4t = load("watlow-f4t");
    let mode = &f4t.actions["set_mode"].args["mode"];
    assert_eq!(mode.choices, ["auto", "manual", "off"]);
    assert_eq!(mode.values.as_deref(), Some(&[10.0, 54.0, 62.0][..]));
}

#[tokio::test]
async fn driver_files_match_the_simulated_devices() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(
        listener,
        Arc::new(ModbusBench::default()),
        Faults::default(),
    ));

    let mut f4t = bind("watlow-f4t", 1, addr).await;
    for key in f4t.file.quantities.keys().cloned().collect::<Vec<_>>() {
        f4t.read(&key).await;
    }
    let t = f4t.number("temperature").await;
    assert!((t - 23.0).abs() < 0.5, "f4t temperature {t}");
    assert_eq!(f4t.number("mode").await, 10.0);
    f4t.act("set_setpoint", &[("celsius", "60.5")]).await;
    assert_eq!(f4t.number("constant_setpoint").await, 60.5);
    assert_eq!(f4t.number("setpoint").await, 60.5);
    f4t.act("mode_off", &[]).await;
    assert_eq!(f4t.number("mode").await, 62.0);
    f4t.act("mode_auto", &[]).await;
    assert_eq!(f4t.number("mode").await, 10.0);
    // Every choice's code is one the simulated controller accepts, and reads back as written.
    for (choice, code) in [("manual", 54.0), ("off", 62.0), ("auto", 10.0)] {
        f4t.act("set_mode", &[("mode", choice)]).await;
        assert_eq!(f4t.number("mode").await, code, "{choice}");
    }

    let mut euro = bind("eurotherm-3200", 2, addr).await;
    let t = euro.number("temperature").await;
    assert!((t - 23.0).abs() < 0.5, "eurotherm temperature {t}");
    euro.act("set_setpoint", &[("celsius", "45.5")]).await;
    assert!((euro.number("working_setpoint").await - 45.5).abs() < 1e-9);
    assert!((euro.number("target_setpoint").await - 23.0).abs() < 1e-9);
    assert_eq!(euro.number("timer_status").await, 0.0);

    let mut rack = bind("relay-rack", 3, addr).await;
    let v = rack.number("supply_voltage").await;
    assert!((229.0..=231.0).contains(&v), "supply {v}");
    for n in 1..=16 {
        let failed = rack.flag(&format!("failed_{n:02}")).await;
        assert_eq!(failed, n == 13, "failed_{n:02}");
    }
    rack.act("relay_on", &[("position", "5")]).await;
    assert!(rack.flag("relay_05").await);
    assert!(!rack.flag("relay_04").await && !rack.flag("relay_06").await);
    let ma = rack.number("position_05").await;
    assert!((40.0..=50.0).contains(&ma), "position 5 draws {ma} mA");
    // Both ends of the range reach the rack's first and last coil.
    rack.act("relay_on", &[("position", "1")]).await;
    rack.act("relay_on", &[("position", "16")]).await;
    assert!(rack.flag("relay_01").await && rack.flag("relay_16").await);
    rack.act("relay_off", &[("position", "5")]).await;
    assert!(!rack.flag("relay_05").await);
    assert!(rack.flag("relay_01").await, "only position 5 opened");
    rack.act("all_on", &[]).await;
    assert!(rack.flag("relay_16").await);
    assert_eq!(rack.number("position_13").await, 0.0);
    rack.act("all_off", &[]).await;
    for n in 1..=16 {
        assert!(!rack.flag(&format!("relay_{n:02}")).await, "relay_{n:02}");
    }
}
