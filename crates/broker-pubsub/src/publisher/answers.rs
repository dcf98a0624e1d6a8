//! [`Answers`]: the task that hears the clients' answers and fills the confirmations.
//!
//! Every message handed to a client is given to this task with its [`Room`] in the
//! [`PendingLimit`](super::PendingLimit); the caller gets a [`Confirmation`] that waits for a
//! slot the task fills. The task awaits the answers whether or not anyone awaits the
//! confirmations: a message's room is given back as soon as the service answered it (or,
//! when it failed, once it was published again or given up), so a caller that sends many
//! messages before it awaits their confirmations, or drops them, keeps the bound without
//! waiting for itself. A failed message is published again on a task of its own (see
//! [`Publishers::retry`](super::Publishers)).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::task::Waker;

use broker_api::{Confirmation, Error, Message, Receipt, ReceiptSlot, Result};
use futures::FutureExt;
use google_cloud_pubsub::error::PublishError;
use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::client::Published;
use super::pending::Room;
use super::{receipt, Publishers, TopicPublisher};
use crate::error::{publish_error, BACKEND};

/// Where the messages handed to the clients go to be answered. The task ends once this is
/// dropped and every message it holds was answered.
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
    /// Starts the task on the current runtime. It publishes failed messages again through
    /// `publishers` while they are alive, and fails them once they are gone. Every message
    /// counts in `unsettled` until its confirmation is filled.
    pub(super) fn start(publishers: Weak<Publishers>, unsettled: TaskTracker) -> Self {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(answer(incoming, publishers));
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

/// The task: settles the messages in the order they were sent, each once its answer came.
///
/// Only the oldest message's answer is awaited, and messages sent meanwhile are taken in
/// without waking the task: under load it wakes about once per batch the service answers,
/// not once per message. The client answers a topic's messages about in the order they were
/// sent; one answered late (retried by the client) delays the confirmations after it.
async fn answer(mut incoming: mpsc::UnboundedReceiver<Waiting>, publishers: Weak<Publishers>) {
    let mut waiting = VecDeque::new();
    let mut woken = Vec::new();
    loop {
        while let Ok(sent) = incoming.try_recv() {
            waiting.push_back(sent);
        }
        let Some(oldest) = waiting.front_mut() else {
            match incoming.recv().await {
                Some(sent) => {
                    waiting.push_back(sent);
                    continue;
                }
                // Every sender is gone and every message settled.
                None => return,
            }
        };
        let mut answer = Some((&mut oldest.published).await);
        // The answers that came with it are settled before anyone is woken: a caller awaiting
        // the confirmations in order wakes once per burst, not once per message.
        while let Some(answered) = answer {
            if let Some(Waiting { sent, .. }) = waiting.pop_front() {
                woken.extend(settle(answered, sent, &publishers));
            }
            answer = waiting
                .front_mut()
                .and_then(|next| (&mut next.published).now_or_never());
        }
        woken.drain(..).for_each(Waker::wake);
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
