//! Rounds, medians, ratios and their presentation.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::common::cpu_time;

/// One side of one round: how many messages went through in how long.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Messages that completed the scenario (published, or published and received).
    pub messages: usize,
    /// Bytes of payload they carried.
    pub bytes: usize,
    /// Wall time of the round.
    pub elapsed: Duration,
    /// End-to-end latency (publish to handler), where the scenario measures it.
    pub latency: Option<Latency>,
    /// The client CPU (every thread of this process) used within `elapsed`, when the scenario
    /// measured it; otherwise the whole round's is counted.
    pub cpu: Option<Duration>,
}

impl Sample {
    /// A sample without latency.
    pub fn new(messages: usize, bytes: usize, elapsed: Duration) -> Self {
        Sample {
            messages,
            bytes,
            elapsed,
            latency: None,
            cpu: None,
        }
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Percentiles of one round's end-to-end latencies.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// The percentiles of `nanos` (reordered); `None` when empty.
    pub fn of(nanos: &mut [u64]) -> Option<Latency> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let at = |q: f64| {
            let index = ((nanos.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(nanos[index.min(nanos.len() - 1)])
        };
        Some(Latency {
            p50: at(0.50),
            p99: at(0.99),
        })
    }
}

/// A round's sample and the client CPU it used (every thread of this process).
struct Measured {
    sample: Sample,
    cpu: Duration,
}

/// A benchmark with a raw side and our side, measured alike.
pub trait Scenario: Send + Sync {
    /// A short name, e.g. `memory 1->1 100 B`.
    fn name(&self) -> String;
    /// What the raw side is.
    fn raw_side(&self) -> &'static str;
    /// The ratio ours/raw this scenario is held to.
    fn goal(&self) -> f64;
    /// One round of the raw client: with records equivalent to ours, or (`bare`) with the
    /// payload only, no id or content type.
    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>>;
    /// One round through the library.
    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>>;
    /// Whether bare raw records are a second baseline (on brokers; in memory there is nothing
    /// to leave out).
    fn has_bare(&self) -> bool {
        true
    }
}

/// Which side of a scenario to run alone (for profilers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The raw client with records equivalent to ours.
    Raw,
    /// The library.
    Ours,
    /// The raw client with bare records.
    Bare,
}

/// Runs one side of `scenario` once.
pub async fn run_side(scenario: &dyn Scenario, side: Side) -> anyhow::Result<Option<Sample>> {
    Ok(match side {
        Side::Raw => Some(scenario.raw(false).await?),
        Side::Ours => Some(scenario.ours().await?),
        Side::Bare if scenario.has_bare() => Some(scenario.raw(true).await?),
        Side::Bare => None,
    })
}

/// How often a failed round is tried again: the brokers are shared, and other programs' fault
/// tests drop connections and restart brokers now and then.
const ATTEMPTS: usize = 3;
/// How long one side of one round may take.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

async fn measured<'a>(
    mut round: impl FnMut() -> BoxFuture<'a, anyhow::Result<Sample>>,
) -> anyhow::Result<Measured> {
    let mut attempt = 1;
    loop {
        let before = cpu_time();
        let outcome = match tokio::time::timeout(ROUND_LIMIT, round()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!(
                "the round took longer than {ROUND_LIMIT:?}"
            )),
        };
        match outcome {
            Ok(sample) => {
                let cpu = sample
                    .cpu
                    .unwrap_or_else(|| cpu_time().saturating_sub(before));
                return Ok(Measured { sample, cpu });
            }
            Err(error) if attempt < ATTEMPTS => {
                eprintln!("  round failed, trying again: {error:#}");
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The medians of one scenario, each with its spread over the rounds.
#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    name: String,
    raw_side: &'static str,
    rounds: usize,
    raw_rate: Spread,
    our_rate: Spread,
    our_mb_per_s: f64,
    ratio: Spread,
    bare_rate: Option<Spread>,
    bare_ratio: Option<Spread>,
    raw_cpu_us_per_msg: f64,
    our_cpu_us_per_msg: f64,
    raw_p50_us: Option<f64>,
    raw_p99_us: Option<f64>,
    our_p50_us: Option<f64>,
    our_p99_us: Option<f64>,
    goal: f64,
}

impl ScenarioResult {
    /// Whether the median ratio reaches the goal.
    pub fn meets_goal(&self) -> bool {
        self.ratio.median >= self.goal
    }
}

/// The median of a figure over the rounds, and its smallest and largest value.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// The spread of `values` (zeros when there are none).
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: values.first().copied().unwrap_or_default(),
            max: values.last().copied().unwrap_or_default(),
        }
    }

    /// `0.86 (0.47..1.01)`.
    fn ratio(&self) -> String {
        format!("{:.2} ({:.2}..{:.2})", self.median, self.min, self.max)
    }

    /// `957 k (912..1011)`: a message rate, its extremes in the unit of the median.
    fn rate(&self) -> String {
        let (scale, unit, digits) = match self.median {
            m if m >= 1e6 => (1e6, " M", 2),
            m if m >= 1e5 => (1e3, " k", 0),
            m if m >= 1e4 => (1e3, " k", 1),
            _ => (1.0, "", 0),
        };
        format!(
            "{:.digits$}{unit} ({:.digits$}..{:.digits$})",
            self.median / scale,
            self.min / scale,
            self.max / scale,
        )
    }
}

/// Runs `rounds` interleaved rounds (after one warm-up of each side) and takes medians.
pub async fn run(scenario: &dyn Scenario, rounds: usize) -> anyhow::Result<ScenarioResult> {
    measured(|| scenario.raw(false)).await?;
    measured(|| scenario.ours()).await?;
    if scenario.has_bare() {
        measured(|| scenario.raw(true)).await?;
    }
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for round in 0..rounds.max(1) {
        // Every other round runs ours first: whatever a side leaves behind on the broker (a
        // topic being deleted, a log being flushed) weighs on both sides alike.
        let ours_first = round % 2 == 1;
        let (r, o) = if ours_first {
            let o = measured(|| scenario.ours()).await?;
            let r = measured(|| scenario.raw(false)).await?;
            (r, o)
        } else {
            let r = measured(|| scenario.raw(false)).await?;
            let o = measured(|| scenario.ours()).await?;
            (r, o)
        };
        let b = if scenario.has_bare() {
            Some(measured(|| scenario.raw(true)).await?)
        } else {
            None
        };
        eprintln!(
            "  round {}{}: raw {:.0} msg/s, ours {:.0} msg/s ({:.2}){}",
            round + 1,
            if ours_first { " (ours first)" } else { "" },
            r.sample.rate(),
            o.sample.rate(),
            o.sample.rate() / r.sample.rate(),
            b.as_ref().map_or(String::new(), |b| format!(
                ", bare raw {:.0} msg/s",
                b.sample.rate()
            )),
        );
        raw.push(r);
        ours.push(o);
        bare.extend(b);
    }
    let ratio = Spread::of(ratios_of(&ours, &raw));
    let bare_ratio = (!bare.is_empty()).then(|| Spread::of(ratios_of(&ours, &bare)));
    let our_rate = Spread::of(rates(&ours));
    let first = &ours[0].sample;
    let bytes_per_message = first.bytes as f64 / first.messages.max(1) as f64;
    let latency = |side: &[Measured], pick: fn(&Latency) -> Duration| {
        let values: Vec<f64> = side
            .iter()
            .filter_map(|m| m.sample.latency.as_ref())
            .map(|l| pick(l).as_secs_f64() * 1e6)
            .collect();
        (!values.is_empty()).then(|| Spread::of(values).median)
    };
    Ok(ScenarioResult {
        name: scenario.name(),
        raw_side: scenario.raw_side(),
        rounds: rounds.max(1),
        raw_rate: Spread::of(rates(&raw)),
        our_mb_per_s: our_rate.median * bytes_per_message / 1e6,
        our_rate,
        ratio,
        bare_rate: (!bare.is_empty()).then(|| Spread::of(rates(&bare))),
        bare_ratio,
        raw_cpu_us_per_msg: cpu_per_message(&raw),
        our_cpu_us_per_msg: cpu_per_message(&ours),
        raw_p50_us: latency(&raw, |l| l.p50),
        raw_p99_us: latency(&raw, |l| l.p99),
        our_p50_us: latency(&ours, |l| l.p50),
        our_p99_us: latency(&ours, |l| l.p99),
        goal: scenario.goal(),
    })
}

fn rates(side: &[Measured]) -> Vec<f64> {
    side.iter().map(|m| m.sample.rate()).collect()
}

/// The ratio ours/base of each round.
fn ratios_of(ours: &[Measured], base: &[Measured]) -> Vec<f64> {
    base.iter()
        .zip(ours)
        .map(|(b, o)| o.sample.rate() / b.sample.rate())
        .collect()
}

fn cpu_per_message(side: &[Measured]) -> f64 {
    let cpu: f64 = side.iter().map(|m| m.cpu.as_secs_f64()).sum();
    let messages: usize = side.iter().map(|m| m.sample.messages).sum();
    cpu * 1e6 / messages.max(1) as f64
}

/// Every scenario's result, and where they were measured.
#[derive(Debug, Serialize)]
pub struct Report {
    machine: String,
    scenarios: Vec<ScenarioResult>,
    footprints: Vec<crate::peak::Footprint>,
    failures: Vec<Failure>,
}

/// A scenario that could not be measured, and why.
#[derive(Debug, Serialize)]
struct Failure {
    name: String,
    error: String,
}

impl Report {
    /// An empty report for `machine`.
    pub fn new(machine: String) -> Self {
        Report {
            machine,
            scenarios: Vec::new(),
            footprints: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Adds `note` to the machine description.
    pub fn note_machine(&mut self, note: &str) {
        self.machine.push_str(", ");
        self.machine.push_str(note);
    }

    /// Records a scenario that failed.
    pub fn push_failure(&mut self, name: String, error: String) {
        self.failures.push(Failure { name, error });
    }

    /// Adds a result.
    pub fn push(&mut self, result: ScenarioResult) {
        self.scenarios.push(result);
    }

    /// Adds a memory footprint measurement.
    pub fn push_footprint(&mut self, footprint: crate::peak::Footprint) {
        self.footprints.push(footprint);
    }

    /// Markdown tables: throughput and latency, then memory footprints.
    pub fn table(&self) -> String {
        let mut out = format!("machine: {}\n", self.machine);
        if !self.scenarios.is_empty() {
            out.push_str(
                "\n| scenario | raw side | raw msg/s (min..max) | ours msg/s (min..max) | ours MB/s | ours/raw (min..max) | ours/bare raw (min..max) | goal | client CPU µs/msg raw / ours | p50 / p99 latency raw | p50 / p99 latency ours |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
        }
        for s in &self.scenarios {
            out.push_str(&s.row());
        }
        if !self.footprints.is_empty() {
            out.push('\n');
            out.push_str(&crate::peak::table(&self.footprints));
        }
        for failure in &self.failures {
            let first_line = failure.error.lines().next().unwrap_or_default();
            out.push_str(&format!("\nFAILED {}: {first_line}\n", failure.name));
        }
        out
    }
}

impl ScenarioResult {
    fn row(&self) -> String {
        let s = self;
        format!(
            "| {} | {} | {} | {} | {:.1} | {} {} | {} | {:.2} | {:.2} / {:.2} | {} | {} |\n",
            s.name,
            s.raw_side,
            s.raw_rate.rate(),
            s.our_rate.rate(),
            s.our_mb_per_s,
            s.ratio.ratio(),
            if s.meets_goal() { "ok" } else { "BELOW" },
            s.bare_ratio.map_or_else(|| "–".to_owned(), |r| r.ratio()),
            s.goal,
            s.raw_cpu_us_per_msg,
            s.our_cpu_us_per_msg,
            latency(s.raw_p50_us, s.raw_p99_us),
            latency(s.our_p50_us, s.our_p99_us),
        )
    }
}

fn latency(p50: Option<f64>, p99: Option<f64>) -> String {
    match (p50, p99) {
        (Some(p50), Some(p99)) => format!("{} / {}", micros(p50), micros(p99)),
        _ => "–".to_owned(),
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_median_and_extremes() {
        let odd = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        let none = Spread::of(Vec::new());
        assert_eq!((none.median, none.min, none.max), (0.0, 0.0, 0.0));
    }

    #[test]
    fn rates_print_in_the_unit_of_their_median() {
        let kafka = Spread::of(vec![1_011_857.0, 1_080_764.0, 1_112_254.0]);
        assert_eq!(kafka.rate(), "1.08 M (1.01..1.11)");
        let rabbitmq = Spread::of(vec![25_487.0, 30_920.0, 33_409.0]);
        assert_eq!(rabbitmq.rate(), "30.9 k (25.5..33.4)");
        let kafka_publish = Spread::of(vec![404_454.0, 182_489.0, 471_755.0]);
        assert_eq!(kafka_publish.rate(), "404 k (182..472)");
        let emulator = Spread::of(vec![1_796.0, 1_805.0, 1_871.0]);
        assert_eq!(emulator.rate(), "1805 (1796..1871)");
        assert_eq!(
            Spread::of(vec![0.47, 0.86, 1.01]).ratio(),
            "0.86 (0.47..1.01)"
        );
    }
}
