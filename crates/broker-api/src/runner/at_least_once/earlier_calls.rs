//! [`EarlierCalls`]: how many times the handler already failed on messages that came back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::message::MessageId;

/// The most messages remembered; the oldest is forgotten first.
const REMEMBERED: usize = 256;

/// How long a message is remembered: one that did not come back by then went to another
/// member, or its broker gave up on it.
const KEPT_FOR: Duration = Duration::from_secs(600);

/// Handler calls made on messages whose retries stopped because their delivery was no longer
/// live (see [`Delivery::is_live`](crate::Delivery::is_live)), by message id.
///
/// When such a message comes back to this subscription within [`KEPT_FOR`], its retries go on
/// from where they stopped, instead of starting afresh: with rebalances more frequent than a
/// full retry cycle, a message that always fails would otherwise never be dead-lettered. Its
/// first attempt back is made before the count is looked at, so a message dropped during its
/// last allowed call gets one call more. A message without an id, or that comes back to
/// another process, starts afresh. Settling a message forgets it; while nothing is
/// remembered, that is one atomic load.
#[derive(Debug, Default)]
pub(super) struct EarlierCalls {
    count: AtomicUsize,
    remembered: Mutex<VecDeque<Remembered>>,
}

#[derive(Debug)]
struct Remembered {
    id: MessageId,
    calls: u32,
    since: Instant,
}

impl EarlierCalls {
    /// Remembers that the handler was called `calls` times on message `id` (the most of the
    /// counts of its deliveries, when two overlapped).
    pub(super) fn remember(&self, id: Option<&MessageId>, calls: u32) {
        let Some(id) = id else {
            return;
        };
        let mut remembered = self.lock();
        let since = Instant::now();
        match remembered.iter_mut().find(|known| known.id == *id) {
            Some(known) => {
                known.calls = known.calls.max(calls);
                known.since = since;
            }
            None => {
                if remembered.len() == REMEMBERED {
                    remembered.pop_front();
                }
                remembered.push_back(Remembered {
                    id: id.clone(),
                    calls,
                    since,
                });
            }
        }
        self.count.store(remembered.len(), Ordering::Release);
    }

    /// The handler calls made on message `id` before it came back, forgetting them; 0 for a
    /// message not remembered.
    pub(super) fn take(&self, id: Option<&MessageId>) -> u32 {
        let Some(id) = id else {
            return 0;
        };
        if self.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut remembered = self.lock();
        let now = Instant::now();
        remembered.retain(|known| now.duration_since(known.since) < KEPT_FOR);
        let calls = match remembered.iter().position(|known| known.id == *id) {
            Some(index) => remembered.remove(index).map_or(0, |known| known.calls),
            None => 0,
        };
        self.count.store(remembered.len(), Ordering::Release);
        calls
    }

    /// Forgets message `id`, settled.
    pub(super) fn forget(&self, id: Option<&MessageId>) {
        self.take(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Remembered>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
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
        calls.remember(Some(&first), 3);
        calls.remember(Some(&first), 2);
        calls.remember(None, 9);
        assert_eq!(calls.take(Some(&first)), 3, "the most of the counts");
        assert_eq!(calls.take(Some(&first)), 0, "taken once");
        assert_eq!(calls.take(None), 0);
        for i in 0..=REMEMBERED {
            calls.remember(Some(&MessageId::from(i.to_string())), 1);
        }
        assert_eq!(calls.take(Some(&MessageId::from("0"))), 0, "forgotten");
        let last = MessageId::from(REMEMBERED.to_string());
        calls.forget(Some(&last));
        assert_eq!(calls.take(Some(&last)), 0, "settled");
        assert_eq!(calls.take(Some(&MessageId::from("1"))), 1);
    }
}
