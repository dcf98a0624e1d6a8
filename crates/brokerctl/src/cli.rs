//! The command line: global options and one struct per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use broker::Kind;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Talk to any message broker the `broker` crate speaks — in-memory, Kafka, RabbitMQ or
/// Pub/Sub — with the same configuration as the services: `broker.toml` and `BROKER__*`.
#[derive(Debug, Parser)]
#[command(name = "brokerctl", version, propagate_version = true)]
pub struct Cli {
    /// The configuration file (default: $BROKER_CONFIG, else ./broker.toml if present).
    /// `BROKER__*` variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Which broker to use, overriding `kind` from the configuration.
    #[arg(long, global = true, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<Kind>,

    /// More log output on stderr: -v warnings, -vv info, -vvv debug (or set RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages: one per argument, or one per line of --file or stdin.
    Publish(PublishArgs),
    /// Consume messages as a group, at least once, and print them.
    Consume(ConsumeArgs),
    /// Create, list or delete topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Connect, then print the broker kind, endpoint and capabilities.
    Check,
    /// Publish and consume many messages; print throughput and end-to-end latency.
    Bench(BenchArgs),
}

/// `brokerctl publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic to publish to.
    pub topic: String,
    /// The key of every message (same key: handled in publish order).
    #[arg(long, short)]
    pub key: Option<String>,
    /// A header on every message, as NAME=VALUE; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The content type of every message (default: application/octet-stream).
    #[arg(long, value_name = "MIME")]
    pub content_type: Option<String>,
    /// Read messages from this file, one per line (`-` for stdin).
    #[arg(long, short, value_name = "FILE", conflicts_with = "messages")]
    pub file: Option<PathBuf>,
    /// How confirmations are printed.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The messages, one per argument. Without them and without --file, lines of stdin.
    #[arg(value_name = "MESSAGE")]
    pub messages: Vec<String>,
}

/// `brokerctl consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// The consumer group (every group gets every message; members of a group share them).
    #[arg(long, short)]
    pub group: String,
    /// Stop after this many messages (default: run until Ctrl-C or --timeout).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Where a new group starts (default: `subscriber.start_from` of the configuration).
    #[arg(long, value_enum)]
    pub from: Option<StartAt>,
    /// How messages are printed: `text` for people, `json` for one object per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Give up after this long, e.g. `30s`, `2m` (with --count: a failure when fewer arrived).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `brokerctl topics ...`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic and its groups (nothing happens to those that exist).
    Create(CreateTopicArgs),
    /// List the topics the broker holds.
    List,
    /// Delete a topic and its groups.
    Delete {
        /// The topic to delete.
        name: String,
    },
}

/// `brokerctl topics create`.
#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    /// The topic name.
    pub name: String,
    /// Partitions, on brokers that have them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// A group to create with the topic, so that it keeps every message from now on; repeat
    /// for more.
    #[arg(long = "group", short, value_name = "GROUP")]
    pub groups: Vec<String>,
}

/// The most messages `brokerctl bench` sends.
const MAX_BENCH_MESSAGES: u64 = 1_000_000_000;

/// The largest payload `brokerctl bench` builds.
const MAX_BENCH_PAYLOAD: u64 = 64 * 1024 * 1024;

/// `brokerctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many messages to publish (at most a billion: one bit each tracks their arrival).
    #[arg(long, short = 'n', default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_MESSAGES))]
    pub messages: u64,
    /// The payload size in bytes (at most 64 MiB; the broker's own limit may be lower).
    #[arg(
        long,
        short,
        default_value_t = 100,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_BENCH_PAYLOAD)
    )]
    pub size: usize,
    /// How many publishers send at once (each keeps many messages in flight).
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub publishers: u32,
    /// How many messages each publisher keeps in flight.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub in_flight: u32,
    /// The topic (default: a fresh one per run, deleted afterwards where the broker can). On
    /// a topic of your own the group stays behind, and a new one reads the topic's backlog.
    #[arg(long, short)]
    pub topic: Option<String>,
    /// The consumer group.
    #[arg(long, short, default_value = "brokerctl-bench")]
    pub group: String,
    /// Handler calls at once in the consumer (default: `subscriber.concurrency`).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: Option<usize>,
    /// Give up when not every message was published and arrived after this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    /// From the earliest message the broker holds for the group.
    Earliest,
    /// Only messages published from now on.
    Latest,
}

fn parse_kind(value: &str) -> Result<Kind, String> {
    Kind::try_from(value.to_owned())
}

fn parse_header(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "expected NAME=VALUE with a non-empty name, got {value:?}"
        )),
    }
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}: a duration is written like \"250ms\", \"30s\" or \"5m\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn headers_and_durations_parse() {
        assert_eq!(
            parse_header("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=x").is_err());
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_bench_concurrency_of_zero_is_refused_as_an_argument() {
        use clap::Parser;
        let err = Cli::try_parse_from(["brokerctl", "bench", "--concurrency", "0"]).unwrap_err();
        assert!(err.to_string().contains("--concurrency"), "{err}");
        assert!(Cli::try_parse_from(["brokerctl", "bench", "--concurrency", "2"]).is_ok());
    }
}
