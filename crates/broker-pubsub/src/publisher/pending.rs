//! [`PendingLimit`]: the bound on messages handed to the client and not answered yet.
//!
//! The client queues every publish on unbounded channels and has no flow control of its own
//! (google-cloud-pubsub 1.7): without this bound a producer faster than the service, or a
//! service that stops answering, would grow memory with everything it sends. Each message
//! takes [`Room`] in the limit before it is handed to the client and keeps it until it is
//! answered (see [`answers`](super::answers)); `send` waits while the limit is full.

use std::sync::Arc;

use broker_api::{Error, ErrorKind, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::BACKEND;

/// At most `max_messages` messages, and `max_bytes` bytes of them, handed to the client and
/// not answered yet.
#[derive(Debug)]
pub(crate) struct PendingLimit {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

/// A message's share of the [`PendingLimit`], given back when dropped.
#[derive(Debug)]
pub(super) struct Room {
    _message: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl PendingLimit {
    pub(crate) fn new(max_messages: u32, max_bytes: u32) -> Self {
        PendingLimit {
            messages: Arc::new(Semaphore::new(max_messages as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        }
    }

    /// Room for a message of `size` bytes, if there is some now.
    pub(super) fn try_reserve(&self, size: usize) -> Option<Room> {
        let message = Arc::clone(&self.messages).try_acquire_owned().ok()?;
        let bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.byte_permits(size))
            .ok()?;
        Some(Room {
            _message: message,
            _bytes: bytes,
        })
    }

    /// Room for a message of `size` bytes, once earlier messages were answered. A message
    /// larger than the byte limit waits until nothing else is pending.
    pub(super) async fn reserve(&self, size: usize) -> Result<Room> {
        let message = Arc::clone(&self.messages).acquire_owned().await;
        let bytes = Arc::clone(&self.bytes)
            .acquire_many_owned(self.byte_permits(size))
            .await;
        match (message, bytes) {
            (Ok(message), Ok(bytes)) => Ok(Room {
                _message: message,
                _bytes: bytes,
            }),
            // Not expected: the semaphores are never closed.
            _ => Err(
                Error::new(ErrorKind::Closed, "the publish limit was closed")
                    .backend(BACKEND)
                    .operation("publish"),
            ),
        }
    }

    fn byte_permits(&self, size: usize) -> u32 {
        u32::try_from(size).map_or(self.max_bytes, |size| size.min(self.max_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_bounded_by_messages_and_bytes_and_given_back() {
        let limit = PendingLimit::new(2, 100);
        let first = limit.try_reserve(10).expect("room for one");
        let second = limit.try_reserve(10).expect("room for two");
        assert!(limit.try_reserve(10).is_none(), "a third message");
        drop(first);
        assert!(limit.try_reserve(91).is_none(), "90 bytes left of 100");
        let third = limit.try_reserve(90).expect("90 bytes fit");
        drop((second, third));
        // Larger than the whole limit: takes all of it.
        let huge = limit
            .try_reserve(1_000)
            .expect("alone, a huge message fits");
        assert!(limit.try_reserve(1).is_none());
        drop(huge);
        assert!(limit.try_reserve(100).is_some());
    }
}
