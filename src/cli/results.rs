//! `labgate results list|show|export`: read the results store of the config's data directory.

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use crate::config::Bench;
use crate::store::{self, RunFilter, RunId, RunVerdict, Store};

#[derive(Debug, Subcommand)]
pub enum ResultsCmd {
    /// List runs, newest first.
    List {
        #[arg(long)]
        dut: Option<String>,
        #[arg(long)]
        recipe: Option<String>,
        #[arg(long)]
        station: Option<String>,
        /// pass, fail, error, aborted, interrupted.
        #[arg(long)]
        verdict: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one run: its steps and measurements with verdicts.
    Show {
        run: i64,
        #[arg(long)]
        json: bool,
    },
    /// Export runs as JSON (one run) or CSV (one row per measurement).
    Export {
        #[arg(required = true)]
        runs: Vec<i64>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

pub async fn run(bench: Bench, cmd: ResultsCmd) -> ExitCode {
    let path = store::path_in(&bench.paths.data);
    if !path.exists() {
        eprintln!("error: no results store at {}", path.display());
        return ExitCode::from(2);
    }
    let store = match tokio::task::spawn_blocking(move || Store::open(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match exec(&store, cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn exec(store: &Store, cmd: ResultsCmd) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cmd {
        ResultsCmd::List {
            dut,
            recipe,
            station,
            verdict,
            limit,
            json,
        } => {
            let verdict = match verdict {
                Some(v) => Some(v.parse::<RunVerdict>()?),
                None => None,
            };
            let page = store
                .list_runs(&RunFilter {
                    dut,
                    recipe,
                    station,
                    verdict,
                    limit,
                    ..RunFilter::default()
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page.items)?);
            } else {
                for r in &page.items {
                    println!(
                        "{:>6}  {}  {:<12} {:<20} {:<10} {:<12} {}",
                        r.id,
                        time(r.started_at),
                        r.verdict.map_or(r.state.as_str(), |v| v.as_str()),
                        r.recipe_name,
                        r.station,
                        r.dut_serial,
                        r.operator
                    );
                }
            }
        }
        ResultsCmd::Show { run, json } => {
            let Some(d) = store.get_run(RunId(run)).await? else {
                eprintln!("error: run {run} not found");
                return Ok(ExitCode::from(2));
            };
            if json {
                println!("{}", store::export_json(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            let r = &d.run;
            println!(
                "run {}: {} {} ({}) on {}, DUT {}, operator {}",
                r.id,
                r.recipe_name,
                r.recipe_version,
                r.recipe_hash,
                r.station,
                r.dut_serial,
                if r.operator.is_empty() {
                    "-"
                } else {
                    &r.operator
                }
            );
            println!(
                "started {}, ended {}, verdict {}",
                time(r.started_at),
                r.ended_at.map_or("-".to_string(), time),
                r.verdict.map_or(r.state.as_str(), |v| v.as_str())
            );
            println!("parameters: {}", d.parameters);
            for s in &d.steps {
                println!(
                    "[{}] {} ({}): {}{}",
                    s.index,
                    s.name,
                    s.kind,
                    s.status.map_or("running", |x| x.as_str()),
                    s.message
                        .as_deref()
                        .map(|m| format!(" - {m}"))
                        .unwrap_or_default()
                );
                for m in d.measurements.iter().filter(|m| m.step_id == s.id) {
                    let value = match (m.value, &m.invalid) {
                        (Some(v), _) => shown(v),
                        (None, Some(i)) => format!("<{i}>"),
                        (None, None) => "-".to_string(),
                    };
                    let lim = if m.limits.min.is_some() || m.limits.max.is_some() {
                        format!(
                            " [{} .. {}]",
                            m.limits.min.map_or(String::new(), shown),
                            m.limits.max.map_or(String::new(), shown)
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "    {} = {} {}{} {}",
                        m.name,
                        value,
                        m.unit,
                        lim,
                        m.verdict.map_or("", |v| v.as_str())
                    );
                }
            }
        }
        ResultsCmd::Export { runs, format } => {
            let mut details = Vec::new();
            for id in runs {
                match store.get_run(RunId(id)).await? {
                    Some(d) => details.push(d),
                    None => {
                        eprintln!("error: run {id} not found");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            match format {
                Format::Json if details.len() == 1 => {
                    println!("{}", store::export_json(&details[0])?)
                }
                Format::Json => println!("{}", serde_json::to_string_pretty(&details)?),
                Format::Csv => print!("{}", store::export_csv(&details)?),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A stored value for people to read: seven significant digits, no trailing zeros. A computed
/// efficacy is 85.71428571428571 in the store and in exports, 85.71429 here; an instrument's own
/// reading (229.87) is shorter than that already and shows as it is.
fn shown(v: f64) -> String {
    const DIGITS: i32 = 7;
    if v == 0.0 || !v.is_finite() {
        return v.to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..9).contains(&magnitude) {
        let text = format!("{:.*e}", (DIGITS - 1) as usize, v);
        // Trim the mantissa's trailing zeros: 1.500000e10 -> 1.5e10.
        return match text.split_once('e') {
            Some((mantissa, exp)) if mantissa.contains('.') => {
                format!(
                    "{}e{exp}",
                    mantissa.trim_end_matches('0').trim_end_matches('.')
                )
            }
            _ => text,
        };
    }
    let decimals = (DIGITS - 1 - magnitude).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn values_show_seven_significant_digits() {
        assert_eq!(shown(85.71428571428571), "85.71429");
        assert_eq!(shown(229.87), "229.87");
        assert_eq!(shown(-0.125), "-0.125");
        assert_eq!(shown(0.0), "0");
        assert_eq!(shown(3000.0), "3000");
        assert_eq!(shown(0.000123456789), "0.0001234568");
        assert_eq!(shown(1.5e10), "1.5e10");
        assert_eq!(shown(2.5e-7), "2.5e-7");
        assert_eq!(shown(99999995.0), "99999995");
        assert_eq!(shown(f64::NAN), "NaN");
    }
}
