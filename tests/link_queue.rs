//! A link's queue: callers that wait too long behind others get a clear `Busy` error within the
//! queue timeout plus one exchange, the link keeps serving, and the counters add up.

use std::sync::Arc;
use std::time::Duration;

use labgate::config::schema::{LinkProtocol, Transport};
use labgate::link::{self, LinkError, LinkSpec, LinkState};
use labgate::modbus::ops::ModbusOp;
use labgate::modbus::value::Table;
use labgate::sim::fault::Faults;
use labgate::sim::modbus::{ModbusBench, serve_tcp};
use tokio::net::TcpListener;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(20);
const DELAY: Duration = Duration::from_millis(100);
const QUEUE_TIMEOUT: Duration = Duration::from_millis(350);
const TIMEOUT: Duration = Duration::from_secs(1);

async fn slow_sim() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let faults = Faults {
        delay: Some(DELAY),
        ..Faults::default()
    };
    tokio::spawn(serve_tcp(
        listener,
        Arc::new(ModbusBench::default()),
        faults,
    ));
    port
}

fn spec(port: u16) -> LinkSpec {
    LinkSpec {
        name: "slow".into(),
        protocol: LinkProtocol::ModbusTcp,
        transport: Transport::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        timeout: TIMEOUT,
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        inter_frame: Duration::ZERO,
        queue_timeout: QUEUE_TIMEOUT,
    }
}

const READ: ModbusOp = ModbusOp::Read {
    table: Table::Holding,
    address: 1,
    count: 2,
};

#[tokio::test]
async fn callers_queued_past_the_queue_timeout_get_busy_and_the_link_keeps_serving() {
    let h = link::spawn(spec(slow_sim().await), None);
    let mut w = h.watch();
    tokio::time::timeout(BOUND, w.wait_for(|s| s.state == LinkState::Connected))
        .await
        .unwrap()
        .unwrap();

    // Twelve callers at once on a device that takes 100 ms per answer: about four fit in the
    // 350 ms queue timeout, the rest wait past it.
    const CALLERS: usize = 12;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let r = h.modbus(2, READ, None).await;
            (r, started.elapsed())
        }));
    }
    let (mut served, mut busy) = (0u64, 0u64);
    for t in tasks {
        let (r, took) = tokio::time::timeout(BOUND, t).await.unwrap().unwrap();
        // Bounded: the queue timeout, plus the exchange in progress when it ran out, plus slack
        // for a loaded machine.
        assert!(
            took < QUEUE_TIMEOUT + TIMEOUT + Duration::from_secs(2),
            "a caller waited {took:?}"
        );
        match r {
            Ok(_) => served += 1,
            Err(e @ LinkError::Busy { .. }) => {
                let text = e.to_string();
                assert!(text.contains("link slow"), "{text}");
                assert!(text.contains("overloaded"), "{text}");
                assert!(
                    took >= QUEUE_TIMEOUT,
                    "refused before its queue timeout ran out: {took:?}"
                );
                busy += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(served >= 1, "served {served}, busy {busy}");
    assert!(busy >= 1, "no caller was refused: served {served}");
    assert_eq!(served + busy, CALLERS as u64);

    // Refusing a job does not touch the connection, and the next request is served.
    let s = h.status();
    assert_eq!(s.state, LinkState::Connected, "{s:?}");
    assert_eq!(s.reconnects, 0, "{s:?}");
    tokio::time::timeout(BOUND, h.modbus(2, READ, None))
        .await
        .unwrap()
        .unwrap();
    let s = h.status();
    assert_eq!(s.requests_ok, served + 1, "{s:?}");
    assert_eq!(s.requests_failed, busy, "{s:?}");
}
