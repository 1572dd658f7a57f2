//! Against a Modbus implementation we did not write: a pymodbus server read and written by
//! our `ops::execute` and value codecs, and a pymodbus client reading and writing our
//! simulated bench. pymodbus lives in a virtualenv under target/ that
//! tests/peers/ensure_venv.py creates on first use (from tests/peers/requirements.txt); if it
//! cannot be made the tests fail rather than skip, so CI cannot pass them by accident.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{PYTHON_WAIT, python, run_peer_json, start_peer_server};
use labgate::modbus::ops::{ModbusError, ModbusOp, ModbusReply, execute};
use labgate::modbus::value::{Decoded, Table, ValueType, WordOrder, decode, encode};
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, serve_tcp};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_modbus::client::Context;

const WAIT: Duration = Duration::from_secs(5);

async fn require_pymodbus() {
    let status = timeout(
        PYTHON_WAIT,
        Command::new(python())
            .args(["-c", "import pymodbus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("python3 -c 'import pymodbus' timed out");
    assert!(
        matches!(status, Ok(s) if s.success()),
        "pymodbus cannot be imported in the peers virtualenv (tests/peers/ensure_venv.py)"
    );
}

/// Starts the pymodbus server and returns it with the port it printed.
async fn start_pymodbus_server() -> (Child, u16) {
    require_pymodbus().await;
    // It serves until its stdin closes, so it cannot outlive the test.
    let (child, line) = start_peer_server("pymodbus_server.py", true).await;
    let port = line
        .parse()
        .unwrap_or_else(|e| panic!("pymodbus_server.py printed {line:?}: {e}"));
    (child, port)
}

async fn run(ctx: &mut Context, op: ModbusOp) -> Result<ModbusReply, ModbusError> {
    timeout(WAIT, execute(ctx, 1, &op))
        .await
        .unwrap_or_else(|_| panic!("{op} timed out"))
}

async fn holding(ctx: &mut Context, address: u16, count: u16) -> Vec<u16> {
    let op = ModbusOp::Read {
        table: Table::Holding,
        address,
        count,
    };
    match run(ctx, op).await {
        Ok(ModbusReply::Words(w)) => w,
        other => panic!("read holding {address}+{count}: {other:?}"),
    }
}

fn value(regs: &[u16], ty: ValueType, order: WordOrder) -> Decoded {
    decode(regs, ty, order, None).unwrap_or_else(|e| panic!("decode {regs:?}: {e}"))
}

#[tokio::test]
async fn our_client_reads_and_writes_a_pymodbus_server() {
    let (mut server, port) = start_pymodbus_server().await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut ctx = timeout(WAIT, tokio_modbus::client::tcp::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect to pymodbus");

    // The map documented at the top of pymodbus_server.py.
    let regs = holding(&mut ctx, 0, 10).await;
    assert_eq!(
        value(&regs[0..1], ValueType::U16, WordOrder::ABCD),
        Decoded::Number(1234.0)
    );
    assert_eq!(
        value(&regs[1..2], ValueType::I16, WordOrder::ABCD),
        Decoded::Number(-200.0)
    );
    assert_eq!(
        value(&regs[2..4], ValueType::F32, WordOrder::CDAB),
        Decoded::Number(21.5)
    );
    assert_eq!(
        value(&regs[4..6], ValueType::F32, WordOrder::ABCD),
        Decoded::Number(-3.25)
    );
    assert_eq!(
        value(&regs[6..8], ValueType::U32, WordOrder::ABCD),
        Decoded::Number(100000.0)
    );
    assert_eq!(
        value(&regs[8..10], ValueType::String, WordOrder::ABCD),
        Decoded::Text("OK".into())
    );
    let input = match run(
        &mut ctx,
        ModbusOp::Read {
            table: Table::Input,
            address: 0,
            count: 3,
        },
    )
    .await
    {
        Ok(ModbusReply::Words(w)) => w,
        other => panic!("read input 0+3: {other:?}"),
    };
    assert_eq!(input[0], 65535);
    assert_eq!(
        value(&input[1..3], ValueType::F32, WordOrder::CDAB),
        Decoded::Number(230.0)
    );
    let coils = run(
        &mut ctx,
        ModbusOp::Read {
            table: Table::Coil,
            address: 0,
            count: 8,
        },
    )
    .await;
    let expected = [true, false, true, true, false, false, false, true];
    assert_eq!(coils.ok(), Some(ModbusReply::Bits(expected.to_vec())));
    let discrete = run(
        &mut ctx,
        ModbusOp::Read {
            table: Table::DiscreteInput,
            address: 1,
            count: 6,
        },
    )
    .await;
    let expected = [true, false, false, false, false, true];
    assert_eq!(discrete.ok(), Some(ModbusReply::Bits(expected.to_vec())));

    // Writes, read back through the same server.
    let written = |r: Result<ModbusReply, ModbusError>| {
        assert!(matches!(r, Ok(ModbusReply::Written)), "{r:?}");
    };
    written(
        run(
            &mut ctx,
            ModbusOp::WriteRegister {
                address: 10,
                value: 0xBEEF,
            },
        )
        .await,
    );
    let sp = encode(
        &Decoded::Number(-40.5),
        ValueType::F32,
        WordOrder::CDAB,
        None,
    )
    .unwrap();
    written(run(&mut ctx, ModbusOp::write(Table::Holding, 12, &sp).unwrap()).await);
    let i32s = encode(
        &Decoded::Number(-123456.0),
        ValueType::I32,
        WordOrder::DCBA,
        None,
    )
    .unwrap();
    written(
        run(
            &mut ctx,
            ModbusOp::write(Table::Holding, 14, &i32s).unwrap(),
        )
        .await,
    );
    written(
        run(
            &mut ctx,
            ModbusOp::MaskWrite {
                address: 10,
                and_mask: 0xFF00,
                or_mask: 0x0012,
            },
        )
        .await,
    );
    let back = holding(&mut ctx, 10, 6).await;
    assert_eq!(back[0], 0xBE12);
    assert_eq!(
        value(&back[2..4], ValueType::F32, WordOrder::CDAB),
        Decoded::Number(-40.5)
    );
    assert_eq!(
        value(&back[4..6], ValueType::I32, WordOrder::DCBA),
        Decoded::Number(-123456.0)
    );
    written(
        run(
            &mut ctx,
            ModbusOp::WriteCoil {
                address: 0,
                value: false,
            },
        )
        .await,
    );
    written(
        run(
            &mut ctx,
            ModbusOp::WriteCoils {
                address: 4,
                values: vec![true, true],
            },
        )
        .await,
    );
    let coils = run(
        &mut ctx,
        ModbusOp::Read {
            table: Table::Coil,
            address: 0,
            count: 8,
        },
    )
    .await;
    let expected = [false, false, true, true, true, true, false, true];
    assert_eq!(coils.ok(), Some(ModbusReply::Bits(expected.to_vec())));

    // Outside the map: pymodbus says illegal data address, and the link stays usable.
    let err = run(
        &mut ctx,
        ModbusOp::Read {
            table: Table::Holding,
            address: 500,
            count: 2,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ModbusError::Exception {
                code: 2,
                name: "illegal data address"
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_link_fault());
    assert_eq!(holding(&mut ctx, 0, 1).await, [1234]);

    drop(server.stdin.take());
    let _ = timeout(WAIT, server.kill()).await;
}

#[tokio::test]
async fn a_pymodbus_client_reads_and_writes_our_bench() {
    require_pymodbus().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bench = Arc::new(ModbusBench::default());
    tokio::spawn(serve_tcp(listener, bench, Faults::default()));

    let seen = run_peer_json("pymodbus_client.py", [port.to_string()]).await;
    let num = |key: &str| {
        seen[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {seen}"))
    };

    assert!((num("chamber_pv") - 23.0).abs() < 0.5, "{seen}");
    assert_eq!(num("chamber_mode"), 10.0);
    assert_eq!(num("chamber_current_sp"), 42.25);
    assert!((200.0..=260.0).contains(&num("eurotherm_pv_x10")), "{seen}");
    assert_eq!(num("eurotherm_working_sp_x10"), 655.0);
    assert_eq!(num("eurotherm_write_working_sp_exception"), 2.0);
    assert_eq!(seen["rack_relays_on"], serde_json::json!([1, 2, 16]));
    assert_eq!(seen["rack_failed"], serde_json::json!([13]));
    let currents: Vec<f64> = seen["rack_currents_ma"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(currents.len(), 16, "{seen}");
    for (i, ma) in currents.iter().enumerate() {
        if [0, 1, 15].contains(&i) {
            assert!((40.0..=50.0).contains(ma), "position {} {ma}", i + 1);
        } else {
            assert_eq!(*ma, 0.0, "position {}", i + 1);
        }
    }
    assert!((229.0..=231.0).contains(&num("rack_supply_v")), "{seen}");
}
