//! `labgate check` on the message-based and device-server link kinds (usbtmc, prologix,
//! prologix_serial, vxi11, hislip, tcp + baud): every misconfiguration is reported with
//! file:line:col before anything connects, and the defaults are what docs/links.md says.

use labgate::config::load_with_drivers;
use labgate::config::schema::Transport;
use labgate::diag::Source;
use labgate::driver::{DriverSet, load_sources};

fn drivers() -> DriverSet {
    load_sources(&[
        Source::new(
            "s.toml",
            "[driver]\nname = \"scpi-dev\"\nprotocol = \"scpi\"\n[quantities.volt]\nquery = \"V?\"\n",
        ),
        Source::new(
            "m.toml",
            "[driver]\nname = \"mb-dev\"\nprotocol = \"modbus\"\n[modbus]\naddress_base = 0\n\
             [quantities.temp]\ntable = \"holding\"\naddress = 1\ntype = \"i16\"\n",
        ),
    ])
    .expect("test drivers are valid")
}

fn errors(text: &str) -> String {
    match load_with_drivers(&Source::new("c.toml", text), drivers()) {
        Ok(b) => b.warnings.to_string(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn every_kind_loads_with_its_defaults() {
    let text = "\
[links.usb]
protocol = \"scpi\"
kind = \"usbtmc\"
device = \"/dev/usbtmc0\"
[links.gpib]
protocol = \"scpi\"
kind = \"prologix\"
host = \"gpib-adapter.lab\"
[links.gpib_usb]
protocol = \"scpi\"
kind = \"prologix_serial\"
device = \"/dev/ttyUSB3\"
[links.vx]
protocol = \"scpi\"
kind = \"vxi11\"
host = \"10.0.0.5\"
[links.hs]
protocol = \"scpi\"
kind = \"hislip\"
host = \"10.0.0.6\"
[links.rs485]
protocol = \"modbus-rtu\"
kind = \"tcp\"
host = \"10.0.0.7\"
port = 4001
baud = 9600
[instruments.a]
driver = \"scpi-dev\"
link = \"usb\"
[instruments.b]
driver = \"scpi-dev\"
link = \"gpib\"
address = 5
[instruments.c]
driver = \"scpi-dev\"
link = \"gpib\"
address = 22
[instruments.d]
driver = \"scpi-dev\"
link = \"gpib_usb\"
address = 0
[instruments.e]
driver = \"scpi-dev\"
link = \"vx\"
[instruments.f]
driver = \"scpi-dev\"
link = \"hs\"
[instruments.g]
driver = \"mb-dev\"
link = \"rs485\"
unit = 2
";
    let bench = load_with_drivers(&Source::new("c.toml", text), drivers())
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        bench.links["gpib"].transport,
        Transport::Prologix {
            host: "gpib-adapter.lab".into(),
            port: 1234
        }
    );
    assert_eq!(
        bench.links["gpib_usb"].transport,
        Transport::PrologixSerial {
            device: "/dev/ttyUSB3".into(),
            baud: 115_200
        }
    );
    assert_eq!(
        bench.links["vx"].transport,
        Transport::Vxi11 {
            host: "10.0.0.5".into(),
            device: "inst0".into(),
            portmap_port: 111
        }
    );
    assert_eq!(
        bench.links["hs"].transport,
        Transport::Hislip {
            host: "10.0.0.6".into(),
            port: 4880,
            device: "hislip0".into()
        }
    );
    assert_eq!(
        bench.links["rs485"].transport,
        Transport::SerialServer {
            host: "10.0.0.7".into(),
            port: 4001,
            baud: 9600
        }
    );
    assert_eq!(bench.instruments["c"].config.address, Some(22));
}

#[test]
fn misconfigured_links_and_addresses_are_reported_at_their_place() {
    let text = "\
[links.usb]
protocol = \"modbus-rtu\"
kind = \"usbtmc\"
device = \"\"
[links.gpib]
protocol = \"scpi\"
kind = \"prologix\"
host = \"adapter\"
baud = 9600
[links.lan]
protocol = \"scpi\"
kind = \"tcp\"
host = \"h\"
port = 5025
[links.mb]
protocol = \"modbus-tcp\"
kind = \"tcp\"
host = \"h\"
port = 502
baud = 19200
[instruments.a]
driver = \"mb-dev\"
link = \"usb\"
unit = 1
[instruments.b]
driver = \"scpi-dev\"
link = \"gpib\"
[instruments.c]
driver = \"scpi-dev\"
link = \"gpib\"
address = 31
[instruments.d]
driver = \"scpi-dev\"
link = \"gpib\"
address = 7
[instruments.e]
driver = \"scpi-dev\"
link = \"gpib\"
address = 7
[instruments.f]
driver = \"scpi-dev\"
link = \"lan\"
address = 3
[instruments.g]
driver = \"mb-dev\"
link = \"mb\"
unit = 1
";
    let got = errors(text);
    let expect = "\
c.toml:2:12: links.usb.protocol: a usbtmc link carries scpi messages only; modbus-rtu needs kind \"tcp\" or \"serial\"
c.toml:4:10: links.usb.device: device must not be empty
c.toml:9:1: links.gpib.baud: unknown key `baud` (known: protocol, kind, timeout, connect_timeout, backoff_initial, backoff_max, inter_frame_delay, host, port)
c.toml:20:8: links.mb.baud: baud is for a serial device server; modbus-tcp has no serial line (use modbus-rtu for RTU frames over TCP)
c.toml:25:1: instruments.b: missing key `address` (the instrument's GPIB address, 0..=30, on prologix link \"gpib\")
c.toml:31:11: instruments.c.address: GPIB address 31 is out of range (0..=30)
c.toml:39:11: instruments.e.address: GPIB address 7 on link \"gpib\" is already used by instrument \"d\"
c.toml:43:11: instruments.f.address: address is only for instruments on a prologix (GPIB) link; link \"lan\" is tcp";
    if std::env::var_os("PRINT").is_some() {
        println!("@@BEGIN\n{got}\n@@END");
        return;
    }
    assert_eq!(got, expect);
}

#[test]
fn a_prologix_link_carries_several_scpi_instruments_a_plain_one_does_not() {
    let shared = "\
[links.lan]
protocol = \"scpi\"
kind = \"tcp\"
host = \"h\"
port = 5025
[instruments.a]
driver = \"scpi-dev\"
link = \"lan\"
[instruments.b]
driver = \"scpi-dev\"
link = \"lan\"
";
    assert!(
        errors(shared).contains("already carries instrument"),
        "{}",
        errors(shared)
    );
    let gpib = "\
[links.lan]
protocol = \"scpi\"
kind = \"prologix\"
host = \"h\"
[instruments.a]
driver = \"scpi-dev\"
link = \"lan\"
address = 1
[instruments.b]
driver = \"scpi-dev\"
link = \"lan\"
address = 2
";
    assert_eq!(errors(gpib), "", "{gpib}");
}
