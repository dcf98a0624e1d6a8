//! The locked part of a subscription's acknowledgement bookkeeping: the offsets tracked, each
//! partition's epoch, the rewinds pending.

use broker_api::offsets::OffsetTracker;

#[derive(Default)]
pub(super) struct AckState {
    pub(super) tracker: OffsetTracker,
    pub(super) epochs: Epochs,
    pub(super) next_epoch: u64,
    /// Partitions to seek back, with the offset to read again from: the rewinds of nacks and
    /// the records the keeper read while paused.
    pub(super) rewinds: Vec<(i32, i64)>,
    pub(super) closed: bool,
}

/// The current epoch of each partition: a short list (a member owns a few partitions), faster
/// than a hash map on the per-delivery path.
#[derive(Default)]
pub(super) struct Epochs(Vec<(i32, u64)>);

impl Epochs {
    pub(super) fn get(&self, partition: i32) -> Option<u64> {
        self.0
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|&(_, epoch)| epoch)
    }

    pub(super) fn insert(&mut self, partition: i32, epoch: u64) {
        match self.0.iter_mut().find(|(p, _)| *p == partition) {
            Some(entry) => entry.1 = epoch,
            None => self.0.push((partition, epoch)),
        }
    }

    /// The partition whose current epoch is `epoch` (epochs are never reused).
    pub(super) fn partition_of(&self, epoch: u64) -> Option<i32> {
        self.0.iter().find(|(_, e)| *e == epoch).map(|&(p, _)| p)
    }

    pub(super) fn remove(&mut self, partition: i32) {
        self.0.retain(|(p, _)| *p != partition);
    }

    pub(super) fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().map(|&(p, _)| p)
    }
}

impl AckState {
    /// Asks the stream to read `partition` again from `from`, or from the seek already pending
    /// if that is older.
    pub(super) fn seek_back(&mut self, partition: i32, from: i64) {
        match self.rewinds.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, pending)) => *pending = (*pending).min(from),
            None => self.rewinds.push((partition, from)),
        }
    }

    pub(super) fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// The offset to commit for `partition`: its oldest unsettled one, which is the rewind
    /// point while a rewind is pending (the tracker forgot the partition then).
    pub(super) fn committable(&self, partition: i32) -> Option<i64> {
        let rewind = self
            .rewinds
            .iter()
            .find(|&&(p, _)| p == partition)
            .map(|&(_, from)| from);
        match (self.tracker.committable(partition), rewind) {
            (Some(tracked), Some(rewind)) => Some(tracked.min(rewind)),
            (tracked, rewind) => tracked.or(rewind),
        }
    }
}
