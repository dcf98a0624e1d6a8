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
    messages: Mutex<Vec<Message>>,
    /// The offset the next published message gets: the log's end plus the inbox's length.
    published: AtomicU64,
}

impl Inbox {
    /// Adds a message; returns its offset and whether the inbox is full.
    pub(crate) fn push(&self, message: Message) -> (u64, bool) {
        let mut messages = self.messages();
        messages.push(message);
        let offset = self.published.fetch_add(1, Ordering::SeqCst);
        (offset, messages.len() >= CAPACITY)
    }

    /// Takes every message, in order, leaving `empty` (a buffer to reuse) in their place.
    pub(crate) fn take(&self, empty: Vec<Message>) -> Vec<Message> {
        std::mem::replace(&mut *self.messages(), empty)
    }

    /// The offset the next published message gets.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// How many messages wait in the inbox.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.messages().len()
    }

    fn messages(&self) -> MutexGuard<'_, Vec<Message>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }
}
