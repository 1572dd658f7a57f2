//! API read latency under load while the demo polls run (issue 4 target: 500 reads/s, p99 <
//! 10 ms). An ephemeral simulator bench, the demo config on it, the API on 127.0.0.1:0; paced
//! `POST /read` requests of the analyzer's voltage over fresh loopback connections. Prints
//! figures; asserts nothing about time.
//!
//! `cargo bench --bench api`.

#[path = "../tests/api_common/mod.rs"]
mod api_common;

use std::time::{Duration, Instant};

const RATE: u64 = 500;
const SECONDS: u64 = 4;
const CLIENTS: u64 = 8;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = api_common::serve("").await;
        let addr = s.addr;
        // Wait until the analyzer answers.
        api_common::eventually("analyzer", || async {
            let r = api_common::post_json(addr, "/api/v1/instruments/pa1/read", r#"{"quantities":["voltage"]}"#).await;
            (r.status == 200).then_some(())
        })
        .await;
        let per_client = RATE * SECONDS / CLIENTS;
        let period = Duration::from_micros(1_000_000 * CLIENTS / RATE);
        let started = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(async move {
                    // Stagger the clients over one period.
                    tokio::time::sleep(period * c as u32 / CLIENTS as u32).await;
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut lat = Vec::with_capacity(per_client as usize);
                    let mut failed = 0;
                    for _ in 0..per_client {
                        tick.tick().await;
                        let t = Instant::now();
                        let r = api_common::post_json(
                            addr,
                            "/api/v1/instruments/pa1/read",
                            r#"{"quantities":["voltage"]}"#,
                        )
                        .await;
                        lat.push(t.elapsed());
                        failed += usize::from(r.status != 200);
                    }
                    (lat, failed)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut failed = 0;
        for t in tasks {
            let (l, f) = t.await.unwrap();
            all.extend(l);
            failed += f;
        }
        let wall = started.elapsed();
        all.sort();
        let n = all.len();
        println!(
            "api reads: {n} requests in {wall:.2?} ({:.0}/s, {failed} failed), latency p50 {:?}, p99 {:?}, max {:?}",
            n as f64 / wall.as_secs_f64(),
            all[n / 2],
            all[n * 99 / 100],
            all[n - 1]
        );
    });
}
