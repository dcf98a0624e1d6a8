//! [`Answers`]: the task of a topic that hears its client's answers and fills the
//! confirmations.
//!
//! Every message handed to a topic's client is given to the topic's task with its [`Room`] in the
//! [`PendingLimit`](super::PendingLimit); the caller gets a [`Confirmation`] that waits for a
//! slot the task fills. The task awaits the answers whether or not anyone awaits the
//! confirmations: a message's room is given back as soon as the service answered it (or,
//! when it failed, once it was published again or given up), so a caller that sends many
//! messages before it awaits their confirmations, or drops them, keeps the bound without
//! waiting for itself. A failed message is published again on a task of its own (see
//! [`Publishers::retry`](super::Publishers)).

use std::sync::{Arc, Weak};
use std::task::Waker;

use broker_api::{Confirmation, Error, Message, Receipt, ReceiptSlot, Result};
use futures::FutureExt;
use google_cloud_pubsub::error::PublishError;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::client::Published;
use super::pending::Room;
use super::{receipt, Publishers, TopicPublisher};
use crate::error::{publish_error, BACKEND};

/// Where the messages handed to a topic's client go to be answered. The task ends once this
/// is dropped (with its topic's publisher) and every message it holds was answered.
#[derive(Debug)]
pub(super) struct Answers {
    queue: mpsc::UnboundedSender<Waiting>,
    /// Counts every message until its confirmation is filled: closing waits for them.
    unsettled: TaskTracker,
}

/// A message with a client, waiting for its answer.
struct Waiting {
    published: Published,
    sent: Sent,
}

/// What answering a message takes: the message, its topic, its room, its confirmation.
struct Sent {
    publisher: Arc<TopicPublisher>,
    message: Message,
    room: Room,
    reply: Reply,
}

impl Answers {
    /// Starts the task on `runtime`. It publishes failed messages again through
    /// `publishers` while they are alive, and fails them once they are gone. Every message
    /// counts in `unsettled` until its confirmation is filled.
    pub(super) fn start(
        runtime: &Handle,
        publishers: Weak<Publishers>,
        unsettled: TaskTracker,
    ) -> Self {
        let (queue, incoming) = mpsc::unbounded_channel();
        runtime.spawn(answer(incoming, publishers));
        Answers { queue, unsettled }
    }

    /// The confirmation of `message`, handed to `publisher`'s client as `published`; the
    /// message keeps `room` until it is answered.
    pub(super) fn confirm(
        &self,
        publisher: Arc<TopicPublisher>,
        message: Message,
        published: Published,
        room: Room,
    ) -> Confirmation {
        let slot = Arc::new(ReceiptSlot::default());
        let sent = Sent {
            publisher,
            message,
            room,
            reply: Reply {
                slot: Some(Arc::clone(&slot)),
                _unsettled: self.unsettled.token(),
            },
        };
        // The task outlives every sender; should it be gone (its runtime shut down), the
        // returned message fails its confirmation as it is dropped.
        let _ = self.queue.send(Waiting { published, sent });
        Confirmation::shared(slot)
    }
}

/// The task of one topic: settles its messages in the order they were sent, each once its
/// answer came.
///
/// The queue is the only place messages wait: the task takes the oldest, settles it once
/// answered, and takes the next. Whoever awaits the confirmations settled meanwhile is woken
/// only when the task is about to wait (for an answer or for a message), so that under load it
/// wakes them once per batch the service answers, not once per message. The client answers a
/// topic's messages about in the order they were sent; one answered late delays the topic's
/// confirmations after it: a batch retried by the client, or, as the client batches each
/// ordering key on its own, a key's batch that waits for its delay while others fill up.
/// Settling in the order of the answers instead (`FuturesUnordered`) registered a waker for
/// every message and woke the task for each answer: +0.9 µs of client CPU a message.
async fn answer(mut incoming: mpsc::UnboundedReceiver<Waiting>, publishers: Weak<Publishers>) {
    let mut woken = Vec::new();
    loop {
        let mut oldest = match incoming.try_recv() {
            Ok(oldest) => oldest,
            Err(_) => {
                woken.drain(..).for_each(Waker::wake);
                match incoming.recv().await {
                    Some(oldest) => oldest,
                    // Every sender is gone and every message settled.
                    None => return,
                }
            }
        };
        let answer = match (&mut oldest.published).now_or_never() {
            Some(answer) => answer,
            None => {
                woken.drain(..).for_each(Waker::wake);
                (&mut oldest.published).await
            }
        };
        woken.extend(settle(answer, oldest.sent, &publishers));
    }
}

/// Confirms an answered message, returning the waker of whoever awaits the confirmation, or
/// publishes a failed one again on a task of its own (closing waits for it), which confirms
/// it when done.
#[must_use = "the waiter sleeps until the returned waker is woken"]
fn settle(
    answer: std::result::Result<String, PublishError>,
    sent: Sent,
    publishers: &Weak<Publishers>,
) -> Option<Waker> {
    let Sent {
        publisher,
        message,
        room,
        reply,
    } = sent;
    match (answer, publishers.upgrade()) {
        (Ok(server_id), _) => reply.store(Ok(receipt(message, server_id))),
        (Err(err), Some(publishers)) => {
            let background = publishers.background.clone();
            background.spawn(async move {
                let result = publishers.retry(publisher, message, err, room).await;
                if let Some(waiter) = reply.store(result) {
                    waiter.wake();
                }
            });
            None
        }
        (Err(err), None) => reply.store(Err(publish_error(err, &publisher.name))),
    }
}

/// A confirmation's slot: filled with the message's answer, or failed `Closed` when dropped
/// unfilled (the task answering it was dropped with its runtime).
struct Reply {
    slot: Option<Arc<ReceiptSlot>>,
    _unsettled: TaskTrackerToken,
}

impl Reply {
    /// Fills the slot; returns the waker of whoever awaits it, to be woken.
    #[must_use = "the waiter sleeps until the returned waker is woken"]
    fn store(mut self, result: Result<Receipt>) -> Option<Waker> {
        self.slot.take().and_then(|slot| slot.store(result))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.fill(Err(Error::closed(
                "the runtime of the Pub/Sub backend shut down before the service answered; \
                 the message may or may not have been published",
            )
            .backend(BACKEND)
            .operation("publish")));
        }
    }
}
