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

// ---------------------------------------------------------------------------------------------
// Runs: a recipes directory with short recipes, and a Server-Sent Events client.

/// The LM-79 recipe with defaults that make a run take a second or two on a quick plant.
pub fn fast_lm79() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/recipes/lm79-led-lamp.toml"
    ))
    .unwrap();
    let set = |t: String, param: &str, from: &str, to: &str| {
        let head = format!("[parameters.{param}]");
        let at = t.find(&head).unwrap_or_else(|| panic!("no {head}"));
        let (a, b) = t.split_at(at);
        let b = b.replacen(from, to, 1);
        format!("{a}{b}")
    };
    let t = set(
        text,
        "stabilize_interval",
        "default = 60.0",
        "default = 0.1",
    );
    let t = set(t, "stabilize_max", "default = 60.0", "default = 0.5");
    set(t, "sample_interval", "default = 1.0", "default = 0.05")
}

/// Source on, one power reading, then a long soak: a run that stays running until aborted.
pub const SLOW_RECIPE: &str = r#"
[recipe]
name = "slow"
version = "1"
roles = ["source", "analyzer"]

[[steps]]
kind = "act"
name = "lamp on"
role = "source"
action = "output"
args = { on = true }

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power"]

[[steps]]
kind = "wait"
name = "soak"
duration = "120s"

[[cleanup]]
kind = "act"
name = "lamp off"
role = "source"
action = "output"
args = { on = false }
"#;

/// Asks the operator, then measures.
pub const CONFIRM_RECIPE: &str = r#"
[recipe]
name = "ask"
version = "1"
roles = ["analyzer"]

[[steps]]
kind = "confirm"
name = "insert lamp"
prompt = "insert lamp 2"
timeout = "60s"

[[steps]]
kind = "measure"
name = "power"
role = "analyzer"
quantities = ["power"]
"#;

/// Write the test recipes into `dir/recipes` and return the directory.
pub fn write_recipes(dir: &Path) -> std::path::PathBuf {
    let r = dir.join("recipes");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("lm79-led-lamp.toml"), fast_lm79()).unwrap();
    std::fs::write(r.join("slow.toml"), SLOW_RECIPE).unwrap();
    std::fs::write(r.join("ask.toml"), CONFIRM_RECIPE).unwrap();
    r
}

/// The demo config on `sim` with the test recipes; data and recipes under `dir`.
pub fn runs_config_text(sim: &SimBench, dir: &Path, extra: &str) -> String {
    let recipes = write_recipes(dir);
    demo_config_text(sim, dir, extra).replacen(
        "[paths]\n",
        &format!("[paths]\nrecipes = {:?}\n", recipes.display().to_string()),
        1,
    )
}

/// A sim bench whose lamp warms up in 0.3 s.
pub async fn quick_sim() -> SimBench {
    labgate::sim::bench::start(SimBenchConfig {
        plant: labgate::sim::plant::PlantConfig {
            tau: Duration::from_millis(300),
            ..Default::default()
        },
        ..SimBenchConfig::ephemeral()
    })
    .await
    .unwrap()
}

/// Like [`serve`], with a quick plant and the test recipes.
pub async fn serve_runs() -> Served {
    let sim = quick_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let bench = load_text(dir.path(), &runs_config_text(&sim, dir.path(), ""));
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

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<i64>,
    pub event: String,
    pub data: serde_json::Value,
}

/// A client of one event stream on a raw loopback connection (chunked HTTP/1.1).
pub struct SseStream {
    stream: tokio::net::TcpStream,
    raw: Vec<u8>,
    text: String,
    pub status: u16,
    pub content_type: String,
    ended: bool,
}

impl SseStream {
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<i64>) -> SseStream {
        let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut s = SseStream {
            stream,
            raw: Vec::new(),
            text: String::new(),
            status: 0,
            content_type: String::new(),
            ended: false,
        };
        // The head.
        loop {
            if let Some(end) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&s.raw[..end]).to_string();
                s.raw.drain(..end + 4);
                s.status = head
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|c| c.parse().ok())
                    .unwrap();
                s.content_type = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default();
                break;
            }
            assert!(s.fill().await, "connection closed before the response head");
        }
        s
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("event stream silent for too long")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Move complete chunks from `raw` to `text`; false once the last chunk was seen.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.raw[..eol]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let chunk = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.raw.drain(..eol + 2 + size + 2);
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            self.dechunk();
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some(Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            if self.ended || !self.fill().await {
                return None;
            }
        }
    }

    /// Every event up to the end of the stream.
    pub async fn rest(&mut self) -> Vec<Sse> {
        let mut v = Vec::new();
        while let Some(e) = self.next().await {
            v.push(e);
        }
        v
    }
}

/// Start a run over HTTP; panics unless 201. Returns the run id.
pub async fn start_run(addr: SocketAddr, body: &str) -> i64 {
    let r = post_json(addr, "/api/v1/runs", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/runs/{id}").as_str())
    );
    id
}

/// Wait until run `id` has a verdict; returns the run detail.
pub async fn finished(addr: SocketAddr, id: i64) -> serde_json::Value {
    eventually(&format!("run {id} to finish"), || async {
        let r = get(addr, &format!("/api/v1/runs/{id}")).await;
        let j = r.json();
        (!j["run"]["verdict"].is_null() && j["active"] == false).then_some(j)
    })
    .await
}
