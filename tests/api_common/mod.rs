//! Helpers for the API and serve tests: a demo config on an ephemeral simulator bench, the API
//! served on an ephemeral port, and a minimal HTTP/1.1 client over real loopback TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use labgate::api::{self, AppState};
use labgate::config::{self, Bench};
use labgate::daemon::Live;
use labgate::sim::bench::{SimBench, SimBenchConfig};
use labgate::store::{self, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(15);

/// The demo config with its ports moved to the ephemeral bench, data under `dir`, `extra`
/// appended (e.g. an `[api]` section), drivers from the repository.
pub fn demo_config_text(sim: &SimBench, dir: &Path, extra: &str) -> String {
    let mut text = config::DEMO_CONFIG
        .replace(
            "port = 15025",
            &format!("port = {}", sim.power_analyzer.port()),
        )
        .replace("port = 15026", &format!("port = {}", sim.ac_source.port()))
        .replace("port = 15027", &format!("port = {}", sim.sphere.port()))
        .replace("port = 15028", &format!("port = {}", sim.logger.port()))
        .replace("port = 15502", &format!("port = {}", sim.modbus.port()));
    let drivers = concat!(env!("CARGO_MANIFEST_DIR"), "/drivers");
    text = format!(
        "[paths]\ndrivers = [{drivers:?}]\ndata = {:?}\n\n{text}\n{extra}\n",
        dir.join("data").display().to_string()
    );
    text
}

pub fn load(path: &Path) -> Bench {
    config::load(path).unwrap_or_else(|d| panic!("test config refused:\n{d}"))
}

pub fn load_text(dir: &Path, text: &str) -> Bench {
    let path = dir.join("labgate.toml");
    std::fs::write(&path, text).unwrap();
    load(&path)
}

pub struct Served {
    pub addr: SocketAddr,
    pub sim: SimBench,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A sim bench, the demo config on it (plus `extra`), and the API on 127.0.0.1:0.
pub async fn serve(extra: &str) -> Served {
    let sim = labgate::sim::bench::start(SimBenchConfig::ephemeral())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bench = load_text(dir.path(), &demo_config_text(&sim, dir.path(), extra));
    let store = Store::open(store::path_in(&bench.paths.data)).unwrap();
    let state = AppState::new(
        Live::start(bench),
        Some(store),
        labgate::metrics::install(),
        true,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        addr,
        sim,
        state,
        dir,
        server,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Assert an RFC 9457 problem with this status; returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        let j = self.json();
        assert_eq!(j["status"], status);
        assert!(
            j["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:labgate:problem:")
        );
        j["detail"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (Connection: close), bounded by [`WAIT`].
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    tokio::time::timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        // The server may answer (413) before reading a large body and close; ignore that.
        let _ = s.write_all(body).await;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        parse_response(&raw)
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no response within {WAIT:?}"))
}

fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    http(addr, "GET", path, &[], b"").await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// Poll `check` every 50 ms until it returns Some, at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
