//! A Modbus link's errors name the request that failed. The link formats the request text only
//! on the error paths (it is a measurable share of a transaction's cost, see benches/io.rs), so
//! these tests pin that every error kind still carries it.

use std::sync::Arc;
use std::time::Duration;

use labgate::config::schema::{LinkConfig, LinkProtocol, Transport};
use labgate::link::{self, LinkError, LinkHandle, LinkSpec, LinkState};
use labgate::modbus::ops::{ModbusOp, ModbusReply};
use labgate::modbus::value::Table;
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, serve_tcp};

const WAIT: Duration = Duration::from_secs(10);

async fn link_to_sim(faults: Faults, timeout: Duration) -> LinkHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(
        listener,
        Arc::new(ModbusBench::default()),
        faults,
    ));
    let spec = LinkSpec::from_config(
        "plc",
        &LinkConfig {
            protocol: LinkProtocol::ModbusTcp,
            transport: Transport::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            timeout: Some(timeout),
            connect_timeout: None,
            backoff_initial: None,
            backoff_max: None,
            inter_frame_delay: None,
        },
    );
    let handle = link::spawn(spec, None);
    let mut rx = handle.watch();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.state == LinkState::Connected))
        .await
        .expect("link connects in time")
        .expect("link task alive");
    handle
}

fn read(address: u16, count: u16) -> ModbusOp {
    ModbusOp::Read {
        table: Table::Holding,
        address,
        count,
    }
}

#[tokio::test]
async fn success_and_exception_through_the_link() {
    let handle = link_to_sim(Faults::default(), Duration::from_secs(2)).await;
    // Eurotherm (unit 2): registers 1 and 2 are mapped.
    let ok = tokio::time::timeout(WAIT, handle.modbus(2, read(1, 2), None))
        .await
        .expect("bounded");
    assert!(
        matches!(&ok, Ok(ModbusReply::Words(w)) if w.len() == 2),
        "{ok:?}"
    );
    // Register 3 is not: the device refuses, the link stays up.
    let err = tokio::time::timeout(WAIT, handle.modbus(2, read(3, 1), None))
        .await
        .expect("bounded")
        .expect_err("unmapped register");
    assert!(
        matches!(&err, LinkError::Exception { code: 2, unit: 2, request, .. } if request == "read holding 3+1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("read holding 3+1"), "{err}");
    assert_eq!(handle.status().state, LinkState::Connected);
}

#[tokio::test]
async fn timeout_names_unit_and_request() {
    let faults = Faults {
        silent: true,
        ..Faults::default()
    };
    let handle = link_to_sim(faults, Duration::from_millis(200)).await;
    let err = tokio::time::timeout(WAIT, handle.modbus(2, read(1, 2), None))
        .await
        .expect("bounded")
        .expect_err("silent device");
    match &err {
        LinkError::Timeout { request, .. } => assert_eq!(request, "unit 2: read holding 1+2"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
