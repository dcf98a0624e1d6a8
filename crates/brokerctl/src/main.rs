//! `brokerctl`: publish, consume, manage topics, check the connection and benchmark, on any
//! broker the `broker` crate speaks, with the same `broker.toml` and `BROKER__*` configuration
//! as the services.
//!
//! Errors are one line on stderr, `error: ...` with the whole cause chain, and exit code 1;
//! malformed arguments exit with code 2.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // A stdin reader may still be blocked on a read nobody waits for.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: `RUST_LOG` when set, else nothing unless `-v` asks for more.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "off",
        1 => "warn",
        2 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
