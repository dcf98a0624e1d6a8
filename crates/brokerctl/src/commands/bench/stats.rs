//! What a bench run measured, and how it is printed.

use std::time::Duration;

/// Latency percentiles of the consumed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The 99.9th percentile.
    pub p999: Duration,
    /// The largest.
    pub max: Duration,
}

impl Latencies {
    /// The percentiles of `nanos` (sorted in place); `None` when there are none.
    pub fn of(nanos: &mut [u64]) -> Option<Latencies> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let at = |fraction: f64| {
            let rank = (fraction * nanos.len() as f64).ceil() as usize;
            Duration::from_nanos(nanos[rank.clamp(1, nanos.len()) - 1])
        };
        Some(Latencies {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        })
    }
}

/// One line of throughput: `label  N msgs in T  R msgs/s  M MB/s` (MB = 10^6 bytes).
pub fn throughput_line(label: &str, messages: u64, size: usize, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let rate = messages as f64 / seconds;
    let megabytes = messages as f64 * size as f64 / 1e6 / seconds;
    format!(
        "{label:<11} {messages} msgs in {}  {rate:.0} msgs/s  {megabytes:.2} MB/s",
        duration_text(elapsed)
    )
}

/// The latency line: `latency  p50 ...  p99 ...  p999 ...  max ...`.
pub fn latency_line(latencies: &Latencies) -> String {
    format!(
        "{:<11} p50 {}  p99 {}  p999 {}  max {}",
        "latency:",
        duration_text(latencies.p50),
        duration_text(latencies.p99),
        duration_text(latencies.p999),
        duration_text(latencies.max)
    )
}

/// A duration with a unit that keeps three significant digits: `850µs`, `12.3ms`, `1.20s`.
pub fn duration_text(duration: Duration) -> String {
    let nanos = duration.as_nanos() as f64;
    if nanos < 1e3 {
        format!("{nanos:.0}ns")
    } else if nanos < 1e6 {
        format!("{:.0}µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.1}ms", nanos / 1e6)
    } else {
        format!("{:.2}s", nanos / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let mut nanos: Vec<u64> = (1..=1000).rev().collect();
        let latencies = Latencies::of(&mut nanos).unwrap();
        assert_eq!(latencies.p50, Duration::from_nanos(500));
        assert_eq!(latencies.p99, Duration::from_nanos(990));
        assert_eq!(latencies.p999, Duration::from_nanos(999));
        assert_eq!(latencies.max, Duration::from_nanos(1000));
        assert_eq!(Latencies::of(&mut []), None);
        let one = Latencies::of(&mut [7]).unwrap();
        assert_eq!(
            (one.p50, one.max),
            (Duration::from_nanos(7), Duration::from_nanos(7))
        );
    }

    #[test]
    fn lines_read_well() {
        assert_eq!(
            throughput_line("published:", 1000, 100, Duration::from_secs(2)),
            "published:  1000 msgs in 2.00s  500 msgs/s  0.05 MB/s"
        );
        assert_eq!(duration_text(Duration::from_micros(850)), "850µs");
        assert_eq!(duration_text(Duration::from_micros(12_345)), "12.3ms");
    }
}
