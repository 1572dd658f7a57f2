//! Background polls: read configured quantities of an instrument at a fixed interval and keep
//! the latest readings where the API, metrics and the CLI can see them.
//!
//! Polls go through the same link queue as everything else, so a recipe's requests and a poll's
//! requests interleave at request boundaries and never inside one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::instrument::Instrument;
use crate::reading::Reading;

/// Latest reading of each (instrument, quantity), plus the last poll error per instrument.
#[derive(Debug, Default, Clone)]
pub struct Latest {
    inner: Arc<RwLock<LatestInner>>,
}

#[derive(Debug, Default)]
struct LatestInner {
    readings: BTreeMap<String, BTreeMap<String, Reading>>,
    errors: BTreeMap<String, (SystemTime, String)>,
}

impl Latest {
    pub fn record(&self, instrument: &str, readings: &[Reading]) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let map = g.readings.entry(instrument.to_string()).or_default();
        for r in readings {
            map.insert(r.quantity.clone(), r.clone());
        }
        g.errors.remove(instrument);
    }

    pub fn record_error(&self, instrument: &str, error: String) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.errors
            .insert(instrument.to_string(), (SystemTime::now(), error));
    }

    /// Latest readings of one instrument, by quantity.
    pub fn of(&self, instrument: &str) -> BTreeMap<String, Reading> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.readings.get(instrument).cloned().unwrap_or_default()
    }

    /// Visit every latest reading under one read lock, copying nothing (for /metrics).
    pub fn visit(&self, mut f: impl FnMut(&str, &Reading)) {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        for (instrument, readings) in &g.readings {
            for r in readings.values() {
                f(instrument, r);
            }
        }
    }

    pub fn last_error(&self, instrument: &str) -> Option<(SystemTime, String)> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.errors.get(instrument).cloned()
    }

    /// Number of (instrument, quantity) readings held.
    pub fn len(&self) -> usize {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.readings.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Start one poll task; it ends when the returned handle is aborted or dropped with the runtime.
pub fn spawn(
    instrument: Instrument,
    quantities: Vec<String>,
    interval: Duration,
    latest: Latest,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        // A slow instrument must not cause a burst of catch-up polls.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let names: Vec<&str> = quantities.iter().map(|s| s.as_str()).collect();
        loop {
            tick.tick().await;
            let started = std::time::Instant::now();
            let result = instrument.read(&names).await;
            let outcome = crate::metrics::outcome(&result.as_ref().map(|_| ()));
            crate::metrics::observe_request(instrument.id(), outcome, started.elapsed());
            match result {
                Ok(readings) => latest.record(instrument.id(), &readings),
                Err(e) => {
                    tracing::debug!(instrument = %instrument.id(), error = %e, "poll failed");
                    latest.record_error(instrument.id(), e.to_string());
                }
            }
        }
    })
}
