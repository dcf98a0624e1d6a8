//! Commit bookkeeping for log-based brokers (Kafka): when handlers finish out of order, only
//! the contiguous handled prefix of each partition may be committed.

use std::collections::{BTreeSet, HashMap};

/// Tracks delivered and acknowledged offsets per partition.
///
/// The committable position of a partition is the offset of its oldest delivered message not
/// yet acknowledged, or one past the newest delivered message when all are acknowledged: a
/// commit never passes a message whose handler has not succeeded.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    unacked: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl OffsetTracker {
    /// A tracker with no partitions.
    pub fn new() -> Self {
        OffsetTracker::default()
    }

    /// Records that `offset` of `partition` was handed out.
    pub fn delivered(&mut self, partition: i32, offset: i64) {
        let entry = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionOffsets {
                unacked: BTreeSet::new(),
                next: offset,
                committed: offset,
            });
        entry.unacked.insert(offset);
        entry.next = entry.next.max(offset + 1);
    }

    /// Records that `offset` of `partition` was handled. Returns whether the committable
    /// position moved.
    pub fn acked(&mut self, partition: i32, offset: i64) -> bool {
        let Some(entry) = self.partitions.get_mut(&partition) else {
            return false;
        };
        let was_oldest = entry.unacked.first() == Some(&offset);
        entry.unacked.remove(&offset) && was_oldest
    }

    /// The offset to commit for `partition` (the next one to read), if any was delivered.
    pub fn committable(&self, partition: i32) -> Option<i64> {
        let entry = self.partitions.get(&partition)?;
        Some(entry.unacked.first().copied().unwrap_or(entry.next))
    }

    /// Every partition whose committable position moved since the last [`OffsetTracker::mark_committed`].
    pub fn uncommitted(&self) -> Vec<(i32, i64)> {
        let mut moved: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(&partition, entry)| {
                let position = entry.unacked.first().copied().unwrap_or(entry.next);
                (position > entry.committed).then_some((partition, position))
            })
            .collect();
        moved.sort_unstable();
        moved
    }

    /// Records that `partition` was committed up to `offset`.
    pub fn mark_committed(&mut self, partition: i32, offset: i64) {
        if let Some(entry) = self.partitions.get_mut(&partition) {
            entry.committed = entry.committed.max(offset);
        }
    }

    /// Forgets a partition (revoked in a rebalance, or rewound by a nack).
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// How many delivered messages are not acknowledged yet, over all partitions.
    pub fn unacked(&self) -> usize {
        self.partitions.values().map(|p| p.unacked.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_never_passes_an_unhandled_offset() {
        let mut tracker = OffsetTracker::new();
        for offset in 10..15 {
            tracker.delivered(0, offset);
        }
        assert_eq!(tracker.committable(0), Some(10));
        assert!(!tracker.acked(0, 12));
        assert!(!tracker.acked(0, 11));
        assert_eq!(tracker.committable(0), Some(10));
        assert!(tracker.acked(0, 10));
        assert_eq!(tracker.committable(0), Some(13));
        assert_eq!(tracker.uncommitted(), vec![(0, 13)]);
        tracker.mark_committed(0, 13);
        assert!(tracker.uncommitted().is_empty());
        tracker.acked(0, 13);
        tracker.acked(0, 14);
        assert_eq!(tracker.committable(0), Some(15));
        assert_eq!(tracker.unacked(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::new();
        tracker.delivered(0, 0);
        tracker.delivered(1, 100);
        tracker.acked(1, 100);
        assert_eq!(tracker.uncommitted(), vec![(1, 101)]);
        tracker.forget(1);
        assert_eq!(tracker.committable(1), None);
        assert_eq!(tracker.committable(0), Some(0));
    }
}
