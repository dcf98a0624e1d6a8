//! [`EarlierCalls`]: how many times the handler already failed on messages that came back.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::message::MessageId;

/// The most messages remembered; the oldest is forgotten first.
const REMEMBERED: usize = 256;

/// Handler calls made on messages whose retries stopped because their delivery was no longer
/// live (see [`Delivery::is_live`](crate::Delivery::is_live)), by message id.
///
/// When such a message comes back to this subscription, its retries go on from where they
/// stopped, instead of starting afresh: with rebalances more frequent than a full retry cycle,
/// a message that always fails would otherwise never be dead-lettered. Only the failure path
/// touches it. A message without an id, or that comes back to another process, starts afresh.
#[derive(Debug, Default)]
pub(super) struct EarlierCalls(Mutex<VecDeque<(MessageId, u32)>>);

impl EarlierCalls {
    /// Remembers that the handler was called `calls` times on message `id`.
    pub(super) fn remember(&self, id: Option<&MessageId>, calls: u32) {
        let Some(id) = id else {
            return;
        };
        let mut remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        remembered.retain(|(known, _)| known != id);
        if remembered.len() == REMEMBERED {
            remembered.pop_front();
        }
        remembered.push_back((id.clone(), calls));
    }

    /// The handler calls made on message `id` before it came back (and forgets them); 0 for a
    /// message not remembered.
    pub(super) fn take(&self, id: Option<&MessageId>) -> u32 {
        let Some(id) = id else {
            return 0;
        };
        let mut remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match remembered.iter().position(|(known, _)| known == id) {
            Some(index) => remembered.remove(index).map_or(0, |(_, calls)| calls),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_taken_once_and_the_oldest_forgotten() {
        let calls = EarlierCalls::default();
        let first = MessageId::from("first");
        assert_eq!(calls.take(Some(&first)), 0);
        calls.remember(Some(&first), 2);
        calls.remember(Some(&first), 3);
        calls.remember(None, 9);
        assert_eq!(calls.take(Some(&first)), 3, "the latest count");
        assert_eq!(calls.take(Some(&first)), 0, "taken once");
        assert_eq!(calls.take(None), 0);
        for i in 0..=REMEMBERED {
            calls.remember(Some(&MessageId::from(i.to_string())), 1);
        }
        assert_eq!(calls.take(Some(&MessageId::from("0"))), 0, "forgotten");
        assert_eq!(
            calls.take(Some(&MessageId::from(REMEMBERED.to_string()))),
            1
        );
    }
}
