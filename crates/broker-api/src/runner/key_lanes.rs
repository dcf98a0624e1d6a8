//! Keeps same-key messages in order while different keys are handled concurrently.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::delivery::Delivery;

/// The deliveries waiting because an earlier message with the same key is still being handled.
#[derive(Default)]
pub(crate) struct KeyLanes {
    busy: HashMap<String, VecDeque<Delivery>>,
}

impl KeyLanes {
    /// Returns the delivery when it may start now; keeps it queued behind its key otherwise.
    pub(crate) fn admit(&mut self, delivery: Delivery) -> Option<Delivery> {
        let Some(key) = &delivery.metadata.key else {
            return Some(delivery);
        };
        match self.busy.entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(delivery);
                None
            }
            Entry::Vacant(lane) => {
                lane.insert(VecDeque::new());
                Some(delivery)
            }
        }
    }

    /// The message with `key` finished: returns the next one of that key, which may start now.
    pub(crate) fn release(&mut self, key: &str) -> Option<Delivery> {
        let next = self.busy.get_mut(key)?.pop_front();
        if next.is_none() {
            self.busy.remove(key);
        }
        next
    }
}
