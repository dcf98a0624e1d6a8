//! The subcommands, each in its own module, and what they share: loading the configuration
//! and connecting.

mod bench;
mod check;
mod consume;
mod publish;
mod topics;

use anyhow::Context as _;
use broker::BrokerConfig;

use crate::cli::{Cli, Command};

/// Runs the command line's subcommand, then closes the broker (flushing pending publishes).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    let kind = config.kind;
    let broker = broker::connect_with(config)
        .await
        .with_context(|| format!("cannot connect to {kind}"))?;
    let result = match cli.command {
        Command::Publish(args) => publish::run(&broker, args).await,
        Command::Consume(args) => consume::run(&broker, args).await,
        Command::Topics(command) => topics::run(&broker, command).await,
        Command::Check => check::run(&broker),
        Command::Bench(args) => bench::run(&broker, args).await,
    };
    let closed = broker.close().await.context("closing the broker");
    result.and(closed)
}

/// The configuration the services would read: `--config` (which must exist), else
/// `BROKER_CONFIG`, else `./broker.toml` when present; `BROKER__*` variables over it; then
/// `--kind` over everything.
fn load_config(cli: &Cli) -> anyhow::Result<BrokerConfig> {
    let mut config = match &cli.config {
        Some(path) => BrokerConfig::load_from(Some(path))?,
        None => BrokerConfig::load()?,
    };
    if let Some(kind) = cli.kind {
        config.kind = kind;
    }
    Ok(config)
}

/// Once a command listened for Ctrl-C, tokio keeps SIGINT from ending the process: called
/// when the command stops listening, so that a Ctrl-C while it cleans up and closes ends the
/// process at once (exit code 130).
fn exit_on_interrupt() {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}
