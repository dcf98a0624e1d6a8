//! Which of a run's messages arrived: each carries its sequence number, and redeliveries
//! (at least once) count once.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per message of the run.
#[derive(Debug)]
pub struct Arrivals {
    bits: Vec<AtomicU64>,
    total: u64,
    distinct: AtomicU64,
}

impl Arrivals {
    /// Tracks messages `0..total`.
    pub fn new(total: u64) -> Self {
        let words = usize::try_from(total.div_ceil(64)).unwrap_or(usize::MAX);
        Arrivals {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            total,
            distinct: AtomicU64::new(0),
        }
    }

    /// Records message `sequence`; returns whether it is the first time (false for a
    /// redelivery, or a sequence outside the run).
    pub fn record(&self, sequence: u64) -> bool {
        if sequence >= self.total {
            return false;
        }
        let Some(word) = usize::try_from(sequence / 64)
            .ok()
            .and_then(|index| self.bits.get(index))
        else {
            return false;
        };
        let bit = 1u64 << (sequence % 64);
        let first = word.fetch_or(bit, Ordering::AcqRel) & bit == 0;
        if first {
            self.distinct.fetch_add(1, Ordering::AcqRel);
        }
        first
    }

    /// How many distinct messages arrived.
    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Acquire)
    }

    /// Whether every message arrived.
    pub fn complete(&self) -> bool {
        self.distinct() == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_and_strangers_count_no_more() {
        let arrivals = Arrivals::new(130);
        assert!(arrivals.record(0));
        assert!(!arrivals.record(0), "a redelivery");
        assert!(arrivals.record(129));
        assert!(!arrivals.record(130), "not of this run");
        assert_eq!(arrivals.distinct(), 2);
        for sequence in 1..129 {
            arrivals.record(sequence);
        }
        assert!(arrivals.complete());
    }
}
