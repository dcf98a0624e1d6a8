//! A consumer group's position in a topic: which messages are handed out, which wait behind an
//! earlier message with the same key, which must be delivered again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::topic::Record;

/// Shared by every member of one group on one topic.
#[derive(Debug)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
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
    pub(crate) record: Arc<Record>,
    pub(crate) attempt: u32,
}

impl Group {
    pub(crate) fn new(start: u64) -> Self {
        Group {
            state: Mutex::new(GroupState {
                next: start,
                ..GroupState::default()
            }),
        }
    }

    /// Hands out up to `max` messages: first those ready again, then new ones in log order,
    /// skipping (and parking) messages whose key already has a message out.
    pub(crate) fn take(&self, records: &[Arc<Record>], max: usize, out: &mut Vec<Handout>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        while out.len() < max {
            let offset = if let Some(offset) = state.ready.pop_front() {
                offset
            } else if let Some(record) = records.get(state.next as usize) {
                state.next += 1;
                if let Some(key) = &record.key {
                    if let Some(waiting) = state.busy_keys.get_mut(key) {
                        waiting.push_back(record.offset);
                        continue;
                    }
                    state.busy_keys.insert(key.clone(), VecDeque::new());
                }
                record.offset
            } else {
                break;
            };
            let Some(record) = records.get(offset as usize) else {
                continue;
            };
            let attempt = state.nacks.get(&offset).map_or(1, |nacks| nacks + 1);
            out.push(Handout {
                record: record.clone(),
                attempt,
            });
        }
    }

    /// The message was handled: frees its key for the next message with it. Returns whether a
    /// message became ready.
    pub(crate) fn ack(&self, record: &Record) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.nacks.is_empty() {
            state.nacks.remove(&record.offset);
        }
        let Some(key) = &record.key else {
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
    pub(crate) fn nack(&self, record: &Record) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state.nacks.entry(record.offset).or_insert(0) += 1;
        state.ready.push_front(record.offset);
    }
}
