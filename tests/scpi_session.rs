//! ScpiConn against fake instruments over an in-memory duplex, loopback TCP and a pseudo-terminal.
//!
//! Every wait is bounded; the bounds are generous because only hangs should fail these tests.

use std::time::Duration;

use labgate::reading::Value;
use labgate::scpi::parse::{list_value, parse_error_entry, parse_list};
use labgate::scpi::session::{Framing, ScpiConn, ScpiIoError};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn framing(term: &str) -> Framing {
    Framing::from_terminators(term, term)
}

/// A 401-point spectrum as an instrument would send it.
fn spectrum() -> String {
    (0..401)
        .map(|i| format!("{:.5E}", 1.0 + i as f64 * 0.001))
        .collect::<Vec<_>>()
        .join(",")
}

/// A tiny SCPI instrument: answers a few queries, one line in, one line out, `term` both ways.
async fn fake_instrument<S>(stream: S, term: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read up to the terminator's last byte, then check the whole terminator.
        match rd
            .read_until(*term.as_bytes().last().unwrap(), &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(term.as_bytes()) {
            continue;
        }
        let cmd = String::from_utf8_lossy(&line[..line.len() - term.len()]).to_string();
        let reply = match cmd.as_str() {
            "*IDN?" => "FAKE,PA1000,0001,1.0".to_string(),
            ":NUM:NORM:VAL?" => "2.3001E+02,1.234E-01,NAN,9.9E+37".to_string(),
            "SPEC?" => spectrum(),
            "SYST:ERR?" => "-113,\"Undefined header\"".to_string(),
            // Commands without a question mark get no reply, as on a real instrument.
            c if !c.ends_with('?') => continue,
            _ => "-1".to_string(),
        };
        let mut out = reply.into_bytes();
        out.extend_from_slice(term.as_bytes());
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.unwrap();
    let (server, _) = server.unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

async fn exercise_instrument<S>(conn: &mut ScpiConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idn = timeout(WAIT, conn.query("*IDN?")).await.unwrap().unwrap();
    assert_eq!(idn, "FAKE,PA1000,0001,1.0");
    // A command with no reply must not disturb the next query.
    timeout(WAIT, conn.write(":NUM:FORM ASC"))
        .await
        .unwrap()
        .unwrap();
    let vals = timeout(WAIT, conn.query(":NUM:NORM:VAL?"))
        .await
        .unwrap()
        .unwrap();
    let vals = parse_list(&vals, ",", &[]).unwrap();
    assert_eq!(vals[0], Value::Number(230.01));
    assert!(vals[2].is_invalid() && vals[3].is_invalid());
    let spec = timeout(WAIT, conn.query("SPEC?")).await.unwrap().unwrap();
    match list_value(parse_list(&spec, ",", &[]).unwrap()) {
        Value::List(l) => {
            assert_eq!(l.len(), 401);
            assert!((l[400] - 1.4).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    let err = timeout(WAIT, conn.query("SYST:ERR?"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_error_entry(&err).unwrap().code, -113);
    assert_eq!(conn.buffered_len(), 0);
}

#[tokio::test]
async fn fake_instrument_over_duplex_lf_and_crlf() {
    for term in ["\n", "\r\n"] {
        let (a, b) = tokio::io::duplex(512);
        tokio::spawn(fake_instrument(b, term));
        let mut conn = ScpiConn::new(a, framing(term));
        exercise_instrument(&mut conn).await;
    }
}

#[tokio::test]
async fn fake_instrument_over_tcp_lf_and_crlf() {
    for term in ["\n", "\r\n"] {
        let (client, server) = tcp_pair().await;
        tokio::spawn(fake_instrument(server, term));
        let mut conn = ScpiConn::new(client, framing(term));
        exercise_instrument(&mut conn).await;
    }
}

#[tokio::test]
async fn lf_framing_strips_trailing_cr() {
    // An instrument set to CRLF while the driver expects LF still yields clean replies.
    let (client, mut server) = tcp_pair().await;
    server.write_all(b"1.5\r\n").await.unwrap();
    let mut conn = ScpiConn::new(client, framing("\n"));
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "1.5"
    );
}

#[tokio::test]
async fn reply_split_over_many_writes_tcp() {
    let (client, mut server) = tcp_pair().await;
    let reply = format!("{}\r\n", spectrum());
    let writer = tokio::spawn(async move {
        // Uneven pieces, the terminator itself split between two of them.
        for piece in reply.as_bytes().chunks(7) {
            server.write_all(piece).await.unwrap();
            server.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        server
    });
    let mut conn = ScpiConn::new(client, framing("\r\n"));
    let got = timeout(WAIT, conn.read_reply()).await.unwrap().unwrap();
    assert_eq!(got, spectrum());
    assert_eq!(parse_list(&got, ",", &[]).unwrap().len(), 401);
    drop(timeout(WAIT, writer).await.unwrap().unwrap());
}

#[tokio::test]
async fn byte_at_a_time_duplex() {
    let (a, mut b) = tokio::io::duplex(1);
    tokio::spawn(async move {
        b.write_all(b"+1.00000E+00\r\n+2\r\n").await.unwrap();
        tokio::time::sleep(WAIT).await;
    });
    let mut conn = ScpiConn::new(a, framing("\r\n"));
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "+1.00000E+00"
    );
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "+2"
    );
}

#[tokio::test]
async fn two_replies_in_one_write_are_both_kept() {
    let (client, mut server) = tcp_pair().await;
    server.write_all(b"first\nsecond\nthi").await.unwrap();
    let mut conn = ScpiConn::new(client, framing("\n"));
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "first"
    );
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "second"
    );
    server.write_all(b"rd\n").await.unwrap();
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "third"
    );
}

#[tokio::test]
async fn discard_buffered_drops_stale_bytes() {
    let (a, mut b) = tokio::io::duplex(256);
    b.write_all(b"stale\nfresh\n").await.unwrap();
    let mut conn = ScpiConn::new(a, framing("\n"));
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "stale"
    );
    assert!(conn.buffered_len() > 0);
    conn.discard_buffered();
    assert_eq!(conn.buffered_len(), 0);
    b.write_all(b"next\n").await.unwrap();
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "next"
    );
}

#[tokio::test]
async fn babbling_instrument_hits_reply_too_long_with_bounded_memory() {
    let (client, mut server) = tcp_pair().await;
    // Never sends a terminator and never stops: unbounded buffering would hang this test.
    let babbler = tokio::spawn(async move {
        let junk = vec![b'7'; 16 * 1024];
        while server.write_all(&junk).await.is_ok() {}
    });
    let max = 64 * 1024;
    let mut conn = ScpiConn::new(
        client,
        Framing {
            max_reply: max,
            ..framing("\n")
        },
    );
    let r = timeout(WAIT, conn.read_reply()).await.unwrap();
    assert!(
        matches!(r, Err(ScpiIoError::ReplyTooLong { max: m }) if m == max),
        "{r:?}"
    );
    assert!(
        conn.buffer_capacity() <= 2 * max + 64 * 1024,
        "buffer grew to {}",
        conn.buffer_capacity()
    );
    drop(conn);
    timeout(WAIT, babbler).await.unwrap().unwrap();
}

#[tokio::test]
async fn default_bound_accepts_a_large_reply() {
    // 1 MB in one reply is within the 4 MiB default.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let big = "1,".repeat(500_000) + "1\n";
    tokio::spawn(async move {
        b.write_all(big.as_bytes()).await.unwrap();
        tokio::time::sleep(WAIT).await;
    });
    let mut conn = ScpiConn::new(a, Framing::default());
    let got = timeout(WAIT, conn.read_reply()).await.unwrap().unwrap();
    assert_eq!(got.len(), 1_000_001);
}

#[tokio::test]
async fn eof_is_closed() {
    let (client, mut server) = tcp_pair().await;
    server
        .write_all(b"partial reply without terminator")
        .await
        .unwrap();
    drop(server);
    let mut conn = ScpiConn::new(client, framing("\n"));
    let r = timeout(WAIT, conn.read_reply()).await.unwrap();
    assert!(matches!(r, Err(ScpiIoError::Closed)), "{r:?}");

    let (a, b) = tokio::io::duplex(64);
    drop(b);
    let mut conn = ScpiConn::new(a, framing("\n"));
    let r = timeout(WAIT, conn.read_reply()).await.unwrap();
    assert!(matches!(r, Err(ScpiIoError::Closed)), "{r:?}");
}

#[tokio::test]
async fn non_utf8_reply_is_an_error_and_the_stream_stays_in_step() {
    let (client, mut server) = tcp_pair().await;
    server.write_all(b"12\xff\xfe34\n5.0\n").await.unwrap();
    let mut conn = ScpiConn::new(client, framing("\n"));
    match timeout(WAIT, conn.read_reply()).await.unwrap() {
        Err(ScpiIoError::NotUtf8 { preview }) => {
            assert!(
                preview.starts_with("12") && preview.ends_with("34"),
                "{preview:?}"
            );
            let msg = ScpiIoError::NotUtf8 { preview }.to_string();
            assert!(msg.starts_with("reply is not valid utf-8"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        timeout(WAIT, conn.read_reply()).await.unwrap().unwrap(),
        "5.0"
    );
}

#[tokio::test]
async fn commands_reach_the_wire_with_terminator() {
    let (client, server) = tcp_pair().await;
    let mut conn = ScpiConn::new(client, framing("\r\n"));
    timeout(WAIT, conn.write(":SOUR:VOLT:AC 230;:OUTP ON"))
        .await
        .unwrap()
        .unwrap();
    let mut rd = BufReader::new(server);
    let mut line = String::new();
    timeout(WAIT, rd.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, ":SOUR:VOLT:AC 230;:OUTP ON\r\n");
    // An injected second command is refused and nothing is sent.
    let r = conn.write("VOLT 1\n*RST").await;
    assert!(
        matches!(r, Err(ScpiIoError::CommandHasTerminator { .. })),
        "{r:?}"
    );
    drop(conn);
    let mut rest = String::new();
    timeout(WAIT, rd.read_line(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, "");
}

#[tokio::test]
async fn over_a_pseudo_terminal() {
    let (host, device) = match tokio_serial::SerialStream::pair() {
        Ok(p) => p,
        Err(e) => panic!("cannot open a pseudo-terminal pair: {e}"),
    };
    tokio::spawn(fake_instrument(device, "\n"));
    let mut conn = ScpiConn::new(host, framing("\n"));
    let idn = timeout(WAIT, conn.query("*IDN?")).await.unwrap().unwrap();
    assert_eq!(idn, "FAKE,PA1000,0001,1.0");
    let spec = timeout(WAIT, conn.query("SPEC?")).await.unwrap().unwrap();
    assert_eq!(parse_list(&spec, ",", &[]).unwrap().len(), 401);
}
