//! Keeps same-key messages in order while different keys are handled concurrently.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::VecDeque;
use std::hash::BuildHasher;

use rustc_hash::FxHashMap;

use crate::delivery::Delivery;

/// The lane of a keyed message: the messages of one key run one after the other.
///
/// Named by the key's hash under the runner's own random hash keys, not by the key itself, so
/// that admitting and releasing a message allocate nothing. Keys whose hashes collide share a
/// lane: each keeps its order, they only wait for each other. Publishers cannot aim for a
/// collision, the hash keys being random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane(u64);

/// The deliveries waiting because an earlier message of their lane is still being handled.
#[derive(Default)]
pub(crate) struct KeyLanes {
    hash_keys: RandomState,
    /// By lane: the lanes are hashes already, mixed once more by FxHash (a multiplication).
    busy: FxHashMap<u64, VecDeque<Delivery>>,
}

impl KeyLanes {
    /// Returns the delivery, with its lane when it has a key, when it may start now; keeps it
    /// queued behind its lane otherwise.
    pub(crate) fn admit(&mut self, delivery: Delivery) -> Option<(Delivery, Option<Lane>)> {
        let Some(key) = &delivery.metadata.key else {
            return Some((delivery, None));
        };
        let lane = self.hash_keys.hash_one(key.as_str());
        match self.busy.entry(lane) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(delivery);
                None
            }
            Entry::Vacant(free) => {
                free.insert(VecDeque::new());
                Some((delivery, Some(Lane(lane))))
            }
        }
    }

    /// The running message of `lane` finished: returns the next one waiting in it, which may
    /// start now; the lane is free when none waits.
    pub(crate) fn release(&mut self, lane: Lane) -> Option<Delivery> {
        let next = self.busy.get_mut(&lane.0)?.pop_front();
        if next.is_none() {
            self.busy.remove(&lane.0);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::acker::Acker;
    use crate::delivery::Metadata;
    use crate::key::Key;

    fn delivery(key: Option<&str>, payload: &'static str) -> Delivery {
        let mut metadata = Metadata::new(Arc::from("orders"));
        metadata.key = key.map(Key::from);
        Delivery::new(
            Bytes::from_static(payload.as_bytes()),
            metadata,
            Acker::settled(),
        )
    }

    fn admitted(lanes: &mut KeyLanes, key: Option<&str>, payload: &'static str) -> Option<Lane> {
        let (started, lane) = lanes
            .admit(delivery(key, payload))
            .unwrap_or_else(|| panic!("{payload} should start at once"));
        assert_eq!(started.payload, payload);
        lane
    }

    #[test]
    fn a_key_runs_one_message_at_a_time_in_order() {
        let mut lanes = KeyLanes::default();
        let a = admitted(&mut lanes, Some("a"), "a1").expect("a keyed message has a lane");
        assert!(lanes.admit(delivery(Some("a"), "a2")).is_none(), "a1 runs");
        assert!(lanes.admit(delivery(Some("a"), "a3")).is_none(), "a1 runs");
        let b = admitted(&mut lanes, Some("b"), "b1").expect("a keyed message has a lane");
        assert_ne!(a, b, "another key runs meanwhile");
        assert!(admitted(&mut lanes, None, "unkeyed").is_none());

        let next = lanes.release(a).map(|d| d.payload);
        assert_eq!(next.as_deref(), Some(&b"a2"[..]));
        let next = lanes.release(a).map(|d| d.payload);
        assert_eq!(next.as_deref(), Some(&b"a3"[..]));
        assert!(lanes.release(a).is_none(), "nothing waits behind a3");
        admitted(&mut lanes, Some("a"), "a4");
        assert!(lanes.release(b).is_none());
        admitted(&mut lanes, Some("b"), "b2");
    }
}
