//! Acknowledgement bookkeeping of one subscription, shared by its stream (which polls the
//! consumer), its rebalance hooks and every delivery it handed out.
//!
//! - An ack marks the offset handled in an
//!   [`OffsetTracker`](broker_api::offsets::OffsetTracker); the stream stores only the
//!   contiguous handled prefix of each partition, which librdkafka commits.
//! - A nack rewinds the partition to its oldest unsettled offset: that message and every later
//!   one of the partition are delivered again. A delivery dropped unsettled while the
//!   subscription runs is nacked: left unacknowledged, it would hold the partition's commits
//!   back (and the tracker would grow) until the next rebalance.
//! - Each partition's deliveries carry the epoch of the assignment (or rewind) they were read
//!   in. Acknowledging a delivery of an older epoch (the partition was revoked, or rewound by
//!   a nack) fails with a `Connection` error, and nacking one does nothing: the message is
//!   delivered again to whoever owns the partition now.
//! - Each unsettled delivery holds one of `max_in_flight` slots, given back when it is
//!   settled or dropped; the subscription stops reading while none is free.
//! - Behind a delivery left unsettled (a hung handler, a message a manual subscriber keeps),
//!   later ones are handled and their slots come back, but their offsets stay tracked until
//!   it is settled: the subscription also stops reading while [`WINDOW_PER_SLOT`] times
//!   `max_in_flight` offsets are, so that the tracker's memory stays bounded.
//!
//! [`Shared`] is what the stream, the rebalance hooks and the deliveries share; its locked
//! part is in [`state`].

mod state;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use futures::task::AtomicWaker;

use broker_api::{AckKey, AckTable, Acker, Error, ErrorKind, Result, Settlement};

use crate::error::{closed, BACKEND};
use crate::keep_alive::Polling;

use self::state::AckState;

/// How many offsets the tracker keeps at most per `max_in_flight` slot (16 bytes each): how
/// far a subscription reads on past a delivery left unsettled.
pub(crate) const WINDOW_PER_SLOT: usize = 64;

/// Seeks back for the stream to do: each partition's offset to read again from, and the
/// positions to store first (the oldest unsettled offset of each).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Rewinds {
    pub(crate) seeks: Vec<(i32, i64)>,
    pub(crate) positions: Vec<(i32, i64)>,
}

/// The state of one subscription that outlives any single delivery.
pub(crate) struct Shared {
    topic: Arc<str>,
    group: String,
    limit: usize,
    in_flight: AtomicUsize,
    /// [`OffsetTracker::tracked`](broker_api::offsets::OffsetTracker::tracked) of `state`,
    /// readable without the lock.
    tracked: AtomicUsize,
    stop: AtomicBool,
    /// Set when an ack moved a committable position that is not stored yet.
    dirty: AtomicBool,
    /// Counts the epoch changes (assignments, revocations, rewinds): deliveries read but not
    /// yet handed out are checked again when it moved.
    epoch_changes: AtomicU64,
    state: Mutex<AckState>,
    /// The task reading the subscription: woken when a slot frees, on new records, on stop.
    reader: AtomicWaker,
    /// Whether the stream or the keeper polls the consumer.
    polling: Polling,
}

impl Shared {
    pub(crate) fn new(topic: &str, group: &str, max_in_flight: usize) -> Self {
        Shared {
            topic: topic.into(),
            group: group.to_owned(),
            limit: max_in_flight.max(1),
            in_flight: AtomicUsize::new(0),
            tracked: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            epoch_changes: AtomicU64::new(0),
            state: Mutex::new(AckState::default()),
            reader: AtomicWaker::new(),
            polling: Polling::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subscribed topic.
    pub(crate) fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The consumer group.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// Whether the stream or the keeper polls the consumer.
    pub(crate) fn polling(&self) -> &Polling {
        &self.polling
    }

    // ----- reader side -----

    /// Registers the task to wake when a slot frees, records arrive, or on stop.
    pub(crate) fn register_reader(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// Wakes the reading task.
    pub(crate) fn wake_reader(&self) {
        self.reader.wake();
    }

    /// Stops the subscription: its stream ends.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake_reader();
    }

    /// Whether the subscription is stopping.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// How many more deliveries may be handed out now: free slots, as long as the tracker
    /// keeps fewer than [`WINDOW_PER_SLOT`] offsets per slot.
    pub(crate) fn room(&self) -> usize {
        let slots = self
            .limit
            .saturating_sub(self.in_flight.load(Ordering::Acquire));
        let window = (self.limit.saturating_mul(WINDOW_PER_SLOT))
            .saturating_sub(self.tracked.load(Ordering::Acquire));
        slots.min(window)
    }

    /// Publishes how many offsets `state`'s tracker keeps, for [`room`](Self::room); wakes
    /// the reader when that made room.
    fn note_tracked(&self, state: &AckState) {
        let now = state.tracker.tracked();
        let before = self.tracked.swap(now, Ordering::AcqRel);
        let full = self.limit.saturating_mul(WINDOW_PER_SLOT);
        if before >= full && now < full {
            self.wake_reader();
        }
    }

    /// Records that record `offset` of `partition` is being handed out and returns the acker
    /// holding its slot, or `None` when its partition is about to be rewound (the record will
    /// be read again after the rewind).
    #[cfg(test)]
    pub(crate) fn admit(self: &Arc<Self>, partition: i32, offset: i64) -> Option<Acker> {
        self.admit_in_epoch(partition, offset)
            .map(|(_, acker)| acker)
    }

    /// Records that record `offset` of `partition` is being handed out; returns the epoch the
    /// delivery belongs to and the acker holding its slot, or `None` when its partition is
    /// about to be rewound (the record will be read again after the rewind).
    pub(crate) fn admit_in_epoch(
        self: &Arc<Self>,
        partition: i32,
        offset: i64,
    ) -> Option<(u64, Acker)> {
        let epoch = {
            let mut state = self.state();
            if state.rewinds.iter().any(|&(p, _)| p == partition) {
                return None;
            }
            let epoch = match state.epochs.get(partition) {
                Some(epoch) => epoch,
                None => {
                    let epoch = state.new_epoch();
                    state.epochs.insert(partition, epoch);
                    epoch
                }
            };
            state.tracker.delivered(partition, offset);
            self.note_tracked(&state);
            epoch
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        // Epochs name their partition. The offset goes through `as` both ways, which
        // round-trips every value.
        let key = AckKey {
            scope: epoch,
            offset: offset as u64,
        };
        Some((epoch, Acker::keyed(self.clone(), key)))
    }

    /// How many times epochs changed so far.
    pub(crate) fn epoch_changes(&self) -> u64 {
        self.epoch_changes.load(Ordering::Acquire)
    }

    fn epochs_changed(&self) {
        self.epoch_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes out of `batch` (read, not handed out yet) the deliveries of epochs that are no
    /// longer current: their partition was revoked or rewound since they were read, and they
    /// will be delivered again. Drop them after this returns (dropping one settles it, which
    /// takes the lock held here).
    pub(crate) fn take_stale<T>(&self, batch: &mut VecDeque<(u64, T)>) -> Vec<T> {
        let state = self.state();
        let mut stale = Vec::new();
        let mut kept = VecDeque::with_capacity(batch.len());
        for (epoch, delivery) in batch.drain(..) {
            if state.epochs.partition_of(epoch).is_some() {
                kept.push_back((epoch, delivery));
            } else {
                stale.push(delivery);
            }
        }
        *batch = kept;
        stale
    }

    /// Partitions were assigned: their deliveries start a new epoch.
    pub(crate) fn assigned(&self, partitions: &[i32]) {
        let mut state = self.state();
        for &partition in partitions {
            state.tracker.forget(partition);
            let epoch = state.new_epoch();
            state.epochs.insert(partition, epoch);
        }
        self.note_tracked(&state);
        self.epochs_changed();
    }

    /// Partitions were revoked: returns the positions to commit for them, and forgets them
    /// (later settlements of their deliveries do nothing).
    pub(crate) fn revoked(&self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut state = self.state();
        let mut positions = Vec::new();
        for &partition in partitions {
            if let Some(position) = state.committable(partition) {
                positions.push((partition, position));
            }
            state.tracker.forget(partition);
            state.epochs.remove(partition);
            state.rewinds.retain(|&(p, _)| p != partition);
        }
        self.note_tracked(&state);
        self.epochs_changed();
        positions
    }

    /// The committable positions that moved since the last call, to be stored; empty unless
    /// an ack moved one.
    pub(crate) fn take_moved(&self) -> Vec<(i32, i64)> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut state = self.state();
        let moved = state.tracker.uncommitted();
        for &(partition, position) in &moved {
            state.tracker.mark_committed(partition, position);
        }
        moved
    }

    /// The seeks back asked for (by nacks, or records read while paused), to be done by the
    /// stream before it reads again.
    pub(crate) fn take_rewinds(&self) -> Rewinds {
        let mut state = self.state();
        if state.rewinds.is_empty() {
            return Rewinds::default();
        }
        let positions = state
            .rewinds
            .iter()
            .filter_map(|&(partition, _)| {
                state
                    .committable(partition)
                    .map(|position| (partition, position))
            })
            .collect();
        Rewinds {
            seeks: std::mem::take(&mut state.rewinds),
            positions,
        }
    }

    /// Puts back the rewind of `partition` to `from` after its seek failed, so that the stream
    /// tries again before it reads the partition further (its records stay refused until
    /// then); dropped when the partition was revoked meanwhile (its new owner reads from the
    /// committed position).
    pub(crate) fn rewind_again(&self, partition: i32, from: i64) {
        let mut state = self.state();
        if state.epochs.get(partition).is_some() {
            state.seek_back(partition, from);
        }
    }

    /// Record `offset` of `partition` was read but cannot be handed out (the keeper polled it
    /// while the partition was meant to be paused): the partition is sought back to it, so
    /// that it is read again. Unlike a nack, this starts no new epoch: the deliveries handed
    /// out before it stay live. Nothing happens for a partition this member does not own.
    pub(crate) fn read_again(&self, partition: i32, offset: i64) {
        {
            let mut state = self.state();
            if state.closed || state.epochs.get(partition).is_none() {
                return;
            }
            state.seek_back(partition, offset);
        }
        self.wake_reader();
    }

    /// Closes the bookkeeping: returns the position to commit for every partition that had
    /// deliveries; later settlements fail with `Closed`.
    pub(crate) fn close(&self) -> Vec<(i32, i64)> {
        let mut state = self.state();
        state.closed = true;
        let mut partitions: Vec<i32> = state.epochs.partitions().collect();
        partitions.sort_unstable();
        let positions = partitions
            .into_iter()
            .filter_map(|p| state.committable(p).map(|position| (p, position)))
            .collect();
        *state = AckState {
            closed: true,
            ..AckState::default()
        };
        self.note_tracked(&state);
        positions
    }

    // ----- delivery side -----

    fn ack(&self, epoch: u64, offset: i64) -> Result<()> {
        let mut state = self.state();
        if state.closed {
            return Err(closed("ack", "the subscription"));
        }
        let Some(partition) = state.epochs.partition_of(epoch) else {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "message at offset {offset} of topic {} not acknowledged: since it was read, \
                     its partition was revoked from this member of group {}, or rewound by a nack; \
                     Kafka delivers it again",
                    self.topic, self.group
                ),
            )
            .backend(BACKEND)
            .operation("ack"));
        };
        if state.tracker.acked(partition, offset) {
            self.dirty.store(true, Ordering::Release);
            self.note_tracked(&state);
        }
        Ok(())
    }

    fn nack(&self, epoch: u64, offset: i64) -> Result<()> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(closed("nack", "the subscription"));
            }
            let Some(partition) = state.epochs.partition_of(epoch) else {
                return Ok(());
            };
            self.rewind(&mut state, partition, offset);
        }
        self.epochs_changed();
        self.wake_reader();
        Ok(())
    }

    /// Rewinds `partition` to its oldest unsettled offset (or the rewind still pending), or
    /// `offset` if that is older: the deliveries handed out since are of an old epoch (their
    /// acks fail, their nacks do nothing).
    fn rewind(&self, state: &mut AckState, partition: i32, offset: i64) {
        let from = state
            .committable(partition)
            .map_or(offset, |oldest| oldest.min(offset));
        state.tracker.forget(partition);
        let epoch = state.new_epoch();
        state.epochs.insert(partition, epoch);
        // `from` is no later than a seek pending: `committable` counts it.
        state.seek_back(partition, from);
        self.note_tracked(state);
    }

    /// Gives a settled or dropped delivery's slot back.
    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.limit {
            self.wake_reader();
        }
    }
}

/// Each delivery settles by its key: ack and nack apply to its epoch; dropping it unsettled
/// gives its slot back and, while the subscription runs, nacks it (it is delivered again at
/// once); once intake stopped, it only leaves the offset uncommitted (delivered again to the
/// group after the close).
impl AckTable for Shared {
    fn settle(&self, key: AckKey, settlement: Settlement) -> Result<()> {
        let offset = key.offset as i64;
        let settled = match settlement {
            Settlement::Ack => self.ack(key.scope, offset),
            Settlement::Nack => self.nack(key.scope, offset),
            Settlement::Dropped if !self.is_stopping() => self.nack(key.scope, offset),
            // Closing: the position committed at close stays at the oldest unsettled offset.
            Settlement::Dropped => Ok(()),
        };
        self.release();
        settled
    }

    /// Live while the delivery's epoch is its partition's current one: not after the partition
    /// was revoked or rewound, nor after the subscription closed.
    fn is_live(&self, key: AckKey) -> bool {
        let state = self.state();
        !state.closed && state.epochs.partition_of(key.scope).is_some()
    }
}

#[cfg(test)]
mod tests;
