//! Benchmarks the broker API against the raw clients it wraps, on the same broker, in the same
//! run: each round runs the raw side then ours (interleaved, so drift hits both), and the table
//! reports the median rate of each side over the rounds, their ratio and its spread.
//!
//! ```text
//! cargo run --release -p broker-bench -- --rounds 5 memory
//! cargo run --release -p broker-bench -- --json target/bench.json all
//! ```

mod memory;
mod report;

use clap::Parser;

use report::{Report, Scenario};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the broker API against the raw clients, as ratios")]
struct Args {
    /// Interleaved rounds per scenario (raw, ours, raw, ours, ...); the median is reported.
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
    /// Run one side only, without ratios (for profilers: `--profile ours`).
    #[arg(long, value_parser = ["raw", "ours"])]
    profile: Option<String>,
    /// Scenario groups to run: memory, all.
    #[arg(default_values_t = ["memory".to_owned()])]
    groups: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut scenarios: Vec<Box<dyn Scenario>> = Vec::new();
    for group in &args.groups {
        match group.as_str() {
            "memory" | "all" => scenarios.extend(memory::scenarios(args.messages)),
            other => anyhow::bail!("unknown scenario group {other:?}: expected memory or all"),
        }
    }
    if let Some(only) = &args.only {
        scenarios.retain(|s| s.name().contains(only.as_str()));
    }
    if let Some(side) = &args.profile {
        for scenario in &scenarios {
            let sample = runtime.block_on(async {
                if side == "raw" {
                    scenario.raw().await
                } else {
                    scenario.ours().await
                }
            })?;
            println!("{} ({side}): {:.0} msg/s", scenario.name(), sample.rate());
        }
        return Ok(());
    }
    let mut report = Report::new(machine_description());
    for scenario in &scenarios {
        eprintln!("running {} ({} rounds)", scenario.name(), args.rounds);
        let result = runtime.block_on(report::run(scenario.as_ref(), args.rounds))?;
        report.push(result);
    }
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

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
    format!("{cpus} cores, {model}")
}
