//! Modbus RTU framing carried over TCP (a serial device server / RTU-over-TCP gateway): the link
//! speaks `modbus-rtu` on a `tcp` transport, several unit ids share the one connection.

use std::sync::Arc;
use std::time::Duration;

use labgate::config::schema::{LinkProtocol, Transport};
use labgate::link::{self, LinkSpec, LinkState};
use labgate::modbus::ops::{ModbusOp, ModbusReply};
use labgate::modbus::value::{Decoded, Table, ValueType, WordOrder, decode};
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, f4t, rack, serve_rtu};
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(20);

/// A "device server": every TCP connection is an RTU bus in front of the simulated devices.
async fn rtu_gateway() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let devices = Arc::new(ModbusBench::default());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve_rtu(sock, devices.clone(), Faults::default(), None));
        }
    });
    port
}

fn spec(port: u16) -> LinkSpec {
    LinkSpec {
        name: "rtu_gw".into(),
        protocol: LinkProtocol::ModbusRtu,
        transport: Transport::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        // No baud rate on TCP: the configured extra delay stands in for t3.5.
        inter_frame: Duration::from_millis(2),
        queue_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn rtu_frames_over_tcp_reach_several_units() {
    let port = rtu_gateway().await;
    let h = link::spawn(spec(port), None);
    for _ in 0..3 {
        // Unit 1: the chamber's process value, float32 CDAB.
        let r = tokio::time::timeout(
            BOUND,
            h.modbus(
                1,
                ModbusOp::Read {
                    table: Table::Holding,
                    address: f4t::PV,
                    count: 2,
                },
                None,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let ModbusReply::Words(w) = r else {
            panic!("expected registers, got {r:?}")
        };
        let Decoded::Number(pv) = decode(&w, ValueType::F32, WordOrder::CDAB, None).unwrap() else {
            panic!("not a number")
        };
        assert!((10.0..40.0).contains(&pv), "chamber pv {pv}");

        // Unit 3: the rack's relay coils.
        let r = tokio::time::timeout(
            BOUND,
            h.modbus(
                3,
                ModbusOp::Read {
                    table: Table::Coil,
                    address: 0,
                    count: rack::POSITIONS,
                },
                None,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let ModbusReply::Bits(b) = r else {
            panic!("expected bits, got {r:?}")
        };
        assert_eq!(b.len(), rack::POSITIONS as usize);
    }
    assert_eq!(h.status().state, LinkState::Connected);
    assert_eq!(h.status().requests_ok, 6);
}

#[tokio::test]
async fn exception_over_rtu_keeps_the_link_up() {
    let port = rtu_gateway().await;
    let h = link::spawn(spec(port), None);
    // Unit 2 (Eurotherm): the working setpoint is read-only.
    let err = tokio::time::timeout(
        BOUND,
        h.modbus(
            2,
            ModbusOp::WriteRegister {
                address: labgate::sim::modbus::eurotherm::WORKING_SP,
                value: 100,
            },
            None,
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is_device_refusal(), "{err}");
    assert!(err.to_string().contains("illegal data address"), "{err}");
    assert_eq!(h.status().state, LinkState::Connected);
    assert_eq!(h.status().reconnects, 0);
}
