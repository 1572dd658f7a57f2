//! Turns a validated bench description into running links and instruments.

use std::collections::BTreeMap;

use crate::config::Bench;
use crate::config::schema::LinkProtocol;
use crate::instrument::{self, Instrument};
use crate::link::{self, LinkHandle, LinkSpec};

/// The running links and the instruments bound to them.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub links: BTreeMap<String, LinkHandle>,
    pub instruments: BTreeMap<String, Instrument>,
}

impl Gateway {
    /// Start every link of the bench (each connects in the background) and bind the instruments.
    /// Must run inside a tokio runtime.
    pub fn start(bench: &Bench) -> Gateway {
        Self::start_only(bench, |_| true)
    }

    /// Start only the links that carry the instruments `wanted` accepts (the CLI's one-shot
    /// commands should not dial every instrument of the bench).
    pub fn start_only(bench: &Bench, wanted: impl Fn(&str) -> bool) -> Gateway {
        let mut links = BTreeMap::new();
        let mut instruments = BTreeMap::new();
        for (name, cfg) in &bench.links {
            let users: Vec<_> = bench
                .instruments
                .values()
                .filter(|i| i.config.link == *name)
                .collect();
            if !users.iter().any(|i| wanted(&i.id)) {
                continue;
            }
            // A SCPI stream addresses exactly one instrument (config validation enforces it), so
            // that instrument's driver decides the framing, init and identity check.
            // On a shared bus (Prologix GPIB) each address has its own driver setup instead.
            let addressed = link::message::is_addressed_transport(&cfg.transport);
            let handle = if addressed {
                let setups = users
                    .iter()
                    .filter_map(|i| {
                        let a = i.config.address?;
                        Some((
                            a,
                            instrument::scpi_setup(&i.driver.file, i.config.skip_identity),
                        ))
                    })
                    .collect();
                link::spawn_addressed(LinkSpec::from_config(name, cfg), setups)
            } else {
                let setup = match (cfg.protocol, users.first()) {
                    (LinkProtocol::Scpi, Some(i)) => Some(instrument::scpi_setup(
                        &i.driver.file,
                        i.config.skip_identity,
                    )),
                    _ => None,
                };
                link::spawn(LinkSpec::from_config(name, cfg), setup)
            };
            for i in users {
                let h = match i.config.address {
                    Some(a) if addressed => handle.at_address(a),
                    _ => handle.clone(),
                };
                instruments.insert(
                    i.id.clone(),
                    Instrument::new(&i.id, i.driver.clone(), h, i.config.unit),
                );
            }
            links.insert(name.clone(), handle);
        }
        Gateway { links, instruments }
    }

    pub fn instrument(&self, id: &str) -> Option<&Instrument> {
        self.instruments.get(id)
    }
}
