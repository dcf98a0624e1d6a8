//! Commit bookkeeping for log-based brokers (Kafka): when handlers finish out of order, only
//! the contiguous handled prefix of each partition may be committed.

use std::collections::VecDeque;

/// Tracks delivered and acknowledged offsets per partition.
///
/// The committable position of a partition is the offset of its oldest delivered message not
/// yet acknowledged, or one past the newest delivered message when all are acknowledged: a
/// commit never passes a message whose handler has not succeeded.
///
/// Built for the per-message path: a consumer owns a few partitions (kept in a short list) and
/// reads each in offset order, so a partition's unsettled offsets are a queue in which an
/// acknowledgement finds its entry by binary search and the handled prefix is popped.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Vec<(i32, PartitionOffsets)>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Delivered offsets from the oldest unacknowledged one on, ascending, with whether each
    /// was acknowledged.
    window: VecDeque<(i64, bool)>,
    next: i64,
    committed: i64,
}

impl PartitionOffsets {
    fn position(&self) -> i64 {
        self.window.front().map_or(self.next, |&(offset, _)| offset)
    }

    fn insert(&mut self, offset: i64) {
        match self.window.back() {
            Some(&(last, _)) if last >= offset => {
                // Out of order (not seen from Kafka, which reads a partition in order).
                if let Err(at) = self.window.binary_search_by_key(&offset, |&(o, _)| o) {
                    self.window.insert(at, (offset, false));
                }
            }
            _ => self.window.push_back((offset, false)),
        }
        self.next = self.next.max(offset.saturating_add(1));
    }

    /// Marks `offset` handled; returns whether the oldest unacknowledged offset moved.
    fn ack(&mut self, offset: i64) -> bool {
        // Handlers mostly finish in delivery order: the oldest entry first.
        let found = match self.window.front() {
            Some(&(oldest, _)) if oldest == offset => Ok(0),
            _ => self.window.binary_search_by_key(&offset, |&(o, _)| o),
        };
        let Ok(at) = found else {
            return false;
        };
        if self.window[at].1 {
            return false;
        }
        self.window[at].1 = true;
        if at != 0 {
            return false;
        }
        while self.window.front().is_some_and(|&(_, acked)| acked) {
            self.window.pop_front();
        }
        true
    }

    fn unacked(&self) -> usize {
        self.window.iter().filter(|&&(_, acked)| !acked).count()
    }
}

impl OffsetTracker {
    /// A tracker with no partitions.
    pub fn new() -> Self {
        OffsetTracker::default()
    }

    fn get(&self, partition: i32) -> Option<&PartitionOffsets> {
        self.partitions
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, entry)| entry)
    }

    fn get_mut(&mut self, partition: i32) -> Option<&mut PartitionOffsets> {
        self.partitions
            .iter_mut()
            .find(|(p, _)| *p == partition)
            .map(|(_, entry)| entry)
    }

    /// Records that `offset` of `partition` was handed out.
    pub fn delivered(&mut self, partition: i32, offset: i64) {
        if let Some(entry) = self.get_mut(partition) {
            entry.insert(offset);
            return;
        }
        let mut entry = PartitionOffsets {
            window: VecDeque::new(),
            next: offset,
            committed: offset,
        };
        entry.insert(offset);
        self.partitions.push((partition, entry));
    }

    /// Records that `offset` of `partition` was handled. Returns whether the committable
    /// position moved.
    pub fn acked(&mut self, partition: i32, offset: i64) -> bool {
        self.get_mut(partition)
            .is_some_and(|entry| entry.ack(offset))
    }

    /// The offset to commit for `partition` (the next one to read), if any was delivered.
    pub fn committable(&self, partition: i32) -> Option<i64> {
        self.get(partition).map(PartitionOffsets::position)
    }

    /// Every partition whose committable position moved since the last [`OffsetTracker::mark_committed`].
    pub fn uncommitted(&self) -> Vec<(i32, i64)> {
        let mut moved: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(partition, entry)| {
                let position = entry.position();
                (position > entry.committed).then_some((*partition, position))
            })
            .collect();
        moved.sort_unstable();
        moved
    }

    /// Records that `partition` was committed up to `offset`.
    pub fn mark_committed(&mut self, partition: i32, offset: i64) {
        if let Some(entry) = self.get_mut(partition) {
            entry.committed = entry.committed.max(offset);
        }
    }

    /// Forgets a partition (revoked in a rebalance, or rewound by a nack).
    pub fn forget(&mut self, partition: i32) {
        self.partitions.retain(|(p, _)| *p != partition);
    }

    /// How many delivered offsets are kept, over all partitions: from each one's oldest
    /// unacknowledged offset on, acknowledged or not (an acknowledged offset is kept while an
    /// older one is not).
    pub fn tracked(&self) -> usize {
        self.partitions.iter().map(|(_, p)| p.window.len()).sum()
    }

    /// How many delivered messages are not acknowledged yet, over all partitions.
    pub fn unacked(&self) -> usize {
        self.partitions.iter().map(|(_, p)| p.unacked()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_possible_offset_is_tracked_without_overflow() {
        let mut tracker = OffsetTracker::default();
        tracker.delivered(0, i64::MAX);
        assert!(tracker.acked(0, i64::MAX));
        assert_eq!(tracker.committable(0), Some(i64::MAX));
    }

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

    #[test]
    fn gaps_duplicates_and_late_offsets_are_handled() {
        let mut tracker = OffsetTracker::new();
        // Offsets 3 and 4 do not exist (compaction, transaction markers).
        for offset in [0, 1, 2, 5, 6] {
            tracker.delivered(0, offset);
        }
        assert!(!tracker.acked(0, 5));
        assert!(!tracker.acked(0, 4), "never delivered");
        assert!(tracker.acked(0, 0));
        assert!(!tracker.acked(0, 0), "acknowledged twice");
        assert_eq!(tracker.committable(0), Some(1));
        assert!(tracker.acked(0, 1));
        assert!(tracker.acked(0, 2));
        assert_eq!(tracker.committable(0), Some(6));
        assert_eq!(tracker.unacked(), 1);
        // Delivered out of order: still sorted.
        tracker.delivered(0, 9);
        tracker.delivered(0, 8);
        assert!(tracker.acked(0, 6));
        assert_eq!(tracker.committable(0), Some(8));
        assert!(tracker.acked(0, 8));
        assert!(tracker.acked(0, 9));
        assert_eq!(tracker.committable(0), Some(10));
    }
}
