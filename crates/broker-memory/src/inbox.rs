//! Where publishers append a topic's messages, apart from the log its readers hold locked while
//! they build deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use broker_api::Message;

/// Most messages an inbox holds: the publisher that fills it moves them into the log itself,
/// so that a topic nobody reads keeps to its retention.
pub(crate) const CAPACITY: usize = 1024;

/// The messages published to a topic and not yet moved into its log, in order.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    buffers: Mutex<Buffers>,
    /// The offset the next published message gets: the log's end plus the inbox's length.
    published: AtomicU64,
}

#[derive(Debug, Default)]
struct Buffers {
    /// The messages waiting, oldest first.
    filling: Vec<Message>,
    /// The buffer last taken, emptied and given back: the next one to fill, so that an inbox
    /// moved again and again allocates nothing.
    spare: Vec<Message>,
}

impl Inbox {
    /// Adds a message; returns its offset and whether the inbox is full.
    pub(crate) fn push(&self, message: Message) -> (u64, bool) {
        let mut buffers = self.buffers();
        buffers.filling.push(message);
        let offset = self.published.fetch_add(1, Ordering::SeqCst);
        (offset, buffers.filling.len() >= CAPACITY)
    }

    /// Takes every message, in order. Hand the emptied buffer back with
    /// [`Inbox::give_back`].
    pub(crate) fn take(&self) -> Vec<Message> {
        let buffers = &mut *self.buffers();
        let spare = std::mem::take(&mut buffers.spare);
        std::mem::replace(&mut buffers.filling, spare)
    }

    /// Keeps a buffer [`Inbox::take`] returned, once emptied, for the messages after next.
    pub(crate) fn give_back(&self, emptied: Vec<Message>) {
        self.buffers().spare = emptied;
    }

    /// The offset the next published message gets.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// How many messages wait in the inbox.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buffers().filling.len()
    }

    fn buffers(&self) -> MutexGuard<'_, Buffers> {
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
