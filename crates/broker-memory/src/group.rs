//! A consumer group's position in a topic: which messages are handed out, which wait behind an
//! earlier message with the same key, which must be delivered again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::log::Log;

/// Shared by every member of one group on one topic.
#[derive(Debug)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
    /// The number of entries in `GroupState::nacks`, readable without the lock: an unkeyed
    /// message that was never nacked is acknowledged without touching the group.
    nacked: AtomicUsize,
}

#[derive(Debug, Default)]
struct GroupState {
    /// The next offset never handed out.
    next: u64,
    /// Offsets that may be handed out now, before `next`: nacked messages and messages whose key
    /// became free.
    ready: VecDeque<u64>,
    /// Keys with a message out; each holds the offsets waiting behind it, in order.
    busy_keys: HashMap<String, VecDeque<u64>>,
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

    /// The message was handled: frees its key for the next message with it. Returns whether a
    /// message became ready.
    pub(crate) fn ack(&self, offset: u64, key: Option<&str>) -> bool {
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
