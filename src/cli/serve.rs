//! `labgate serve`: run the daemon (see [`crate::daemon`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::daemon::{self, ServeOptions};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API (default: api.listen from the config, else 127.0.0.1:8470).
    #[arg(long, env = "LABGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log format; under systemd (JOURNAL_STREAM set) `text` drops timestamps and colours.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the daemon's subscriber. Called before the CLI's own, whose `try_init` then does
/// nothing. The CLI's default filter (`warn`) is too quiet for a daemon's journal.
pub fn init_logging(args: &ServeArgs, filter: &str) {
    let filter = if filter == "warn" {
        "warn,labgate=info"
    } else {
        filter
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,labgate=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // journald stamps every line itself and shows no colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = match (args.log_format, journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        // Colours only for a person at a terminal, not in a file or a pipe.
        (LogFormat::Text, false) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

pub async fn run(config: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    daemon::run(ServeOptions {
        config,
        listen: args.listen,
    })
    .await
}
