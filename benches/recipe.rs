//! Recipe engine overhead per step (issue 3 target: < 0.5 ms per step beyond the instrument's own
//! time). A 1,000-step recipe (act / measure / compute / check, repeated) runs against the
//! simulated AC source and power analyzer on loopback, filing into a store on disk; the bare
//! baseline makes the same instrument requests straight through the `Instrument` handles, in the
//! same process, alternating with the engine runs. Prints figures and ratios; asserts nothing.
//!
//! `cargo bench --bench recipe`. Knobs: `LABGATE_BENCH_STEPS` (1000), `LABGATE_BENCH_ROUNDS` (3).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use labgate::config;
use labgate::gateway::Gateway;
use labgate::instrument::Instrument;
use labgate::recipe::{self, RunSpec, StationView};
use labgate::sim::bench::{SimBenchConfig, start};
use labgate::store::{RunVerdict, Store, StoreOptions, SyncLevel};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// `steps` steps cycling act, measure, compute, check.
fn recipe_text(steps: usize) -> String {
    let mut s = String::from(
        "[recipe]\nname = \"overhead\"\nversion = \"1\"\nroles = [\"source\", \"analyzer\"]\n",
    );
    for i in 0..steps {
        let step = match i % 4 {
            0 => "kind = \"act\"\nrole = \"source\"\naction = \"set_voltage\"\nargs = { volts = 230.0 }\n"
                .to_string(),
            1 => "kind = \"measure\"\nrole = \"analyzer\"\nquantities = [\"power\"]\nlimits.power = { min = 0.0, max = 1000.0 }\n"
                .to_string(),
            2 => "kind = \"compute\"\noutput = \"double\"\nexpr = \"2.0 * power\"\nunit = \"W\"\n"
                .to_string(),
            _ => "kind = \"check\"\nexpr = \"power\"\nunit = \"W\"\nlimit = { max = 1000.0 }\n"
                .to_string(),
        };
        s.push_str(&format!("\n[[steps]]\nname = \"s{i}\"\n{step}"));
    }
    s
}

/// What the recipe asks of the instruments, without the engine.
async fn bare(steps: usize, src: &Instrument, pa: &Instrument) {
    let args: BTreeMap<String, toml::Value> = [("volts".to_string(), toml::Value::Float(230.0))]
        .into_iter()
        .collect();
    for i in 0..steps {
        match i % 4 {
            0 => src.act_typed("set_voltage", &args).await.unwrap(),
            1 => {
                std::hint::black_box(pa.read(&["power"]).await.unwrap());
            }
            _ => {}
        }
    }
}

fn ms(d: f64) -> String {
    format!("{:.3} ms", d * 1e3)
}

fn main() {
    let steps = env_usize("LABGATE_BENCH_STEPS", 1000);
    let rounds = env_usize("LABGATE_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = start(SimBenchConfig::ephemeral()).await.unwrap();
        // On the repository's disk (not a tmpfs), so step-end syncs cost what they cost.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir_in(root.join("target")).unwrap();
        let text = config::DEMO_CONFIG
            .replace(
                "port = 15025",
                &format!("port = {}", sim.power_analyzer.port()),
            )
            .replace("port = 15026", &format!("port = {}", sim.ac_source.port()))
            .replace("port = 15027", &format!("port = {}", sim.sphere.port()))
            .replace("port = 15028", &format!("port = {}", sim.logger.port()))
            .replace("port = 15502", &format!("port = {}", sim.modbus.port()));
        let text = format!(
            "[paths]\ndrivers = [{:?}]\ndata = {:?}\n\n{text}",
            root.join("drivers").display().to_string(),
            dir.path().join("data").display().to_string(),
        );
        let cfg_path = dir.path().join("bench.toml");
        std::fs::write(&cfg_path, text).unwrap();
        let bench = config::load(&cfg_path).unwrap_or_else(|d| panic!("{d}"));
        let gw = Gateway::start_only(&bench, |id| id == "pa1" || id == "src1");
        let (src, pa) = (gw.instruments["src1"].clone(), gw.instruments["pa1"].clone());
        let t0 = Instant::now();
        while pa.read(&["power"]).await.is_err() || src.read(&["voltage"]).await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "simulators answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let station = StationView::of(&bench, "demo").unwrap();
        let rpath = dir.path().join("overhead.toml");
        std::fs::write(&rpath, recipe_text(steps)).unwrap();
        let (recipe, params) = recipe::load_and_validate(&rpath, &station, &BTreeMap::new())
            .unwrap_or_else(|d| panic!("{d}"));
        let spec = RunSpec {
            recipe,
            station,
            params,
            dut: "SN-BENCH".into(),
            operator: "bench".into(),
        };
        // Memory-backed, where the machine has one: what the engine and SQLite cost without
        // the disk.
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        let mut variants: Vec<(&str, StoreOptions, std::path::PathBuf)> = vec![
            (
                "engine (default store)",
                StoreOptions::default(),
                dir.path().to_path_buf(),
            ),
            (
                "engine, sync every step end",
                StoreOptions {
                    step_sync_interval: Duration::ZERO,
                    ..StoreOptions::default()
                },
                dir.path().to_path_buf(),
            ),
            (
                "engine, no step-end sync",
                StoreOptions {
                    sync: SyncLevel::Normal,
                    sync_at_step_end: false,
                    ..StoreOptions::default()
                },
                dir.path().to_path_buf(),
            ),
        ];
        if let Some(shm) = &shm {
            variants.push((
                "engine, store in /dev/shm",
                StoreOptions::default(),
                shm.path().to_path_buf(),
            ));
        }
        let stores: Vec<Store> = variants
            .iter()
            .enumerate()
            .map(|(i, (_, o, d))| {
                Store::open_with(d.join(format!("results-{i}.db")), o.clone()).unwrap()
            })
            .collect();
        println!(
            "{steps} steps (act, measure, compute, check repeated), {rounds} interleaved rounds, store on {}",
            dir.path().display()
        );
        // Warm-up: connections, caches, statement cache.
        bare(steps.min(100), &src, &pa).await;
        let mut bare_t = Vec::new();
        let mut eng_t: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            let t = Instant::now();
            bare(steps, &src, &pa).await;
            bare_t.push(t.elapsed().as_secs_f64());
            for (i, store) in stores.iter().enumerate() {
                let t = Instant::now();
                let o = recipe::run(&spec, &gw.instruments, store, None, Default::default())
                    .await
                    .unwrap();
                eng_t[i].push(t.elapsed().as_secs_f64());
                assert_eq!(o.verdict, RunVerdict::Pass);
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let b = median(&bare_t);
        println!(
            "bare instrument requests: {} per run, {} per step",
            ms(b),
            ms(b / steps as f64)
        );
        for (i, (label, _, _)) in variants.iter().enumerate() {
            let e = median(&eng_t[i]);
            let over = (e - b) / steps as f64;
            // Per-round overhead, engine minus the bare run of the same round.
            let per_round: Vec<String> = eng_t[i]
                .iter()
                .zip(&bare_t)
                .map(|(e, b)| format!("{:.3}", (e - b) / steps as f64 * 1e3))
                .collect();
            println!(
                "{label:<28} {} per run, overhead {} per step (rounds: {} ms), bare/engine {:.3}  {}",
                ms(e),
                ms(over),
                per_round.join(" / "),
                b / e,
                if over < 0.5e-3 {
                    "ok (< 0.5 ms)"
                } else {
                    "MISSED (>= 0.5 ms)"
                }
            );
        }
    });
}
