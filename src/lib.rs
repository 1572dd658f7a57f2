//! labgate: an instrument gateway for product-quality test benches.
//!
//! Layers, from the wire up (see ARCHITECTURE.md):
//! - [`link`]: one task per physical connection (TCP or serial) that serializes every request.
//! - [`scpi`] and [`modbus`]: the two protocol engines a link speaks.
//! - [`vxi11`] and [`hislip`]: message-based LAN instrument protocols under a SCPI link.
//! - [`driver`]: instrument models described in TOML files.
//! - [`instrument`]: a driver bound to a link; reads quantities and runs actions.
//! - [`config`]: the bench description; [`diag`] reports problems with file:line:col.
//! - [`sim`]: built-in simulated instruments for demos and tests.
//! - [`daemon`], [`api`], [`metrics`]: `labgate serve`, its HTTP API and `/metrics`;
//!   [`runs`]: the runs the daemon starts.
//! - [`cli`]: the `labgate` command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod driver;
pub mod gateway;
pub mod hislip;
pub mod instrument;
pub mod link;
pub mod metrics;
pub mod modbus;
pub mod poll;
pub mod reading;
pub mod recipe;
pub mod runs;
pub mod scpi;
pub mod sim;
pub mod store;
pub mod vxi11;
