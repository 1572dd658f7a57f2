//! /metrics render cost with 10,000 reading series (issue 4 target: < 20 ms), plus the
//! recorder's own series for 100 instruments. Prints figures; asserts nothing about time.
//!
//! `cargo bench --bench metrics` (release), or `cargo bench --profile dev --bench metrics` for a
//! quick upper bound.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use labgate::config::schema::Transport;
use labgate::gateway::Gateway;
use labgate::instrument::Instrument;
use labgate::link::{self, LinkSpec};
use labgate::poll::Latest;
use labgate::reading::{Reading, Value};

const INSTRUMENTS: usize = 100;
const QUANTITIES: usize = 100;
const RENDERS: usize = 200;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bench = labgate::config::demo().expect("demo config");
        let driver = bench.instruments["tc1"].driver.clone();
        let mut cfg = bench.links["tc_link"].clone();
        // Nothing listens on port 1: the links stay down and never touch the demo ports.
        cfg.transport = Transport::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let handle = link::spawn(LinkSpec::from_config("bench_link", &cfg), None);
        let mut gw = Gateway {
            links: Default::default(),
            instruments: Default::default(),
        };
        gw.links.insert("bench_link".into(), handle.clone());
        let latest = Latest::default();
        let metrics = labgate::metrics::install();
        for i in 0..INSTRUMENTS {
            let id = format!("inst{i:03}");
            gw.instruments.insert(
                id.clone(),
                Instrument::new(&id, Arc::clone(&driver), handle.clone(), None),
            );
            let readings: Vec<Reading> = (0..QUANTITIES)
                .map(|q| Reading {
                    quantity: format!("channel_{q:03}"),
                    value: Value::Number(20.0 + q as f64 / 10.0),
                    unit: "degC".into(),
                    at: SystemTime::now(),
                    raw: None,
                })
                .collect();
            latest.record(&id, &readings);
            for outcome in ["ok", "timeout"] {
                labgate::metrics::observe_request(&id, outcome, Duration::from_millis(3));
            }
        }
        let mut times = Vec::with_capacity(RENDERS);
        let mut bytes = 0;
        for _ in 0..RENDERS {
            let t = Instant::now();
            let text = labgate::metrics::render(metrics.as_ref(), &gw, &latest);
            times.push(t.elapsed());
            bytes = text.len();
        }
        times.sort();
        let mut state_times: Vec<Duration> = (0..RENDERS)
            .map(|_| {
                let t = Instant::now();
                let _ = labgate::metrics::render_state(&gw, &latest);
                t.elapsed()
            })
            .collect();
        state_times.sort();
        println!(
            "state series alone: p50 {:?}, p99 {:?}",
            state_times[RENDERS / 2],
            state_times[RENDERS * 99 / 100]
        );
        let series = INSTRUMENTS * QUANTITIES;
        println!(
            "metrics render: {series} reading series + {INSTRUMENTS} instruments' request series, \
             {bytes} bytes: p50 {:?}, p99 {:?}, max {:?} over {RENDERS} renders",
            times[RENDERS / 2],
            times[RENDERS * 99 / 100],
            times[RENDERS - 1]
        );
    });
}
