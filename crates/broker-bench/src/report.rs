//! Rounds, medians, ratios and their presentation.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

/// One side of one round: how many messages went through in how long.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Messages that completed the scenario (published, or published and received).
    pub messages: usize,
    /// Bytes of payload they carried.
    pub bytes: usize,
    /// Wall time of the round.
    pub elapsed: Duration,
}

impl Sample {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// A benchmark with a raw side and our side, measured alike.
pub trait Scenario {
    /// A short name, e.g. `memory 1->1 100 B`.
    fn name(&self) -> String;
    /// What the raw side is.
    fn raw_side(&self) -> &'static str;
    /// The ratio ours/raw this scenario is held to.
    fn goal(&self) -> f64;
    /// One round of the raw client.
    fn raw(&self) -> BoxFuture<'_, anyhow::Result<Sample>>;
    /// One round through the library.
    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>>;
}

/// The medians of one scenario.
#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    name: String,
    raw_side: &'static str,
    rounds: usize,
    raw_rate: f64,
    our_rate: f64,
    our_mb_per_s: f64,
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
    goal: f64,
}

/// Runs `rounds` interleaved rounds (after one warm-up of each side) and takes medians.
pub async fn run(scenario: &dyn Scenario, rounds: usize) -> anyhow::Result<ScenarioResult> {
    scenario.raw().await?;
    scenario.ours().await?;
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..rounds.max(1) {
        raw.push(scenario.raw().await?);
        ours.push(scenario.ours().await?);
    }
    let ratios: Vec<f64> = raw
        .iter()
        .zip(&ours)
        .map(|(r, o)| o.rate() / r.rate())
        .collect();
    let our_rate = median(ours.iter().map(Sample::rate).collect());
    let bytes_per_message = ours[0].bytes as f64 / ours[0].messages.max(1) as f64;
    Ok(ScenarioResult {
        name: scenario.name(),
        raw_side: scenario.raw_side(),
        rounds: rounds.max(1),
        raw_rate: median(raw.iter().map(Sample::rate).collect()),
        our_rate,
        our_mb_per_s: our_rate * bytes_per_message / 1e6,
        ratio: median(ratios.clone()),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(0.0, f64::max),
        goal: scenario.goal(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Every scenario's result, and where they were measured.
#[derive(Debug, Serialize)]
pub struct Report {
    machine: String,
    scenarios: Vec<ScenarioResult>,
}

impl Report {
    /// An empty report for `machine`.
    pub fn new(machine: String) -> Self {
        Report {
            machine,
            scenarios: Vec::new(),
        }
    }

    /// Adds a result.
    pub fn push(&mut self, result: ScenarioResult) {
        self.scenarios.push(result);
    }

    /// A Markdown table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "machine: {}\n\n| scenario | raw side | raw msg/s | ours msg/s | ours MB/s | ours/raw (min..max) | goal |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.machine
        );
        for s in &self.scenarios {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.1} | {:.2} ({:.2}..{:.2}) {} | {:.2} |\n",
                s.name,
                s.raw_side,
                s.raw_rate,
                s.our_rate,
                s.our_mb_per_s,
                s.ratio,
                s.ratio_min,
                s.ratio_max,
                if s.ratio >= s.goal { "ok" } else { "BELOW" },
                s.goal
            ));
        }
        out
    }
}
