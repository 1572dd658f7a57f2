//! The simulated Modbus bench through our own client path (`ops::execute` on tokio-modbus):
//! over loopback TCP and as an RTU bus on a real pseudo-terminal, every table, writes,
//! exceptions, several unit ids on one bus, and every fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use labgate::modbus::ops::{ModbusError, ModbusOp, ModbusReply, execute};
use labgate::modbus::value::{Decoded, Table, ValueType, WordOrder, decode, encode};
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, RtuPty, serve_rtu_pty, serve_tcp};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::Context;
use tokio_serial::SerialPortBuilderExt;

/// Generous bound for anything that should succeed, even on a loaded machine.
const OK_WAIT: Duration = Duration::from_secs(5);
/// How long we wait before concluding that an answer is not coming.
const NO_ANSWER: Duration = Duration::from_millis(700);

async fn start_tcp(faults: Faults) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(
        listener,
        Arc::new(ModbusBench::default()),
        faults,
    ));
    addr
}

async fn tcp_client(addr: SocketAddr) -> Context {
    timeout(OK_WAIT, tokio_modbus::client::tcp::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

fn rtu_client(pty: &RtuPty) -> Context {
    let port = tokio_serial::new(pty.path(), 19200)
        .open_native_async()
        .unwrap_or_else(|e| panic!("open {}: {e}", pty.path()));
    tokio_modbus::client::rtu::attach(port)
}

async fn run(ctx: &mut Context, unit: u8, op: ModbusOp) -> Result<ModbusReply, ModbusError> {
    timeout(OK_WAIT, execute(ctx, unit, &op))
        .await
        .unwrap_or_else(|_| panic!("{op} on unit {unit} timed out"))
}

fn read(table: Table, address: u16, count: u16) -> ModbusOp {
    ModbusOp::Read {
        table,
        address,
        count,
    }
}

async fn words(ctx: &mut Context, unit: u8, table: Table, address: u16, count: u16) -> Vec<u16> {
    match run(ctx, unit, read(table, address, count)).await {
        Ok(ModbusReply::Words(w)) => w,
        other => panic!("read {table} {address}+{count} on unit {unit}: {other:?}"),
    }
}

async fn bits(ctx: &mut Context, unit: u8, table: Table, address: u16, count: u16) -> Vec<bool> {
    match run(ctx, unit, read(table, address, count)).await {
        Ok(ModbusReply::Bits(b)) => b,
        other => panic!("read {table} {address}+{count} on unit {unit}: {other:?}"),
    }
}

fn number(regs: &[u16], ty: ValueType, order: WordOrder) -> f64 {
    match decode(regs, ty, order, None) {
        Ok(Decoded::Number(v)) => v,
        other => panic!("decode {regs:?} as {ty}: {other:?}"),
    }
}

async fn written(ctx: &mut Context, unit: u8, op: ModbusOp) {
    let what = op.to_string();
    assert_eq!(
        run(ctx, unit, op).await.map_err(|e| e.to_string()),
        Ok(ModbusReply::Written),
        "{what} on unit {unit}"
    );
}

/// The whole bench, one client: what every transport must get right.
async fn exercise_bench(ctx: &mut Context) {
    // Unit 1, chamber: f32 CDAB process value near ambient, then a new setpoint and mode.
    let pv = number(
        &words(ctx, 1, Table::Holding, 2820, 2).await,
        ValueType::F32,
        WordOrder::CDAB,
    );
    assert!((pv - 23.0).abs() < 0.5, "chamber pv {pv}");
    let sp = encode(
        &Decoded::Number(85.5),
        ValueType::F32,
        WordOrder::CDAB,
        None,
    )
    .unwrap();
    written(ctx, 1, ModbusOp::write(Table::Holding, 2782, &sp).unwrap()).await;
    let current = number(
        &words(ctx, 1, Table::Holding, 2810, 2).await,
        ValueType::F32,
        WordOrder::CDAB,
    );
    assert_eq!(current, 85.5);
    written(
        ctx,
        1,
        ModbusOp::WriteRegister {
            address: 2730,
            value: 62,
        },
    )
    .await;
    assert_eq!(words(ctx, 1, Table::Holding, 2730, 1).await, [62]);
    let refused = run(
        ctx,
        1,
        ModbusOp::WriteRegister {
            address: 2730,
            value: 7,
        },
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ModbusError::Exception {
                code: 3,
                name: "illegal data value"
            })
        ),
        "{refused:?}"
    );

    // Unit 2, Eurotherm: the comms setpoint moves the read-only working setpoint.
    written(
        ctx,
        2,
        ModbusOp::WriteRegister {
            address: 26,
            value: 1234,
        },
    )
    .await;
    assert_eq!(words(ctx, 2, Table::Holding, 5, 1).await, [1234]);
    let err = run(
        ctx,
        2,
        ModbusOp::WriteRegister {
            address: 5,
            value: 1,
        },
    )
    .await
    .expect_err("working setpoint must be read-only");
    assert!(!err.is_link_fault());
    assert!(
        err.to_string().contains("illegal data address"),
        "message {err}"
    );
    assert!(matches!(err, ModbusError::Exception { code: 2, .. }));
    // The link survives an exception.
    written(
        ctx,
        2,
        ModbusOp::MaskWrite {
            address: 23,
            and_mask: 0xFFFC,
            or_mask: 0x0002,
        },
    )
    .await;
    assert_eq!(words(ctx, 2, Table::Holding, 23, 1).await, [2]);
    let pv = number(
        &words(ctx, 2, Table::Holding, 1, 1).await,
        ValueType::I16,
        WordOrder::ABCD,
    );
    assert!((200.0..=300.0).contains(&pv), "eurotherm pv x10 {pv}");

    // Unit 3, relay rack: all four tables.
    written(
        ctx,
        3,
        ModbusOp::WriteCoil {
            address: 0,
            value: true,
        },
    )
    .await;
    written(
        ctx,
        3,
        ModbusOp::WriteCoils {
            address: 10,
            values: vec![true, false, true, true],
        },
    )
    .await;
    let relays = bits(ctx, 3, Table::Coil, 0, 16).await;
    let on: Vec<usize> = (0..16).filter(|&i| relays[i]).collect();
    assert_eq!(on, [0, 10, 12, 13]);
    let failed = bits(ctx, 3, Table::DiscreteInput, 0, 16).await;
    assert_eq!((0..16).filter(|&i| failed[i]).collect::<Vec<_>>(), [12]);
    let currents = words(ctx, 3, Table::Input, 0, 16).await;
    for (i, &raw) in currents.iter().enumerate() {
        let ma = raw as i16;
        match i {
            0 | 10 | 13 => assert!((40..=50).contains(&ma), "position {} draws {ma}", i + 1),
            // Position 13 is switched on but its lamp has failed.
            _ => assert_eq!(ma, 0, "position {}", i + 1),
        }
    }
    let volts = number(
        &words(ctx, 3, Table::Input, 100, 2).await,
        ValueType::F32,
        WordOrder::ABCD,
    );
    assert!((229.0..=231.0).contains(&volts), "supply {volts}");
    let err = run(ctx, 3, read(Table::Holding, 0, 1)).await.unwrap_err();
    assert!(
        matches!(err, ModbusError::Exception { code: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn tcp_bench_all_tables_writes_and_exceptions() {
    let addr = start_tcp(Faults::default()).await;
    let mut ctx = tcp_client(addr).await;
    exercise_bench(&mut ctx).await;

    // A unit id nobody has: the gateway says so.
    let err = run(&mut ctx, 42, read(Table::Holding, 0, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModbusError::Exception {
                code: 0x0B,
                name: "gateway target device failed to respond"
            }
        ),
        "{err:?}"
    );
    // Refused before it reaches the wire.
    let err = run(&mut ctx, 1, read(Table::Holding, 0, 126))
        .await
        .unwrap_err();
    assert!(matches!(err, ModbusError::BadRequest(_)), "{err:?}");
}

#[tokio::test]
async fn rtu_bus_on_a_pseudo_terminal_serves_several_units() {
    let pty = serve_rtu_pty(Arc::new(ModbusBench::default()), Faults::default(), None).unwrap();
    assert!(pty.path().starts_with("/dev/"), "path {}", pty.path());
    let mut ctx = rtu_client(&pty);
    exercise_bench(&mut ctx).await;

    // The port can be closed and opened again, as a link does when it reconnects.
    drop(ctx);
    let mut ctx = rtu_client(&pty);
    assert_eq!(words(&mut ctx, 2, Table::Holding, 26, 1).await, [1234]);

    // Nobody answers for an unknown unit on a serial bus.
    let silent = timeout(
        NO_ANSWER,
        execute(&mut ctx, 42, &read(Table::Holding, 1, 1)),
    )
    .await;
    assert!(silent.is_err(), "unit 42 answered: {silent:?}");

    // A broadcast (unit 0) is acted on by every device and answered by none (tokio-modbus
    // still waits for a reply, so the caller must not wait long). Each timeout leaves the
    // context unusable (a late reply could arrive), so reopen the port as a link would; the
    // old handle must be closed first: the port is opened exclusively.
    drop(ctx);
    let mut ctx = rtu_client(&pty);
    let op = ModbusOp::WriteCoil {
        address: 5,
        value: true,
    };
    let r = timeout(NO_ANSWER, execute(&mut ctx, 0, &op)).await;
    assert!(r.is_err(), "broadcast answered: {r:?}");
    drop(ctx);
    let mut ctx = rtu_client(&pty);
    assert!(bits(&mut ctx, 3, Table::Coil, 5, 1).await[0]);
}

#[tokio::test]
async fn tcp_faults() {
    // delay: slower, still correct.
    let addr = start_tcp(Faults {
        delay: Some(Duration::from_millis(300)),
        ..Faults::default()
    })
    .await;
    let mut ctx = tcp_client(addr).await;
    let started = Instant::now();
    assert_eq!(words(&mut ctx, 2, Table::Holding, 2, 1).await, [230]);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // drop_after: two answers, then the connection is gone.
    let addr = start_tcp(Faults {
        drop_after: Some(2),
        ..Faults::default()
    })
    .await;
    let mut ctx = tcp_client(addr).await;
    for _ in 0..2 {
        assert_eq!(words(&mut ctx, 2, Table::Holding, 2, 1).await, [230]);
    }
    let err = run(&mut ctx, 2, read(Table::Holding, 2, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, ModbusError::Transport(_)), "{err:?}");
    assert!(err.is_link_fault());
    // A new connection is served again.
    let mut ctx = tcp_client(addr).await;
    assert_eq!(words(&mut ctx, 2, Table::Holding, 2, 1).await, [230]);

    // silent: the request is taken and never answered.
    let addr = start_tcp(Faults {
        silent: true,
        ..Faults::default()
    })
    .await;
    let mut ctx = tcp_client(addr).await;
    let r = timeout(
        NO_ANSWER,
        execute(&mut ctx, 1, &read(Table::Holding, 2820, 2)),
    )
    .await;
    assert!(r.is_err(), "silent server answered: {r:?}");

    // garbage: a reply for another transaction.
    let addr = start_tcp(Faults {
        garbage: true,
        ..Faults::default()
    })
    .await;
    let mut ctx = tcp_client(addr).await;
    let err = run(&mut ctx, 1, read(Table::Holding, 2820, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, ModbusError::Mismatch(_)), "{err:?}");
    assert!(err.is_link_fault());
}

#[tokio::test]
async fn rtu_faults() {
    let bench = || Arc::new(ModbusBench::default());

    let pty = serve_rtu_pty(
        bench(),
        Faults {
            delay: Some(Duration::from_millis(300)),
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let mut ctx = rtu_client(&pty);
    let started = Instant::now();
    assert_eq!(words(&mut ctx, 2, Table::Holding, 2, 1).await, [230]);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let pty = serve_rtu_pty(
        bench(),
        Faults {
            drop_after: Some(1),
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let mut ctx = rtu_client(&pty);
    assert_eq!(words(&mut ctx, 2, Table::Holding, 2, 1).await, [230]);
    let r = timeout(NO_ANSWER, execute(&mut ctx, 2, &read(Table::Holding, 2, 1))).await;
    assert!(r.is_err(), "answered after drop_after: {r:?}");

    let pty = serve_rtu_pty(
        bench(),
        Faults {
            silent: true,
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let mut ctx = rtu_client(&pty);
    let r = timeout(
        NO_ANSWER,
        execute(&mut ctx, 1, &read(Table::Holding, 2820, 2)),
    )
    .await;
    assert!(r.is_err(), "silent bus answered: {r:?}");

    // garbage: a frame with a broken CRC is never taken for a reply.
    let pty = serve_rtu_pty(
        bench(),
        Faults {
            garbage: true,
            ..Faults::default()
        },
        None,
    )
    .unwrap();
    let mut ctx = rtu_client(&pty);
    let r = timeout(
        NO_ANSWER,
        execute(&mut ctx, 1, &read(Table::Holding, 2820, 2)),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "garbage accepted: {r:?}");
}

#[tokio::test]
async fn rtu_replies_are_paced_to_the_baud_rate() {
    let pty = serve_rtu_pty(
        Arc::new(ModbusBench::default()),
        Faults::default(),
        Some(9600),
    )
    .unwrap();
    let mut ctx = rtu_client(&pty);
    let started = Instant::now();
    for _ in 0..5 {
        words(&mut ctx, 3, Table::Input, 0, 10).await;
    }
    // FC04 of 10 registers: 8 + 25 bytes of 11 bits at 9600 baud (37.8 ms) plus the device's
    // t3.5 before it answers (4 ms; the silence after the reply is the master's, and this bare
    // client keeps none): about 41.8 ms a transaction, so five take at least 209 ms. Only the
    // lower bound is checked: a loaded machine may be slower, never faster.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(205),
        "five paced reads took {elapsed:?}"
    );
}

/// The dynamics run on tokio's clock, so a paused clock drives them: half an hour of chamber
/// time in no time, over an in-memory RTU stream.
#[tokio::test(start_paused = true)]
async fn chamber_dynamics_follow_a_paused_clock() {
    use labgate::sim::modbus::{Chamber, serve_rtu};

    let bench = ModbusBench::empty().with_device(1, Chamber::new().with_noise(0.0));
    let (client, server) = tokio::io::duplex(1024);
    tokio::spawn(serve_rtu(server, Arc::new(bench), Faults::default(), None));
    let mut ctx = tokio_modbus::client::rtu::attach(client);
    let pv = |regs: Vec<u16>| number(&regs, ValueType::F32, WordOrder::CDAB);

    assert_eq!(pv(words(&mut ctx, 1, Table::Holding, 2820, 2).await), 23.0);
    let sp = encode(
        &Decoded::Number(100.0),
        ValueType::F32,
        WordOrder::CDAB,
        None,
    )
    .unwrap();
    written(
        &mut ctx,
        1,
        ModbusOp::write(Table::Holding, 2782, &sp).unwrap(),
    )
    .await;

    tokio::time::sleep(Duration::from_secs(30)).await;
    // One time constant: 63.2 % of the way from 23 to 100 degC.
    let after_tau = pv(words(&mut ctx, 1, Table::Holding, 2820, 2).await);
    let expected = 100.0 - 77.0 * (-1.0f64).exp();
    assert!(
        (after_tau - expected).abs() < 1e-3,
        "pv {after_tau}, expected {expected}"
    );

    // Off: back towards ambient.
    written(
        &mut ctx,
        1,
        ModbusOp::WriteRegister {
            address: 2730,
            value: 62,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1800)).await;
    let cooled = pv(words(&mut ctx, 1, Table::Holding, 2820, 2).await);
    assert!((cooled - 23.0).abs() < 0.01, "pv {cooled}");
}
