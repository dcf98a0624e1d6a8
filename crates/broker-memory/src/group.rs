//! A consumer group's position in a topic: which messages are handed out, which wait behind an
//! earlier message with the same key, which must be delivered again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use broker_api::Key;

use crate::log::Log;

/// Shared by every member of one group on one topic.
#[derive(Debug)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
    /// The number of entries in `GroupState::nacks`, readable without the lock: an unkeyed
    /// message that was never nacked is acknowledged without touching the group.
    nacked: AtomicUsize,
    /// Acknowledged offsets of unkeyed messages, not yet applied to the log and the group:
    /// applied under the log lock a member takes anyway for its next batch (or before it
    /// waits, stops or goes away), instead of taking it once per acknowledgement. Deferring
    /// them frees no key and readies no message, and only delays dropping their segments. Kept
    /// per group, not per member: a member that stops reading after an acknowledgement would
    /// otherwise hold its segment, and every later one, for as long as it lives.
    deferred_acks: Mutex<Vec<u64>>,
}

#[derive(Debug, Default)]
struct GroupState {
    /// The next offset never handed out.
    next: u64,
    /// Offsets that may be handed out now, before `next`: nacked messages and messages whose key
    /// became free.
    ready: VecDeque<u64>,
    /// Keys with a message out; each holds the offsets waiting behind it, in order.
    busy_keys: HashMap<Key, VecDeque<u64>>,
    /// Deliveries so far of messages that were nacked at least once.
    nacks: HashMap<u64, u32>,
}

/// A message handed to a member, with its delivery attempt.
pub(crate) struct Handout {
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
}

impl Group {
    pub(crate) fn new(start: u64) -> Self {
        Group {
            state: Mutex::new(GroupState {
                next: start,
                ..GroupState::default()
            }),
            nacked: AtomicUsize::new(0),
            deferred_acks: Mutex::new(Vec::new()),
        }
    }

    /// Hands out up to `max` messages: first those ready again, then new ones in log order,
    /// skipping (and parking) messages whose key already has a message out. Each new message
    /// counts as unsettled in its segment until the group acknowledges it.
    pub(crate) fn take(&self, log: &Log, max: usize, out: &mut Vec<Handout>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        // A group that joined while retention dropped the segment it was to start in.
        state.next = state.next.max(log.first());
        while out.len() < max {
            let offset = if let Some(offset) = state.ready.pop_front() {
                offset
            } else if let Some((record, unsettled)) = log.get(state.next) {
                let offset = state.next;
                state.next += 1;
                unsettled.fetch_add(1, Ordering::SeqCst);
                if let Some(key) = &record.key {
                    if let Some(waiting) = state.busy_keys.get_mut(key) {
                        waiting.push_back(offset);
                        continue;
                    }
                    state.busy_keys.insert(key.clone(), VecDeque::new());
                }
                offset
            } else {
                break;
            };
            let attempt = state.nacks.get(&offset).map_or(1, |nacks| nacks + 1);
            out.push(Handout { offset, attempt });
        }
    }

    /// Whether a [`Group::take`] could hand out or park something: messages are ready again,
    /// or the topic (whose next record gets offset `end`) has some this group has not looked at.
    pub(crate) fn may_have_work(&self, end: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        !state.ready.is_empty() || state.next < end
    }

    /// The next offset this group has never looked at: it has read every earlier one.
    pub(crate) fn next(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// The message at `offset` was handled: its segment may be dropped once every group has,
    /// and its key is free for the next message with it. Returns whether a message became
    /// ready.
    pub(crate) fn ack_in(&self, log: &Log, offset: u64) -> bool {
        let Some((record, unsettled)) = log.get(offset) else {
            return false;
        };
        unsettled.fetch_sub(1, Ordering::SeqCst);
        self.ack(offset, record.key.as_deref())
    }

    /// Defers the acknowledgement of the unkeyed message at `offset` (see the
    /// `deferred_acks` field).
    pub(crate) fn defer_ack(&self, offset: u64) {
        self.deferred_acks().push(offset);
    }

    /// Applies the deferred acknowledgements under `log`'s lock.
    pub(crate) fn apply_deferred(&self, log: &Log) {
        for offset in self.deferred_acks().drain(..) {
            self.ack_in(log, offset);
        }
    }

    /// Whether acknowledgements wait to be applied.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred_acks().is_empty()
    }

    fn deferred_acks(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.deferred_acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The message was handled: frees its key for the next message with it. Returns whether a
    /// message became ready.
    fn ack(&self, offset: u64, key: Option<&str>) -> bool {
        if key.is_none() && self.nacked.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.nacks.remove(&offset).is_some() {
            self.nacked.fetch_sub(1, Ordering::SeqCst);
        }
        let Some(key) = key else {
            return false;
        };
        let next = state.busy_keys.get_mut(key).and_then(VecDeque::pop_front);
        match next {
            Some(offset) => {
                state.ready.push_back(offset);
                true
            }
            None => {
                state.busy_keys.remove(key);
                false
            }
        }
    }

    /// Messages handed out and never delivered (a member took them and stopped first), in the
    /// order they were handed out: they go out next, before anything else, in that order and
    /// with the same attempt (their keys stay reserved).
    pub(crate) fn give_back(&self, offsets: impl DoubleEndedIterator<Item = u64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for offset in offsets.rev() {
            state.ready.push_front(offset);
        }
    }

    /// The message must be delivered again, before anything else (its key stays reserved).
    pub(crate) fn nack(&self, offset: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let nacks = state.nacks.entry(offset).or_insert(0);
        if *nacks == 0 {
            self.nacked.fetch_add(1, Ordering::SeqCst);
        }
        *nacks += 1;
        state.ready.push_front(offset);
    }
}
