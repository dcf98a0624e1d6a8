//! Publishing through the client's batching publisher, one per topic, many messages in flight.
//!
//! `send` hands the message to the topic's publisher and returns its confirmation, which
//! [`answers`] fills when the service answered: nothing is awaited per message while the
//! [`PendingLimit`] has room (`send` waits for room when it has none). The first message to a
//! topic first makes sure the topic exists (created with auto-provisioning, looked up
//! without), once.
//!
//! A message that fails is published again, for up to another `publish_timeout` from its
//! first failure, when retrying can help: the client retries unreachable-service errors within its
//! own `publish_timeout` (they fail the confirmation when it runs out, not retried again here);
//! a topic that vanished (the emulator restarted) is re-created with the subscriptions this
//! backend knows, then the message is published again; a message held back because an earlier
//! one of its ordering key failed is published again once the key is resumed. Every failure
//! resumes its ordering key, so later messages with that key are not refused forever, whether
//! or not anyone awaits the confirmations ([`retry`]).
//!
//! A topic's client publisher is replaced once it served many ordering keys (see
//! [`client`]): the client keeps a task per key for as long as it lives.

mod answers;
mod client;
mod pending;
mod retry;

pub(crate) use self::pending::PendingLimit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use broker_api::completion::{self, Completion};
use broker_api::{
    Confirmation, Error, ErrorKind, IntoReceipt, Key, Message, MessageId, OnceReady, Position,
    PubSubPosition, Receipt, Result,
};
use google_cloud_pubsub::client::BasePublisher;

use self::answers::{Answers, Sent};
use self::client::TopicClient;
use self::pending::Room;
use rustc_hash::FxHashMap;
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::error::{closed, BACKEND};
use crate::mapping::{message_size, over_limits, to_pubsub};

/// The largest message the service accepts: data, ordering key and attributes together
/// (Pub/Sub's documented 10 MB message and publish request limit).
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;

/// Room kept for the key and attributes below [`MAX_MESSAGE_BYTES`].
const ATTRIBUTE_ALLOWANCE: usize = 16 * 1024;

/// The largest payload accepted: [`MAX_MESSAGE_BYTES`] less room for the key and attributes.
/// Larger payloads, and messages over [`MAX_MESSAGE_BYTES`] altogether, are rejected before
/// they are sent.
pub const MAX_PAYLOAD_BYTES: usize = MAX_MESSAGE_BYTES - ATTRIBUTE_ALLOWANCE;

/// Batching of the per-topic publishers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    pub(crate) max_messages: u32,
    pub(crate) max_bytes: u32,
    pub(crate) max_delay: Duration,
}

/// The publishers of one backend, one per topic, sharing one connection.
#[derive(Debug)]
pub(crate) struct Publishers {
    base: BasePublisher,
    admin: Arc<Admin>,
    batching: Batching,
    publish_timeout: Duration,
    /// Messages with the clients and not answered yet.
    pending: PendingLimit,
    /// Itself, for the topics' answering tasks, which publish failed messages again.
    me: Weak<Publishers>,
    /// Where the topics' answering tasks run.
    runtime: Handle,
    /// Looked up on every publish (FxHash: cheap on short names, which are not untrusted input).
    /// A message is handed to its client under the read lock, after `closed` was checked:
    /// closing sets `closed`, then drains the map under the write lock, so that each message is
    /// either refused or with its client before closing flushes the clients.
    topics: RwLock<FxHashMap<Arc<str>, Arc<TopicPublisher>>>,
    closed: AtomicBool,
    /// The messages not confirmed yet (also while published again after a failure), the
    /// replaced clients finishing what they hold, and the clients of deleted topics flushing:
    /// closing waits for them too.
    background: TaskTracker,
}

/// The publisher of one topic.
#[derive(Debug)]
struct TopicPublisher {
    name: Arc<str>,
    client: TopicClient,
    /// Fills the confirmations as the client answers: tasks for each topic, so that a
    /// message answered late (waiting for its batch, or retried by the client) delays no
    /// other topic's confirmations, and a keyed one no other key's.
    answers: Answers,
    /// Ready once the topic is known to exist; a failed check answers every first send
    /// that waited for it.
    provisioned: OnceReady,
    /// When the topic was last re-created after the service lost it, so that a burst of
    /// failed confirmations re-creates it once.
    recreated_at: Mutex<Option<Instant>>,
}

impl Publishers {
    /// The publishers; each topic's task answering its messages runs on the current runtime.
    pub(crate) fn start(
        base: BasePublisher,
        admin: Arc<Admin>,
        batching: Batching,
        publish_timeout: Duration,
        pending: PendingLimit,
    ) -> Arc<Self> {
        let background = TaskTracker::new();
        Arc::new_cyclic(|me| Publishers {
            base,
            admin,
            batching,
            publish_timeout,
            pending,
            me: me.clone(),
            runtime: Handle::current(),
            topics: RwLock::new(FxHashMap::default()),
            closed: AtomicBool::new(false),
            background,
        })
    }

    /// Queues `message` for `topic` and returns its confirmation (see the module docs).
    pub(crate) fn send<'a>(
        self: &Arc<Self>,
        topic: &'a str,
        message: Message,
    ) -> Completion<'a, Confirmation> {
        let size = match check_limits(topic, &message) {
            Ok(size) => size,
            Err(e) => return completion::ready(Err(e)),
        };
        let room = self.pending.try_reserve(size);
        let (publisher, room) = {
            let topics = self.open_topics();
            if self.closed.load(Ordering::Acquire) {
                return completion::ready(Err(closed("publish")));
            }
            match (topics.get(topic), room) {
                (Some(publisher), Some(room)) if publisher.provisioned.is_ready() => {
                    return completion::ready(Ok(self.publish(publisher, message, room)));
                }
                (publisher, room) => (publisher.map(Arc::clone), room),
            }
        };
        let this = Arc::clone(self);
        completion::boxed(async move {
            let room = match room {
                Some(room) => room,
                None => this.pending.reserve(size).await?,
            };
            let mut publisher = match publisher {
                Some(publisher) => publisher,
                None => this.topic(topic).ok_or_else(|| closed("publish"))?,
            };
            loop {
                publisher
                    .provisioned
                    .get_or_try(|| this.admin.ensure_topic(topic))
                    .await?;
                {
                    let topics = this.open_topics();
                    if this.closed.load(Ordering::Acquire) {
                        return Err(closed("publish"));
                    }
                    if topics
                        .get(topic)
                        .is_some_and(|p| Arc::ptr_eq(p, &publisher))
                    {
                        return Ok(this.publish(&publisher, message, room));
                    }
                }
                // The topic was deleted meanwhile (its publisher forgotten): provisioned
                // again, as for a message sent after the deletion.
                publisher = this.topic(topic).ok_or_else(|| closed("publish"))?;
            }
        })
    }

    /// Records that `topic` exists, so the first message skips the check.
    pub(crate) fn mark_provisioned(&self, topic: &str) {
        if let Some(publisher) = self.topic(topic) {
            publisher.provisioned.set_ready();
        }
    }

    /// Drops the publisher of a deleted topic: the next message provisions the topic again.
    /// What it still holds is flushed in the background (closing waits for it).
    pub(crate) fn forget(&self, topic: &str) {
        let Some(forgotten) = write(&self.topics).remove(topic) else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let client = forgotten.client.current();
            self.background.spawn(async move { client.flush().await });
        }
    }

    /// Refuses new messages, then waits (up to `timeout`) until every queued message was
    /// sent, answered and confirmed, every message being published again settled (it stops at
    /// its next pause, failing `Closed`), and every message held back while a replaced client
    /// finished was sent and answered by its successor (the replacement's task flushes it).
    pub(crate) async fn close(&self, timeout: Duration) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.background.close();
        // Taken once the messages being handed over are with their clients.
        let publishers: Vec<Arc<TopicPublisher>> = write(&self.topics)
            .drain()
            .map(|(_, publisher)| publisher)
            .collect();
        let clients: Vec<_> = publishers.iter().map(|p| p.client.current()).collect();
        let settled = async {
            futures::future::join_all(clients.iter().map(|c| c.flush())).await;
            // Replaced clients finish, then hand what they held back to their successors and
            // flush those.
            self.background.wait().await;
        };
        if tokio::time::timeout(timeout, settled).await.is_err() {
            tracing::warn!(
                ?timeout,
                "pending publishes were not all answered before the close timeout"
            );
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("pending publishes were not all answered within {timeout:?}"),
            )
            .backend(BACKEND)
            .operation("close"));
        }
        Ok(())
    }

    /// The topics' publishers, read locked: closing waits for the messages being handed over.
    fn open_topics(&self) -> RwLockReadGuard<'_, FxHashMap<Arc<str>, Arc<TopicPublisher>>> {
        read(&self.topics)
    }

    /// The publisher of `topic`, made on first use; `None` once closing began.
    fn topic(&self, topic: &str) -> Option<Arc<TopicPublisher>> {
        if let Some(publisher) = self.open_topics().get(topic) {
            return Some(Arc::clone(publisher));
        }
        let mut topics = write(&self.topics);
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let publisher = topics.entry(Arc::from(topic)).or_insert_with_key(|name| {
            let (base, path, batching) = (
                self.base.clone(),
                self.admin.topic_path(name),
                self.batching,
            );
            let client = TopicClient::new(move || {
                base.publisher(path.clone())
                    .set_message_count_threshold(batching.max_messages)
                    .set_byte_threshold(batching.max_bytes)
                    .set_delay_threshold(batching.max_delay)
                    .build()
            });
            Arc::new(TopicPublisher {
                name: Arc::clone(name),
                client,
                answers: Answers::start(&self.runtime, self.me.clone(), self.background.clone()),
                provisioned: OnceReady::default(),
                recreated_at: Mutex::new(None),
            })
        });
        Some(Arc::clone(publisher))
    }

    /// Hands `message` to the topic's client; it keeps `room` until answered.
    fn publish(
        &self,
        publisher: &Arc<TopicPublisher>,
        message: Message,
        room: Room,
    ) -> Confirmation {
        let (reply, confirmation) = match publisher.answers.reply(&message.id) {
            Ok(opened) => opened,
            Err(e) => return Confirmation::ready(Err(e)),
        };
        let pubsub = to_pubsub(&message);
        let keyed = !pubsub.ordering_key.is_empty();
        let published = publisher.client.publish(pubsub, &self.background);
        let sent = Sent {
            publisher: Arc::clone(publisher),
            message,
            room,
            reply,
        };
        publisher.answers.wait(published, sent, keyed);
        confirmation
    }
}

/// A message the service stored, as its answer came: made the message's receipt only when its
/// confirmation takes it (on the awaiting task, which mostly drops it soon after).
struct Answered {
    message_id: MessageId,
    key: Option<Key>,
    server_id: String,
}

impl Answered {
    fn new(message: Message, server_id: String) -> Self {
        let Message { id, key, .. } = message;
        Answered {
            message_id: id,
            key,
            server_id,
        }
    }
}

impl IntoReceipt for Answered {
    fn into_receipt(self) -> Receipt {
        Receipt {
            message_id: self.message_id,
            position: Position::PubSub(Box::new(PubSubPosition {
                message_id: self.server_id,
                ordering_key: self.key.filter(|k| !k.is_empty()),
            })),
        }
    }
}

/// Rejects a message the service would refuse for its size or its attributes, naming what and
/// the limit; returns the size of one it accepts, with its key and attributes.
fn check_limits(topic: &str, message: &Message) -> Result<usize> {
    let payload = message.payload.len();
    let total = message_size(message);
    let refused = if payload > MAX_PAYLOAD_BYTES {
        Some(format!(
            "the payload of message {} for topic {topic} is {payload} bytes; this backend \
             accepts at most {MAX_PAYLOAD_BYTES} bytes (Pub/Sub's {MAX_MESSAGE_BYTES}-byte \
             limit less room for the key and attributes)",
            message.id
        ))
    } else if total > MAX_MESSAGE_BYTES {
        Some(format!(
            "message {} for topic {topic} is {total} bytes with its key and attributes; \
             Pub/Sub accepts at most {MAX_MESSAGE_BYTES} bytes",
            message.id
        ))
    } else {
        over_limits(message).map(|problem| {
            format!(
                "message {} for topic {topic} cannot be published: {problem}",
                message.id
            )
        })
    };
    match refused {
        Some(text) => Err(Error::new(ErrorKind::Rejected, text)
            .backend(BACKEND)
            .operation("publish")),
        None => Ok(total),
    }
}

/// `lock` read, also after a panic while it was held.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// `lock` written, also after a panic while it was held.
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_are_rejected_naming_size_and_limit() {
        let fits = Message::new(vec![0u8; MAX_PAYLOAD_BYTES]).with_header("h", "v");
        check_limits("big", &fits).unwrap();
        let err = check_limits("big", &Message::new(vec![0u8; MAX_PAYLOAD_BYTES + 1])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let text = err.to_string();
        assert!(
            text.contains(&(MAX_PAYLOAD_BYTES + 1).to_string()),
            "{text}"
        );
        assert!(text.contains(&MAX_PAYLOAD_BYTES.to_string()), "{text}");
        let headers = Message::new(vec![0u8; MAX_PAYLOAD_BYTES])
            .with_header("big", "x".repeat(ATTRIBUTE_ALLOWANCE));
        let err = check_limits("big", &headers).unwrap_err();
        assert!(
            err.to_string().contains("with its key and attributes"),
            "{err}"
        );
    }
}
