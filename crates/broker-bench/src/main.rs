//! Benchmarks the broker API against the raw clients it wraps, on the same broker, in the same
//! run: each round runs the raw side and ours (interleaved, so drift hits both; every other
//! round ours first, so that neither always inherits the other's leftovers), and the table
//! reports the median rate of each side over the rounds and their ratio, each with its spread
//! (min..max), the client CPU per message, and publish-to-handler latency where it applies.
//! The `footprint` group measures a subscription's peak memory over a large backlog with a
//! slow handler.
//!
//! ```text
//! scripts/brokers.sh start all
//! cargo run --release -p broker-bench -- all
//! cargo run --release -p broker-bench -- --rounds 9 --json target/bench.json kafka rabbitmq
//! cargo run --release -p broker-bench -- --profile ours --only "kafka publish 100" kafka
//! ```
//!
//! Brokers are found through `BROKER_TEST_KAFKA`, `BROKER_TEST_RABBITMQ` and
//! `BROKER_TEST_PUBSUB`, with the local defaults of `scripts/brokers.sh`.

mod common;
mod kafka;
mod memory;
mod peak;
mod pubsub;
mod rabbitmq;
mod report;

use std::sync::Arc;

use clap::Parser;

use report::{Report, Scenario, Side};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the broker API against the raw clients, as ratios")]
struct Args {
    /// Interleaved rounds per scenario (raw then ours, ours then raw, ...); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Messages per round; each scenario has its own default.
    #[arg(long)]
    messages: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Only run scenarios whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Run one side once, without ratios (for profilers: `--profile ours`).
    #[arg(long, value_parser = ["raw", "ours", "bare"])]
    profile: Option<String>,
    /// Internal: measure one footprint in this process (run by the `footprint` group).
    #[arg(long, hide = true)]
    footprint_child: Option<String>,
    /// Scenario groups to run: memory, kafka, rabbitmq, pubsub, footprint, all.
    #[arg(default_values_t = ["memory".to_owned()])]
    groups: Vec<String>,
}

const GROUPS: [&str; 5] = ["memory", "kafka", "rabbitmq", "pubsub", "footprint"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(spec) = &args.footprint_child {
        return runtime.block_on(peak::child(spec));
    }
    let mut groups: Vec<&str> = Vec::new();
    for group in &args.groups {
        match group.as_str() {
            "all" => groups.extend(GROUPS),
            known if GROUPS.contains(&known) => groups.push(known),
            other => anyhow::bail!(
                "unknown scenario group {other:?}: expected one of {} or all",
                GROUPS.join(", ")
            ),
        }
    }
    groups.dedup();
    let mut report = Report::new(machine_description());
    let mut scenarios: Vec<Box<dyn Scenario>> = Vec::new();
    for group in &groups {
        eprintln!("connecting {group}");
        let more = match *group {
            "memory" => memory::scenarios(args.messages),
            "kafka" => runtime.block_on(kafka::scenarios(args.messages))?,
            "rabbitmq" => runtime.block_on(rabbitmq::scenarios(args.messages))?,
            "pubsub" => runtime.block_on(pubsub::scenarios(args.messages))?,
            _ => Vec::new(),
        };
        scenarios.extend(more);
    }
    if let Some(only) = &args.only {
        scenarios.retain(|s| s.name().contains(only.as_str()));
    }
    // Rounds run as tasks on the runtime's workers, as a service's code would.
    let scenarios: Vec<Arc<dyn Scenario>> = scenarios.into_iter().map(Arc::from).collect();
    if let Some(side) = &args.profile {
        let side = match side.as_str() {
            "raw" => Side::Raw,
            "bare" => Side::Bare,
            _ => Side::Ours,
        };
        for scenario in &scenarios {
            let task = scenario.clone();
            let run = async move { report::run_side(&*task, side).await };
            if let Some(sample) = runtime.block_on(runtime.spawn(run))?? {
                println!("{} ({side:?}): {:.0} msg/s", scenario.name(), sample.rate());
            }
        }
        return Ok(());
    }
    for scenario in &scenarios {
        eprintln!("running {} ({} rounds)", scenario.name(), args.rounds);
        let task = scenario.clone();
        let rounds = args.rounds;
        let run = async move { report::run(&*task, rounds).await };
        // One scenario failing (a broker gone) does not lose the others' figures.
        match runtime.block_on(runtime.spawn(run))? {
            Ok(result) => report.push(result),
            Err(error) => {
                eprintln!("{} failed: {error:#}", scenario.name());
                report.push_failure(scenario.name(), format!("{error:#}"));
            }
        }
    }
    if groups.contains(&"footprint") {
        match runtime.block_on(peak::run()) {
            Ok(footprints) => footprints
                .into_iter()
                .for_each(|footprint| report.push_footprint(footprint)),
            Err(error) => {
                eprintln!("footprint failed: {error:#}");
                report.push_failure("footprint".to_owned(), format!("{error:#}"));
            }
        }
    }
    report.note_machine(&format!("{} at end", load_average()));
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Cores, CPU model and the load when the run started (the machine may be shared).
fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} cores, {model}, {} at start", load_average())
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    format!("load average {load}")
}
