//! [`EarlierCalls`]: how many times the handler already failed on messages that came back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::delivery::{Metadata, Position};
use crate::message::MessageId;

/// The most messages remembered; the one remembered longest ago is forgotten first.
const REMEMBERED: usize = 256;

/// How long a message is remembered: one that did not come back by then went to another
/// member, or its broker gave up on it.
const KEPT_FOR: Duration = Duration::from_secs(600);

/// Handler calls made on messages whose retries stopped because their delivery was no longer
/// live (see [`Delivery::is_live`](crate::Delivery::is_live)), by message id, or for a message
/// without one by its position where that stays the same across deliveries (Kafka partition
/// and offset, Pub/Sub message, in-memory offset).
///
/// When such a message comes back to this subscription within [`KEPT_FOR`], its retries go on
/// from where they stopped, instead of starting afresh: with rebalances more frequent than a
/// full retry cycle, a message that always fails would otherwise never be dead-lettered. Its
/// first attempt back is made before the count is looked at, so a message dropped during its
/// last allowed call gets one call more. A RabbitMQ message without an id, or a message that
/// comes back to another process, starts afresh.
///
/// Settling a message forgets it: while nothing is remembered that is one atomic load, while
/// something is, a lock and a lookup. A delivery that was still retrying when its redelivery
/// settled (the concurrent runner, a message without a key) remembers its count when it
/// stops, until the entry expires.
#[derive(Debug)]
pub(super) struct EarlierCalls {
    count: AtomicUsize,
    remembered: Mutex<Remembering>,
    kept_for: Duration,
}

impl Default for EarlierCalls {
    fn default() -> Self {
        EarlierCalls::keeping_for(KEPT_FOR)
    }
}

/// What tells a message's deliveries apart from other messages'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity {
    Id(MessageId),
    At(Position),
}

impl Identity {
    /// The message's id, else its position when that identifies it across deliveries.
    fn of(metadata: &Metadata) -> Option<Identity> {
        if let Some(id) = &metadata.message_id {
            return Some(Identity::Id(id.clone()));
        }
        match metadata.position {
            Position::Memory { .. } | Position::Kafka { .. } | Position::PubSub(_) => {
                Some(Identity::At(metadata.position.clone()))
            }
            // A delivery tag names one delivery.
            Position::Amqp(_) | Position::Unknown => None,
        }
    }
}

#[derive(Debug, Default)]
struct Remembering {
    by_id: HashMap<Identity, Remembered>,
    /// Numbers the remembering, in order.
    serial: u64,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    calls: u32,
    since: Instant,
    serial: u64,
}

impl EarlierCalls {
    /// Remembers messages for `kept_for` ([`KEPT_FOR`] by default).
    fn keeping_for(kept_for: Duration) -> Self {
        EarlierCalls {
            count: AtomicUsize::new(0),
            remembered: Mutex::default(),
            kept_for,
        }
    }

    /// Remembers that the handler was called `calls` times on the message (the most of the
    /// counts of its deliveries, when two overlapped).
    pub(super) fn remember(&self, message: &Metadata, calls: u32) {
        let Some(id) = Identity::of(message) else {
            return;
        };
        let mut remembering = self.lock();
        let Remembering { by_id, serial } = &mut *remembering;
        let now = Instant::now();
        by_id.retain(|_, known| now.duration_since(known.since) < self.kept_for);
        if by_id.len() == REMEMBERED && !by_id.contains_key(&id) {
            let oldest = by_id
                .iter()
                .min_by_key(|(_, known)| known.serial)
                .map(|(oldest, _)| oldest.clone());
            if let Some(oldest) = oldest {
                by_id.remove(&oldest);
            }
        }
        *serial += 1;
        let entry = by_id.entry(id).or_insert(Remembered {
            calls: 0,
            since: now,
            serial: *serial,
        });
        entry.calls = entry.calls.max(calls);
        entry.since = now;
        entry.serial = *serial;
        self.count.store(by_id.len(), Ordering::Release);
    }

    /// The handler calls made on the message before it came back, forgetting them; 0 for a
    /// message not remembered.
    pub(super) fn take(&self, message: &Metadata) -> u32 {
        if self.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let Some(id) = Identity::of(message) else {
            return 0;
        };
        let mut remembering = self.lock();
        let calls = remembering
            .by_id
            .remove(&id)
            .filter(|known| known.since.elapsed() < self.kept_for)
            .map_or(0, |known| known.calls);
        self.count.store(remembering.by_id.len(), Ordering::Release);
        calls
    }

    /// Forgets the message, settled.
    pub(super) fn forget(&self, message: &Metadata) {
        self.take(message);
    }

    fn lock(&self) -> MutexGuard<'_, Remembering> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A message with id `text`.
    fn id(text: impl Into<String>) -> Metadata {
        let mut message = Metadata::new(Arc::from("orders"));
        message.message_id = Some(MessageId::from(text.into()));
        message
    }

    /// A message without an id, at `position`.
    fn at(position: Position) -> Metadata {
        let mut message = Metadata::new(Arc::from("orders"));
        message.position = position;
        message
    }

    #[test]
    fn calls_are_taken_once_and_the_oldest_forgotten() {
        let calls = EarlierCalls::default();
        assert_eq!(calls.take(&id("first")), 0);
        calls.remember(&id("first"), 3);
        calls.remember(&id("first"), 2);
        assert_eq!(calls.take(&id("first")), 3, "the most of the counts");
        assert_eq!(calls.take(&id("first")), 0, "taken once");
        for i in 0..REMEMBERED {
            calls.remember(&id(i.to_string()), 1);
        }
        // Remembered again: no longer the oldest.
        calls.remember(&id("0"), 2);
        calls.remember(&id("new"), 1);
        assert_eq!(calls.take(&id("1")), 0, "the oldest is forgotten");
        assert_eq!(calls.take(&id("0")), 2);
        calls.forget(&id("new"));
        assert_eq!(calls.take(&id("new")), 0, "settled");
        assert_eq!(calls.take(&id("2")), 1);
    }

    #[test]
    fn a_message_is_forgotten_once_kept_long_enough() {
        let calls = EarlierCalls::keeping_for(Duration::from_millis(50));
        calls.remember(&id("expired"), 2);
        calls.remember(&id("never taken"), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(calls.take(&id("expired")), 0, "expired when taken");
        calls.remember(&id("fresh"), 1);
        assert_eq!(
            calls.count.load(Ordering::Acquire),
            1,
            "remembering dropped the expired entries"
        );
    }

    #[test]
    fn a_message_without_an_id_is_known_by_a_lasting_position() {
        let calls = EarlierCalls::default();
        let kafka = Position::Kafka {
            partition: 1,
            offset: 7,
        };
        calls.remember(&at(kafka.clone()), 2);
        assert_eq!(
            calls.take(&at(Position::Kafka {
                partition: 1,
                offset: 8
            })),
            0
        );
        assert_eq!(calls.take(&at(kafka)), 2);
        // Nothing names these messages across deliveries.
        calls.remember(&at(Position::Unknown), 2);
        assert_eq!(calls.take(&at(Position::Unknown)), 0);
    }
}
