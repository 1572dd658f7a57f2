//! The simulated SCPI bench over real loopback TCP and real pseudo-terminals: each instrument's
//! commands, the coupling through the plant, faults, and the shipped driver files.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use labgate::driver::DriverFile;
use labgate::driver::schema::Wait;
use labgate::sim::bench::{self, SimBench, SimBenchConfig};
use labgate::sim::fault::Faults;
use labgate::sim::plant::PlantConfig;
use labgate::sim::pty::open_pty;
use labgate::sim::scpi_server::serve_stream;
use labgate::sim::sphere::SphereConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_serial::SerialPortBuilderExt;

/// Generous: a loaded 2-core machine can stall a task for a while.
const REPLY: Duration = Duration::from_secs(5);

struct Client<S> {
    io: BufReader<S>,
}

async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let s = timeout(REPLY, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    Client {
        io: BufReader::new(s),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, cmd: &str) {
        let s = self.io.get_mut();
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        s.flush().await.expect("flush");
    }

    /// One raw reply line (without the newline); `None` on end of stream.
    async fn read_raw(
        &mut self,
        within: Duration,
    ) -> Result<Option<Vec<u8>>, tokio::time::error::Elapsed> {
        let mut buf = Vec::new();
        timeout(within, self.io.read_until(b'\n', &mut buf))
            .await
            .map(|r| match r {
                Ok(0) | Err(_) => None,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    Some(buf)
                }
            })
    }

    async fn query(&mut self, cmd: &str) -> String {
        self.send(cmd).await;
        let raw = self
            .read_raw(REPLY)
            .await
            .unwrap_or_else(|_| panic!("no reply to {cmd:?}"))
            .unwrap_or_else(|| panic!("connection closed on {cmd:?}"));
        String::from_utf8(raw).expect("utf-8 reply")
    }

    async fn numbers(&mut self, cmd: &str) -> Vec<f64> {
        let r = self.query(cmd).await;
        r.split(',')
            .map(|t| match t.trim() {
                "NAN" => f64::NAN,
                "INF" => f64::INFINITY,
                t => t.parse().unwrap_or_else(|_| panic!("{cmd:?} -> {r:?}")),
            })
            .collect()
    }

    async fn number(&mut self, cmd: &str) -> f64 {
        let v = self.numbers(cmd).await;
        assert_eq!(v.len(), 1, "{cmd:?} -> {v:?}");
        v[0]
    }
}

fn quick_plant() -> PlantConfig {
    PlantConfig {
        tau: Duration::from_millis(1000),
        noise: 0.0002,
        ..PlantConfig::default()
    }
}

async fn start(cfg: SimBenchConfig) -> SimBench {
    timeout(REPLY, bench::start(cfg))
        .await
        .expect("bench start timed out")
        .expect("bench start")
}

async fn start_default() -> SimBench {
    start(SimBenchConfig {
        plant: quick_plant(),
        ..SimBenchConfig::ephemeral()
    })
    .await
}

#[tokio::test]
async fn power_analyzer_commands_and_header_forms() {
    let b = start_default().await;
    let mut pa = connect(b.power_analyzer).await;
    assert_eq!(pa.query("*IDN?").await, "YOKOGAWA,WT310E,C2SIM0001,F1.03");
    pa.send(":COMMunicate:REMote ON").await;
    pa.send(":COMM:HEAD OFF;:comm:verb on").await;
    pa.send(":NUMeric:FORMat ASCii").await;
    assert_eq!(pa.query(":NUM:NORM:NUM?").await, "6");
    assert_eq!(pa.query(":NUMeric:NORMal:ITEM4?").await, "LAMBDA,1");
    // Source off: no voltage, no current, so no power factor or frequency.
    let v = pa.numbers(":NUMeric:NORMal:VALue?").await;
    assert_eq!(v.len(), 6);
    assert_eq!((v[0], v[1], v[2]), (0.0, 0.0, 0.0));
    assert!(v[3].is_nan() && v[4].is_nan(), "{v:?}");
    // Long, short and mixed-case forms of one header.
    for h in [
        ":NUMeric:NORMal:VALue? 1",
        ":NUM:NORM:VAL? 1",
        "num:norm:value? 1",
    ] {
        assert_eq!(pa.query(h).await, "0.0000E+00", "{h}");
    }
    pa.send(":NUM:NORM:NUMBER 2;:NUM:NORM:ITEM2 PHI,1").await;
    assert_eq!(pa.numbers(":NUM:NORM:VAL?").await.len(), 2);
    assert_eq!(pa.query(":num:norm:item2?").await, "PHI,1");
    // Two queries in one line: replies joined by ';'.
    assert_eq!(pa.query("*OPC?;:NUM:NORM:NUM?").await, "1;2");
    assert_eq!(pa.query(":STATus:ERRor?").await, "0,\"No error\"");
    // Errors are queued oldest first.
    pa.send(":NUM:NORM:BOGUS 1").await;
    pa.send(":NUM:NORM:ITEM1 U,2").await;
    pa.send(":NUM:NORM:ITEM1 XYZ,1").await;
    assert_eq!(pa.query(":STAT:ERR?").await, "113,\"Undefined header\"");
    assert_eq!(pa.query(":STAT:ERR?").await, "222,\"Data out of range\"");
    pa.send("*CLS").await;
    assert_eq!(pa.query(":STAT:ERR?").await, "0,\"No error\"");
    pa.send("*RST").await;
    assert_eq!(pa.numbers(":NUM:NORM:VAL?").await.len(), 6);
    assert_eq!(pa.query(":STAT:EESR?").await, "1");
    pa.send(":INTEG:STAR").await;
    assert_eq!(pa.query(":INTEGrate:STATe?").await, "START");
    pa.send(":INTEG:RES").await;
    assert_eq!(pa.query(":INTEG:STAT?").await, "RESET");
    b.shutdown().await;
}

#[tokio::test]
async fn analyzer_overrange_reads_inf() {
    let b = start(SimBenchConfig {
        plant: quick_plant(),
        power_analyzer: labgate::sim::power_analyzer::PowerAnalyzerConfig {
            current_range_a: 0.005,
        },
        ..SimBenchConfig::ephemeral()
    })
    .await;
    let mut ac = connect(b.ac_source).await;
    ac.send(":SOUR:VOLT:AC 230;:OUTP ON").await;
    let mut pa = connect(b.power_analyzer).await;
    assert_eq!(pa.query(":NUM:NORM:VAL? 2").await, "INF");
    let u = pa.number(":NUM:NORM:VAL? 1").await;
    assert!((u - 230.0).abs() < 1.0, "{u}");
}

#[tokio::test]
async fn ac_source_commands() {
    let b = start_default().await;
    let mut ac = connect(b.ac_source).await;
    assert_eq!(ac.query("*IDN?").await, "Chroma ATE,61502,SIM0001,1.00");
    ac.send("SYST:REM").await;
    ac.send(":SOURce:VOLTage:AC 230").await;
    ac.send(":sour:freq 60").await;
    assert_eq!(ac.query(":SOUR:VOLT:AC?").await, "230.00");
    assert_eq!(ac.query(":SOUR:FREQ?").await, "60.00");
    assert_eq!(ac.query(":OUTP?").await, "OFF");
    assert_eq!(ac.query(":FETC:POW:AC?").await, "0.000");
    assert_eq!(ac.query("SYST:ERR?").await, "0,\"No error\"");
    ac.send(":SOUR:VOLT:AC 301").await;
    ac.send(":SOUR:FREQ 40").await;
    ac.send(":SOUR:NONSENSE 1").await;
    assert_eq!(ac.query("SYST:ERR?").await, "-222,\"Data out of range\"");
    assert_eq!(ac.query("SYST:ERR?").await, "-222,\"Data out of range\"");
    assert_eq!(ac.query("SYST:ERR?").await, "-113,\"Undefined header\"");
    assert_eq!(
        ac.query(":SOUR:VOLT:AC?").await,
        "230.00",
        "bad value ignored"
    );
    // Voltage and range together, the way the manual recommends.
    ac.send("VOLT 220;VOLT:RANG 300").await;
    assert_eq!(ac.query("VOLT?").await, "220.00");
    ac.send(":SOUR:VOLT:LIM:AC 250;:SOUR:CURR:LIM 2").await;
    ac.send(":SOUR:VOLT:AC 260").await;
    assert_eq!(
        ac.query("SYST:ERR?").await,
        "-222,\"Data out of range\"",
        "above the limit"
    );
    ac.send(":OUTP 1").await;
    assert_eq!(ac.query(":OUTP?").await, "ON");
    assert!(b.plant.output_on());
    let v = ac.number(":FETC:VOLT:ACDC?").await;
    assert!((v - 220.0).abs() < 1.0, "{v}");
    let pf = ac.number(":FETC:POW:AC:PFAC?").await;
    assert!(pf > 0.8 && pf <= 1.0, "{pf}");
    assert!((ac.number(":FETC:FREQ?").await - 60.0).abs() < 0.1);
    assert!(ac.number(":FETC:CURR:AC?").await > 0.01);
    ac.send(":OUTP OFF").await;
    assert_eq!(ac.query("SYST:ERR?").await, "0,\"No error\"");
    assert!(!b.plant.output_on());
    b.shutdown().await;
}

#[tokio::test]
async fn coupled_bench_settles() {
    let b = start(SimBenchConfig {
        // A large cold excess leaves a stalled test seconds of slack before the early flux
        // reading stops being clearly high.
        plant: PlantConfig {
            cold_flux_excess: 0.08,
            ..quick_plant()
        },
        sphere: SphereConfig {
            integration_time: Duration::from_millis(20),
        },
        ..SimBenchConfig::ephemeral()
    })
    .await;
    let (mut ac, mut pa, mut sp, mut lg) = (
        connect(b.ac_source).await,
        connect(b.power_analyzer).await,
        connect(b.sphere).await,
        connect(b.logger).await,
    );
    let off = pa.numbers(":NUM:NORM:VAL?").await;
    assert!(off[2].abs() < 1e-6 && off[3].is_nan(), "{off:?}");
    let cold_case = lg.number("MEAS:TEMP? TC,K,(@101)").await;

    ac.send(":SOUR:VOLT:AC 230;:SOUR:FREQ 50;:OUTP ON").await;
    let early_p = pa.number(":NUM:NORM:VAL? 3").await;
    sp.send("INIT").await;
    assert_eq!(sp.query("*OPC?").await, "1");
    let early_flux = sp.number("FETC:FLUX?").await;
    assert!(early_p > 8.0 && early_p < 9.5, "{early_p}");

    // Wait (bounded) until the power has settled to its rated value.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let p = pa.number(":NUM:NORM:VAL? 3").await;
        // Tight enough that the flux (same time constant) is within ~1 lm of steady state too.
        if (p - 9.5).abs() < 0.006 {
            break;
        }
        assert!(Instant::now() < deadline, "power never settled: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sp.send("INIT").await;
    assert_eq!(sp.query("*OPC?").await, "1");
    let flux = sp.number("FETC:FLUX?").await;
    assert!((flux - 806.0).abs() < 4.0, "{flux}");
    assert!(
        early_flux > flux * 1.01,
        "flux falls as the lamp warms: {early_flux} -> {flux}"
    );

    let v = pa.numbers(":NUM:NORM:VAL?").await;
    let (u, i, p, pf, fu, ithd) = (v[0], v[1], v[2], v[3], v[4], v[5]);
    assert!((u - 230.0).abs() < 1.0 && (fu - 50.0).abs() < 0.1, "{v:?}");
    assert!((i - p / (u * pf)).abs() / i < 0.01, "{v:?}");
    assert!(pf > 0.8 && pf < 1.0 && ithd > 10.0 && ithd < 40.0, "{v:?}");
    let case = lg.number("MEAS:TEMP? TC,K,(@101)").await;
    assert!(case > cold_case + 20.0, "case {cold_case} -> {case}");

    ac.send(":OUTP OFF").await;
    let v = pa.numbers(":NUM:NORM:VAL?").await;
    assert!(v[2].abs() < 1e-6 && v[3].is_nan(), "{v:?}");
    sp.send("INIT").await;
    assert_eq!(sp.query("*OPC?").await, "1");
    assert_eq!(sp.number("FETC:FLUX?").await, 0.0);
    assert!(sp.number("FETC:CCT?").await.is_nan());
    b.shutdown().await;
}

#[tokio::test]
async fn sphere_measurement_cycle() {
    let b = start(SimBenchConfig {
        plant: quick_plant(),
        sphere: SphereConfig {
            integration_time: Duration::from_millis(1500),
        },
        ..SimBenchConfig::ephemeral()
    })
    .await;
    let mut sp = connect(b.sphere).await;
    assert_eq!(sp.query("*IDN?").await, "LABGATE,SIM-SPHERE,SIM0001,1.0");
    assert_eq!(sp.query("STAT?").await, "IDLE");
    assert!(sp.number("FETC:FLUX?").await.is_nan());
    assert!(sp.query("SYST:ERR?").await.starts_with("-230,"));
    assert_eq!(sp.query("SYST:ERR?").await, "0,\"No error\"");

    b.plant.set_voltage(230.0);
    b.plant.set_output(true);
    let t0 = Instant::now();
    sp.send("INIT").await;
    assert_eq!(sp.query("STAT?").await, "BUSY");
    assert_eq!(sp.query("*OPC?").await, "1");
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "*OPC? waits for the integration"
    );
    assert_eq!(sp.query("STAT?").await, "DONE");

    let all = sp.numbers("FETC:ALL?").await;
    assert_eq!(all.len(), 7);
    let (flux, cct, duv, x, y, ra, r9) = (all[0], all[1], all[2], all[3], all[4], all[5], all[6]);
    assert!(flux > 780.0 && flux < 860.0, "{all:?}");
    assert!((cct - 2725.0).abs() < 145.0 && duv.abs() < 0.006, "{all:?}");
    assert!(x > 0.44 && x < 0.48 && y > 0.39 && y < 0.43, "{all:?}");
    assert!(ra > 80.0 && r9 > 0.0, "{all:?}");
    assert_eq!(
        sp.numbers("FETC:XY?").await,
        vec![x, y],
        "same captured data"
    );
    assert_eq!(sp.number("FETC:RI? 9").await, r9);
    assert_eq!(sp.numbers("FETC:UV?").await.len(), 2);
    let peak = sp.number("FETC:PEAK?").await;
    assert!(peak > 550.0 && peak < 650.0, "{peak}");
    let spd = sp.numbers("FETC:SPD?").await;
    assert_eq!(spd.len(), 401);
    assert!(spd.iter().all(|v| v.is_finite() && *v >= 0.0));
    let rflux = sp.number("FETC:RFLUX?").await;
    assert!(
        (spd.iter().sum::<f64>() - rflux).abs() / rflux < 0.01,
        "W/nm over 1 nm steps"
    );
    // Blue pump peak at ~450 nm is a local maximum.
    assert!(spd[450 - 380] > spd[480 - 380]);
    assert_eq!(sp.query("SYST:ERR?").await, "0,\"No error\"");
    assert!(sp.number("FETC:RI? 16").await.is_nan());
    sp.send("FETC:BOGUS?").await;
    assert_eq!(sp.query("SYST:ERR?").await, "-222,\"Data out of range\"");
    assert_eq!(sp.query("SYST:ERR?").await, "-113,\"Undefined header\"");
    b.shutdown().await;
}

#[tokio::test]
async fn logger_channels_and_open_thermocouple() {
    let b = start_default().await;
    let mut lg = connect(b.logger).await;
    assert_eq!(lg.query("*IDN?").await, "HEWLETT-PACKARD,34970A,0,13-2-2");
    let raw = lg.query("MEAS:TEMP? TC,K,(@101:104)").await;
    let fields: Vec<&str> = raw.split(',').collect();
    assert_eq!(fields.len(), 4, "{raw}");
    assert_eq!(fields[3], "+9.90000000E+37");
    assert!(
        fields[0].starts_with('+') && fields[0].contains("E+01"),
        "{raw}"
    );
    for f in &fields[..3] {
        let t: f64 = f.parse().expect("number");
        assert!((20.0..=30.0).contains(&t), "{raw}");
    }
    let two = lg
        .numbers("MEASure:TEMPerature? TCouple,K,(@101,103)")
        .await;
    assert_eq!(two.len(), 2);
    assert_eq!(lg.query("SYST:ERR?").await, "+0,\"No error\"");
    lg.send("MEAS:TEMP? TC,K,(@201)").await;
    lg.send("MEAS:TEMP? TC,J,(@101)").await;
    assert_eq!(lg.query("SYST:ERR?").await, "-222,\"Data out of range\"");
    assert_eq!(
        lg.query("SYST:ERR?").await,
        "-224,\"Illegal parameter value\""
    );
    b.shutdown().await;
}

#[tokio::test]
async fn faults_delay_drop_silent_garbage() {
    let mut cfg = SimBenchConfig {
        plant: quick_plant(),
        ..SimBenchConfig::ephemeral()
    };
    cfg.faults.power_analyzer = Faults {
        delay: Some(Duration::from_millis(300)),
        ..Faults::default()
    };
    cfg.faults.ac_source = Faults {
        drop_after: Some(2),
        ..Faults::default()
    };
    cfg.faults.sphere = Faults {
        silent: true,
        ..Faults::default()
    };
    cfg.faults.logger = Faults {
        garbage: true,
        ..Faults::default()
    };
    let b = start(cfg).await;

    let mut pa = connect(b.power_analyzer).await;
    let t0 = Instant::now();
    assert!(pa.query("*IDN?").await.starts_with("YOKOGAWA"));
    assert!(t0.elapsed() >= Duration::from_millis(250), "answered late");

    let mut ac = connect(b.ac_source).await;
    assert!(ac.query("*IDN?").await.starts_with("Chroma"));
    ac.send(":OUTP ON").await;
    // The second request was the last: the connection is closed, no reply comes.
    let _ = ac.io.get_mut().write_all(b"*IDN?\n").await;
    let r = ac.read_raw(REPLY).await.expect("closed, not hanging");
    assert_eq!(r, None);
    assert!(b.plant.output_on(), "requests before the drop were handled");
    // A new connection works again (and shares the instrument state).
    let mut ac2 = connect(b.ac_source).await;
    assert_eq!(ac2.query(":OUTP?").await, "ON");

    let mut sp = connect(b.sphere).await;
    sp.send("*IDN?").await;
    assert!(
        sp.read_raw(Duration::from_millis(500)).await.is_err(),
        "client times out"
    );

    let mut lg = connect(b.logger).await;
    lg.send("MEAS:TEMP? TC,K,(@101)").await;
    let raw = lg.read_raw(REPLY).await.expect("reply").expect("open");
    assert!(std::str::from_utf8(&raw).is_err(), "{raw:?}");
    assert!(String::from_utf8_lossy(&raw).trim().parse::<f64>().is_err());
    b.shutdown().await;
}

#[tokio::test]
async fn overlong_line_is_discarded() {
    let b = start_default().await;
    let mut pa = connect(b.power_analyzer).await;
    let junk = "A".repeat(100_000);
    pa.send(&junk).await;
    assert_eq!(pa.query("*IDN?").await, "YOKOGAWA,WT310E,C2SIM0001,F1.03");
    assert_eq!(pa.query(":STAT:ERR?").await, "0,\"No error\"");
    b.shutdown().await;
}

#[tokio::test]
async fn bench_refuses_non_loopback_and_frees_ports_on_shutdown() {
    let cfg = SimBenchConfig {
        host: "192.0.2.1".parse().expect("ip"),
        ..SimBenchConfig::ephemeral()
    };
    assert!(bench::start(cfg).await.is_err());
    let b = start_default().await;
    let addr = b.power_analyzer;
    let mut pa = connect(addr).await;
    b.shutdown().await;
    // The connection is closed with the bench, and the port is free again.
    let _ = pa.io.get_mut().write_all(b"*IDN?\n").await;
    assert_eq!(pa.read_raw(REPLY).await.expect("not hanging"), None);
    let again = start(SimBenchConfig {
        power_analyzer_port: addr.port(),
        ..SimBenchConfig::ephemeral()
    })
    .await;
    assert_eq!(again.power_analyzer, addr);
}

async fn pty_query(path: &Path, cmd: &str) -> String {
    let port = tokio_serial::new(path.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open pty by path");
    let mut c = Client {
        io: BufReader::new(port),
    };
    c.query(cmd).await
}

#[tokio::test]
async fn instruments_on_pseudo_terminals() {
    let b = start(SimBenchConfig {
        pty: true,
        plant: quick_plant(),
        ..SimBenchConfig::ephemeral()
    })
    .await;
    let ptys = b.ptys.clone().expect("pty paths");
    assert!(ptys.power_analyzer.exists());
    // Raw mode, no echo: the first line back is the reply, not our command.
    assert_eq!(
        pty_query(&ptys.power_analyzer, "*IDN?").await,
        "YOKOGAWA,WT310E,C2SIM0001,F1.03"
    );
    // Closing and reopening the port works (the sim keeps the slave end alive).
    assert_eq!(
        pty_query(&ptys.power_analyzer, ":STAT:ERR?").await,
        "0,\"No error\""
    );
    // The pty shares the instrument with TCP clients.
    pty_query(&ptys.ac_source, "*IDN?").await;
    let mut ac = connect(b.ac_source).await;
    ac.send(":SOUR:VOLT:AC 230;:OUTP ON").await;
    assert_eq!(pty_query(&ptys.ac_source, ":OUTP?").await, "ON");
    b.shutdown().await;
}

#[tokio::test]
async fn open_pty_serves_a_stream() {
    let (master, path) = open_pty().expect("open_pty");
    let plant = labgate::sim::plant::Plant::new(quick_plant());
    let logger = labgate::sim::logger::Logger::new(plant, Default::default());
    let server = tokio::spawn(serve_stream(master, logger, Faults::default()));
    // Give the client a moment to be late: the master must not fail while nobody has the port open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!server.is_finished());
    let reply = pty_query(&path, "MEAS:TEMP? TC,K,(@104)").await;
    assert_eq!(reply, "+9.90000000E+37");
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// The shipped driver files against the simulators.

fn load_driver(name: &str) -> DriverFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str::<DriverFile>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_query(cmd: &str) -> bool {
    cmd.split_whitespace()
        .next()
        .is_some_and(|h| h.contains('?'))
}

/// Fill `{arg}` placeholders with a valid value: the default, else the minimum, else ON.
fn fill_args(template: &str, action: &labgate::driver::schema::Action) -> String {
    let mut out = template.to_string();
    for (name, arg) in &action.args {
        let value = if let Some(d) = &arg.default {
            d.to_string()
        } else if let Some(min) = arg.min {
            format!("{min}")
        } else if let Some(c) = arg.choices.first() {
            c.clone()
        } else {
            arg.true_text.clone().unwrap_or_else(|| "ON".to_string())
        };
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!out.contains('{'), "unfilled template {template:?}");
    out
}

/// Every SCPI command the driver uses, in the order a session would send them.
fn driver_commands(d: &DriverFile) -> Vec<String> {
    let mut cmds = Vec::new();
    if let Some(q) = d.identity.as_ref().and_then(|i| i.query.clone()) {
        cmds.push(q);
    }
    cmds.extend(d.init.iter().cloned());
    for m in d.measurements.values() {
        cmds.extend(m.start.iter().cloned());
        match &m.wait {
            Wait::Opc(q) => cmds.push(q.clone()),
            Wait::Poll { query, .. } => cmds.push(query.clone()),
            Wait::Delay(_) => {}
        }
        for name in &m.fetch {
            let q = d
                .quantities
                .get(name)
                .and_then(|q| q.query.clone())
                .or_else(|| d.blocks.get(name).map(|b| b.query.clone()))
                .unwrap_or_else(|| panic!("measurement fetches unknown {name}"));
            cmds.push(q);
        }
    }
    cmds.extend(d.quantities.values().filter_map(|q| q.query.clone()));
    cmds.extend(d.blocks.values().map(|b| b.query.clone()));
    for a in d.actions.values() {
        cmds.extend(a.commands.iter().map(|c| fill_args(c, a)));
    }
    cmds
}

async fn walk_driver(file: &str, addr: SocketAddr) {
    let d = load_driver(file);
    let scpi = d.scpi.clone().expect("scpi settings");
    let err_q = scpi.error_query.clone().expect("error query");
    let mut c = connect(addr).await;
    if let Some(id) = &d.identity {
        let reply = c.query(id.query.as_deref().expect("identity query")).await;
        for s in &id.contains {
            assert!(
                reply.to_uppercase().contains(&s.to_uppercase()),
                "{file}: {reply}"
            );
        }
    }
    let cmds = driver_commands(&d);
    assert!(cmds.len() > 3, "{file}");
    for cmd in cmds {
        if is_query(&cmd) {
            let reply = c.query(&cmd).await;
            assert!(!reply.is_empty(), "{file}: {cmd} -> empty");
        } else {
            c.send(&cmd).await;
        }
        let e = c.query(&err_q).await;
        assert!(
            e.starts_with("0,") || e.starts_with("+0,"),
            "{file}: {cmd:?} -> {e}"
        );
    }
}

#[tokio::test]
async fn driver_files_parse_and_every_command_is_accepted() {
    let b = start_default().await;
    // Light the lamp so readings are numbers, then walk each driver against its simulator.
    b.plant.set_voltage(230.0);
    b.plant.set_output(true);
    walk_driver("yokogawa-wt310e.toml", b.power_analyzer).await;
    walk_driver("chroma-61500.toml", b.ac_source).await;
    walk_driver("keysight-34970a.toml", b.logger).await;
    walk_driver("labgate-sim-sphere.toml", b.sphere).await;

    let wt = load_driver("yokogawa-wt310e.toml");
    assert_eq!(wt.driver.name, "yokogawa-wt310e");
    assert_eq!(wt.blocks["normal"].fields.len(), 6);
    let sphere = load_driver("labgate-sim-sphere.toml");
    assert_eq!(sphere.quantities["spd"].unit, "W/nm");
    assert!(sphere.measurements.contains_key("spectrum"));
    let logger = load_driver("keysight-34970a.toml");
    let marker = &logger.scpi.as_ref().expect("scpi").invalid[0];
    assert_eq!(marker.value, Some(9.9e37));
    b.shutdown().await;
}
