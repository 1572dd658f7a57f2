//! The link actor on SCPI over real loopback TCP, against small fake instruments written here
//! (so each failure mode is exact): timeouts, drops, garbage, reconnect, serialization.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use labgate::config::schema::{LinkProtocol, Transport};
use labgate::link::{self, LinkError, LinkSpec, LinkState, ScpiSetup, ScpiStep};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(20);

fn spec(port: u16) -> LinkSpec {
    LinkSpec {
        name: "t".into(),
        protocol: LinkProtocol::Scpi,
        transport: Transport::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        inter_frame: Duration::ZERO,
        queue_timeout: Duration::from_secs(10),
    }
}

fn q(text: &str) -> ScpiStep {
    ScpiStep::Query {
        text: text.into(),
        timeout: Duration::from_millis(300),
    }
}

/// A fake instrument: answers `ECHO? x` with `x`, `SLOW?` never (the first time per connection
/// only when `slow_once`), counts connections.
async fn fake(behaviour: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut served = 0;
                while let Ok(Some(line)) = lines.next_line().await {
                    served += 1;
                    let reply = match (behaviour, line.as_str()) {
                        ("drop_after_2", _) if served > 2 => return,
                        ("slow_first_conn", "SLOW?") if n == 0 => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            "late\n".to_string()
                        }
                        ("garbage", _) => "\u{1}\u{2}garbage-without-end".repeat(4000),
                        (_, "*IDN?") => "ACME,MODEL42,1,1.0\n".into(),
                        (_, l) if l.starts_with("ECHO? ") => format!("{}\n", &l[6..]),
                        (_, "SLOW?") => "fast\n".into(),
                        _ => continue,
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, conns)
}

#[tokio::test]
async fn query_returns_replies_in_order() {
    let (port, _) = fake("normal").await;
    let h = link::spawn(spec(port), None);
    let r = tokio::time::timeout(
        BOUND,
        h.scpi(vec![
            q("ECHO? a"),
            ScpiStep::Write("NOP".into()),
            q("ECHO? b"),
        ]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r, vec![Some("a".into()), None, Some("b".into())]);
    assert_eq!(h.status().state, LinkState::Connected);
    assert_eq!(h.status().requests_ok, 1);
}

#[tokio::test]
async fn timeout_is_a_clear_error_and_the_next_request_succeeds() {
    let (port, conns) = fake("slow_first_conn").await;
    let h = link::spawn(spec(port), None);
    let err = tokio::time::timeout(BOUND, h.scpi(vec![q("SLOW?")]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("SLOW?") && msg.contains("300ms"), "{msg}");
    // The late reply must not be taken as the answer to the next query: the link reconnected.
    let r = tokio::time::timeout(BOUND, h.scpi(vec![q("SLOW?")]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, vec![Some("fast".into())]);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(h.status().reconnects, 1);
}

#[tokio::test]
async fn dropped_connection_reconnects() {
    let (port, conns) = fake("drop_after_2").await;
    let h = link::spawn(spec(port), None);
    let mut ok = 0;
    let mut failed = 0;
    for i in 0..8 {
        match tokio::time::timeout(BOUND, h.scpi(vec![q(&format!("ECHO? {i}"))]))
            .await
            .unwrap()
        {
            Ok(r) => {
                assert_eq!(r, vec![Some(i.to_string())]);
                ok += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e, LinkError::Io { .. } | LinkError::Down { .. }),
                    "{e}"
                );
                failed += 1;
                // Let the backoff pass.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    }
    assert!(ok >= 5, "ok {ok} failed {failed}");
    assert!(failed >= 1);
    assert!(conns.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn garbage_reply_is_an_error_not_a_panic() {
    let (port, _) = fake("garbage").await;
    let mut s = spec(port);
    s.timeout = Duration::from_millis(500);
    let setup = ScpiSetup {
        framing: labgate::scpi::session::Framing {
            max_reply: 16 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let h = link::spawn(s, Some(setup));
    let err = tokio::time::timeout(BOUND, h.scpi(vec![q("ECHO? x")]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, LinkError::Mismatch { .. } | LinkError::Timeout { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn nobody_listening_gives_down_error_with_cause() {
    // Bind then drop to get a port with nobody behind it.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let h = link::spawn(spec(port), None);
    let err = tokio::time::timeout(BOUND, h.scpi(vec![q("ECHO? x")]))
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LinkError::Down { .. }), "{msg}");
    assert!(
        msg.contains("refused") || msg.contains("cannot open"),
        "{msg}"
    );
    assert_ne!(h.status().state, LinkState::Connected);
    assert!(h.status().last_error.is_some());
}

#[tokio::test]
async fn identity_mismatch_marks_link_failed() {
    let (port, _) = fake("normal").await;
    let setup = ScpiSetup {
        identity: Some(("*IDN?".into(), vec!["YOKOGAWA".into()])),
        ..Default::default()
    };
    let h = link::spawn(spec(port), Some(setup));
    let err = tokio::time::timeout(BOUND, h.scpi(vec![q("ECHO? x")]))
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("wrong instrument"), "{msg}");
    assert!(msg.contains("YOKOGAWA") && msg.contains("MODEL42"), "{msg}");
    assert_eq!(h.status().state, LinkState::Failed);
}

#[tokio::test]
async fn concurrent_callers_never_interleave() {
    let (port, _) = fake("normal").await;
    let h = link::spawn(spec(port), None);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let a = format!("{t}-{i}-a");
                let b = format!("{t}-{i}-b");
                let r = h
                    .scpi(vec![q(&format!("ECHO? {a}")), q(&format!("ECHO? {b}"))])
                    .await
                    .unwrap();
                assert_eq!(r, vec![Some(a), Some(b)]);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(BOUND, t).await.unwrap().unwrap();
    }
    assert_eq!(h.status().requests_ok, 160);
}
