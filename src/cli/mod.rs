//! The `labgate` command line: the engineer's tools and the simulator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use serde::de::IntoDeserializer;

use crate::config::{self, Bench};
use crate::gateway::Gateway;
use crate::instrument::Instrument;
use crate::modbus::ops::{ModbusOp, ModbusReply};
use crate::modbus::value::{self as mv, Decoded, Table, ValueType, WordOrder};
use crate::reading::Reading;

mod results;
mod run;
mod serve;
mod sim;

/// labgate: instrument gateway for product-quality test benches.
#[derive(Debug, Parser)]
#[command(name = "labgate", version, about)]
pub struct Cli {
    /// Bench configuration file. Default: $LABGATE_CONFIG, else the built-in demo bench
    /// (the simulated instruments of `labgate sim` on 127.0.0.1).
    #[arg(long, short = 'c', global = true, env = "LABGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax), e.g. `info`, `labgate=debug`.
    #[arg(long, global = true, default_value = "warn", env = "LABGATE_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve simulated instruments on loopback (and optionally on pseudo-terminals).
    Sim(sim::SimArgs),
    /// Run the daemon: links, polls, HTTP API and /metrics (no --config: the demo with simulators).
    Serve(serve::ServeArgs),
    /// Validate the config and every driver file; print every problem and exit 1 if any.
    Check,
    /// Read quantities from an instrument.
    Read {
        instrument: String,
        #[arg(required = true)]
        quantities: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a triggered measurement (start, wait for completion, fetch) and print its readings.
    Measure {
        instrument: String,
        measurement: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a driver action: `labgate act src1 set_voltage volts=230`.
    Act {
        instrument: String,
        action: String,
        /// Arguments as key=value.
        args: Vec<String>,
    },
    /// Send a raw SCPI command (or query, if it contains `?`) to an instrument.
    Scpi { instrument: String, text: String },
    /// Raw Modbus access to an instrument (addresses use the driver's address base unless --base).
    Modbus {
        instrument: String,
        #[command(subcommand)]
        op: ModbusCmd,
    },
    /// Show the state of every link of the bench after one connection attempt.
    Links,
    /// Run a test recipe on a station: `labgate run lamp.toml --station demo --dut SN1`.
    Run(run::RunArgs),
    /// Runs and measurements in the results store.
    Results {
        #[command(subcommand)]
        cmd: results::ResultsCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModbusCmd {
    /// Read registers or bits: `read holding 2820 --type f32 --order CDAB`.
    Read {
        table: TableArg,
        address: u16,
        /// Number of values of --type to read (default 1).
        #[arg(default_value_t = 1)]
        count: u16,
        #[command(flatten)]
        fmt: ValueFmt,
    },
    /// Write one value: `write holding 2782 25.0 --type f32 --order CDAB`, `write coil 3 1`.
    Write {
        table: TableArg,
        address: u16,
        value: String,
        #[command(flatten)]
        fmt: ValueFmt,
    },
}

#[derive(Debug, clap::Args)]
pub struct ValueFmt {
    /// u16, i16, u32, i32, u64, i64, f32, f64, bool, string.
    #[arg(long = "type", short = 't', value_parser = parse_value_type, default_value = "u16")]
    pub value_type: ValueType,
    /// ABCD, CDAB, BADC, DCBA.
    #[arg(long, short = 'o', value_parser = parse_order, default_value = "ABCD")]
    pub order: WordOrder,
    /// Address base of the numbers you type (0 or 1); default: the driver's.
    #[arg(long)]
    pub base: Option<u16>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TableArg {
    Coil,
    #[value(alias = "discrete")]
    DiscreteInput,
    Holding,
    Input,
}

impl From<TableArg> for Table {
    fn from(t: TableArg) -> Table {
        match t {
            TableArg::Coil => Table::Coil,
            TableArg::DiscreteInput => Table::DiscreteInput,
            TableArg::Holding => Table::Holding,
            TableArg::Input => Table::Input,
        }
    }
}

fn parse_value_type(s: &str) -> Result<ValueType, String> {
    ValueType::deserialize(s.to_ascii_lowercase().into_deserializer())
        .map_err(|e: serde::de::value::Error| e.to_string())
}

fn parse_order(s: &str) -> Result<WordOrder, String> {
    WordOrder::deserialize(s.to_ascii_uppercase().into_deserializer())
        .map_err(|e: serde::de::value::Error| e.to_string())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(a) = &cli.command {
        serve::init_logging(a, &cli.log);
    }
    init_logging(&cli.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(cli))
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Print an error and its causes, one per line.
fn report(e: &(dyn std::error::Error + 'static)) {
    eprintln!("error: {e}");
    // Our error messages already embed their cause's text; print a cause only when it adds
    // something (errors from other crates do not always embed theirs).
    let mut shown = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
            shown.push_str(&text);
        }
        src = s.source();
    }
}

fn load_bench(path: &Option<PathBuf>) -> Result<Bench, ExitCode> {
    let loaded = match path {
        Some(p) => config::load(p),
        None => config::demo(),
    };
    loaded.map_err(|d| {
        eprintln!("{d}");
        eprintln!("error: {} problem(s) in the configuration", d.0.len());
        ExitCode::from(1)
    })
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Sim(args) => sim::run(args).await,
        Command::Serve(args) => serve::run(cli.config, args).await,
        Command::Check => match load_bench(&cli.config) {
            Ok(bench) => {
                if !bench.warnings.is_empty() {
                    eprintln!("{}", bench.warnings);
                }
                println!(
                    "ok: {} links, {} instruments, {} stations, {} polls, {} drivers ({})",
                    bench.links.len(),
                    bench.instruments.len(),
                    bench.stations.len(),
                    bench.polls.len(),
                    bench.drivers.len(),
                    bench.source.display()
                );
                let (n, recipe_diags) = crate::recipe::check_dir(&bench.paths.recipes, &bench);
                if recipe_diags.has_errors() {
                    eprintln!("{recipe_diags}");
                    eprintln!("error: {} problem(s) in the recipes", recipe_diags.len());
                    return ExitCode::from(1);
                }
                println!("ok: {n} recipes ({})", bench.paths.recipes.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run(args) => match load_bench(&cli.config) {
            Ok(bench) => run::run(bench, args).await,
            Err(_) => ExitCode::from(2),
        },
        Command::Results { cmd } => match load_bench(&cli.config) {
            Ok(bench) => results::run(bench, cmd).await,
            Err(code) => code,
        },
        Command::Links => {
            let bench = match load_bench(&cli.config) {
                Ok(b) => b,
                Err(code) => return code,
            };
            let gw = Gateway::start(&bench);
            let mut all_up = true;
            for (name, link) in &gw.links {
                let mut w = link.watch();
                // One attempt: wait until the link leaves "connecting" (bounded by connect timeout).
                let _ = tokio::time::timeout(
                    crate::link::DEFAULT_CONNECT_TIMEOUT * 2,
                    w.wait_for(|s| s.state != crate::link::LinkState::Connecting),
                )
                .await;
                let s = link.status();
                all_up &= s.state == crate::link::LinkState::Connected;
                println!(
                    "{name:<16} {:<13} {:<24} {}",
                    s.state.to_string(),
                    s.endpoint,
                    s.last_error
                        .as_deref()
                        .or(s.identity.as_deref())
                        .unwrap_or("")
                );
            }
            if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Read {
            instrument,
            quantities,
            json,
        } => {
            with_instrument(&cli.config, &instrument, |inst| async move {
                let names: Vec<&str> = quantities.iter().map(|s| s.as_str()).collect();
                let readings = inst.read(&names).await?;
                print_readings(&readings, json);
                Ok(())
            })
            .await
        }
        Command::Measure {
            instrument,
            measurement,
            json,
        } => {
            with_instrument(&cli.config, &instrument, |inst| async move {
                let readings = inst.measure(&measurement).await?;
                print_readings(&readings, json);
                Ok(())
            })
            .await
        }
        Command::Act {
            instrument,
            action,
            args,
        } => {
            let mut given = BTreeMap::new();
            for a in &args {
                match a.split_once('=') {
                    Some((k, v)) => {
                        given.insert(k.trim().to_string(), v.trim().to_string());
                    }
                    None => {
                        eprintln!("error: argument `{a}` is not key=value");
                        return ExitCode::from(2);
                    }
                }
            }
            with_instrument(&cli.config, &instrument, |inst| async move {
                inst.act(&action, &given).await?;
                println!("ok");
                Ok(())
            })
            .await
        }
        Command::Scpi { instrument, text } => {
            with_instrument(&cli.config, &instrument, |inst| async move {
                match inst.scpi_raw(&text).await? {
                    Some(reply) => println!("{reply}"),
                    None => println!("ok"),
                }
                Ok(())
            })
            .await
        }
        Command::Modbus { instrument, op } => {
            with_instrument(&cli.config, &instrument, |inst| async move {
                modbus_cmd(&inst, op).await
            })
            .await
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn with_instrument<F, Fut>(config: &Option<PathBuf>, id: &str, f: F) -> ExitCode
where
    F: FnOnce(Instrument) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let bench = match load_bench(config) {
        Ok(b) => b,
        Err(code) => return code,
    };
    if !bench.instruments.contains_key(id) {
        let known: Vec<&str> = bench.instruments.keys().map(|s| s.as_str()).collect();
        eprintln!(
            "error: no instrument `{id}` in {} (known: {})",
            bench.source.display(),
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let gw = Gateway::start_only(&bench, |i| i == id);
    let Some(inst) = gw.instrument(id).cloned() else {
        eprintln!("error: instrument `{id}` could not be started");
        return ExitCode::from(2);
    };
    match f(inst).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e.as_ref());
            ExitCode::from(1)
        }
    }
}

fn print_readings(readings: &[Reading], json: bool) {
    if json {
        match serde_json::to_string_pretty(readings) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
        return;
    }
    for r in readings {
        let unit = if r.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", r.unit)
        };
        println!("{} = {}{unit}", r.quantity, r.value);
    }
}

async fn modbus_cmd(inst: &Instrument, op: ModbusCmd) -> Result<(), BoxError> {
    let to_protocol = |address: u16, base: Option<u16>| match base {
        Some(b) => address.saturating_sub(b),
        None => inst.protocol_address(address),
    };
    match op {
        ModbusCmd::Read {
            table,
            address,
            count,
            fmt,
        } => {
            let table: Table = table.into();
            let words = fmt.value_type.registers(None);
            let start = to_protocol(address, fmt.base);
            let bits = matches!(table, Table::Coil | Table::DiscreteInput);
            let total = if bits {
                count
            } else {
                count.saturating_mul(words)
            };
            let reply = inst
                .modbus_raw(ModbusOp::Read {
                    table,
                    address: start,
                    count: total,
                })
                .await?;
            match reply {
                ModbusReply::Bits(b) => {
                    for (i, v) in b.iter().enumerate() {
                        println!("{} = {}", address as usize + i, u8::from(*v));
                    }
                }
                ModbusReply::Words(w) => {
                    for (i, chunk) in w.chunks(words as usize).enumerate() {
                        let v = mv::decode(chunk, fmt.value_type, fmt.order, None)?;
                        let shown = match v {
                            Decoded::Number(n) => n.to_string(),
                            Decoded::Bool(b) => b.to_string(),
                            Decoded::Text(t) => format!("{t:?}"),
                        };
                        println!(
                            "{} = {shown}  (raw {chunk:04X?})",
                            address as usize + i * words as usize
                        );
                    }
                }
                ModbusReply::Written => {}
            }
        }
        ModbusCmd::Write {
            table,
            address,
            value,
            fmt,
        } => {
            let table: Table = table.into();
            let start = to_protocol(address, fmt.base);
            let op = match table {
                Table::Coil => ModbusOp::WriteCoil {
                    address: start,
                    value: parse_bool_word(&value)?,
                },
                Table::Holding => {
                    let decoded = match fmt.value_type {
                        ValueType::String => Decoded::Text(value.clone()),
                        ValueType::Bool => Decoded::Bool(parse_bool_word(&value)?),
                        _ => Decoded::Number(
                            value
                                .parse::<f64>()
                                .map_err(|_| format!("`{value}` is not a number"))?,
                        ),
                    };
                    let words = mv::encode(&decoded, fmt.value_type, fmt.order, None)?;
                    if words.len() == 1 {
                        ModbusOp::WriteRegister {
                            address: start,
                            value: words[0],
                        }
                    } else {
                        ModbusOp::WriteRegisters {
                            address: start,
                            values: words,
                        }
                    }
                }
                t => return Err(format!("table {t:?} is read-only").into()),
            };
            inst.modbus_raw(op).await?;
            println!("ok");
        }
    }
    Ok(())
}

fn parse_bool_word(s: &str) -> Result<bool, BoxError> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" => Ok(true),
        "0" | "off" | "false" => Ok(false),
        _ => Err(format!("`{s}` is not a bit value (0/1, on/off, true/false)").into()),
    }
}
