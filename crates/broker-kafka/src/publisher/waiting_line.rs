//! Sends waiting for room in librdkafka's queue, taken in the order they were made.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker_api::{Confirmation, Message, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::Publisher;

/// The sends waiting for room in librdkafka's queue, in the order they were made.
#[derive(Default)]
pub(super) struct WaitingLine {
    /// How many wait: while any does, a new send joins the line instead of overtaking it.
    len: AtomicUsize,
    /// Taken in turn (tokio's mutex is fair: first come, first served).
    turn: tokio::sync::Mutex<()>,
}

/// A send's place in the [`WaitingLine`], given up when it is done or dropped.
pub(super) struct Place<'a>(&'a AtomicUsize);

impl WaitingLine {
    pub(super) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub(super) fn join(&self) -> Place<'_> {
        self.len.fetch_add(1, Ordering::AcqRel);
        Place(&self.len)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Publisher {
    /// Queues a send behind those already waiting for room in librdkafka's queue, then retries
    /// it until it fits or the delivery timeout passed.
    pub(super) async fn enqueue_when_room(
        &self,
        topic: &str,
        message: Message,
        _place: Place<'_>,
    ) -> Result<Confirmation> {
        let deadline = Instant::now() + self.queue_wait;
        let _turn = self.waiting.turn.lock().await;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.try_enqueue(topic, &message) {
                Ok(key) => return Ok(self.reports.confirmation(key)),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(self.refused(topic, &message, error)),
            }
        }
    }
}
