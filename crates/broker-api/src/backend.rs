//! The object-safe interface every backend implements.
//!
//! Users do not call it directly: [`Broker`](crate::Broker), [`Publisher`](crate::Publisher) and
//! [`Subscriber`](crate::Subscriber) wrap an `Arc<dyn Backend>` and add types, retries and
//! dead letters once for every backend. An adapter only maps these calls to its client.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;
use crate::completion::Completion;
use crate::confirmation::Confirmation;
use crate::delivery::{Delivery, Position};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId};

/// The broker's confirmation that it took responsibility for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id of the published message.
    pub message_id: MessageId,
    /// Where the broker stored it, when it says (Kafka partition/offset, memory offset).
    pub position: Position,
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// From the earliest message the broker still holds for the group.
    #[default]
    Earliest,
    /// Only messages published after the group was created.
    Latest,
}

/// What a backend needs to open a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeRequest {
    /// The topic to read.
    pub topic: String,
    /// The consumer group: every group gets every message, members of a group share them.
    pub group: String,
    /// Where the group starts when it is new. Existing groups resume where they were.
    pub start_from: StartFrom,
    /// The most deliveries handed out and not yet settled; the backend fetches no more.
    pub max_in_flight: usize,
}

impl SubscribeRequest {
    /// A request for `group` on `topic`, from the earliest message, 256 in flight.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        SubscribeRequest {
            topic: topic.into(),
            group: group.into(),
            start_from: StartFrom::Earliest,
            max_in_flight: 256,
        }
    }

    /// Sets where a new group starts.
    pub fn start_from(mut self, start_from: StartFrom) -> Self {
        self.start_from = start_from;
        self
    }

    /// Sets the in-flight limit (at least 1).
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }
}

/// A topic and the groups that must exist with it.
///
/// On RabbitMQ and Pub/Sub a message is kept only for the queues/subscriptions that exist when it
/// is published; declaring the groups here creates them up front so nothing published early is
/// lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicSpec {
    /// The topic name.
    pub name: String,
    /// Partitions, where the broker has them; the broker's default when absent.
    pub partitions: Option<u32>,
    /// Groups to create with the topic.
    pub groups: Vec<String>,
}

impl TopicSpec {
    /// A topic with no declared groups and default partitions.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: None,
            groups: Vec::new(),
        }
    }

    /// Sets the number of partitions.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Adds a group to create with the topic.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }
}

/// Settings every backend receives at connect time, from the top level of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Create missing topics, groups and dead-letter topics when they are first used (and the
    /// topics declared in the configuration at connect). When false, using a topic that does not
    /// exist is an [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) error.
    pub auto_provision: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            auto_provision: true,
        }
    }
}

impl ConnectOptions {
    /// Sets whether missing topics and groups are created.
    pub fn auto_provision(mut self, auto_provision: bool) -> Self {
        self.auto_provision = auto_provision;
        self
    }
}

/// The deliveries of one subscription, as a [`Stream`], plus a graceful close.
///
/// The stream yields at most `max_in_flight` unsettled deliveries; it survives reconnects by
/// itself and yields an error only when the subscription cannot continue, then ends. It also ends
/// when the backend is closed.
pub trait DeliveryStream: Stream<Item = Result<Delivery>> + Send + Unpin + 'static {
    /// Says that the subscription is closing: it takes no more deliveries and lets those it
    /// holds finish before [`close`](Self::close). Deliveries dropped unsettled from now on
    /// are delivered again to the group after the close, as when the stream is closed: a
    /// backend that rejects a dropped delivery at once must not let that rejection undo the
    /// acknowledgements of handlers still finishing (Kafka rewinds the whole partition).
    /// Default: nothing to do.
    fn stop_intake(&mut self) {}

    /// Stops intake and leaves the group: acknowledgements already given are committed,
    /// deliveries not acknowledged are delivered again to the group later. Idempotent.
    fn close(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// A boxed [`DeliveryStream`].
pub type BoxDeliveryStream = Box<dyn DeliveryStream>;

/// A message broker, as an adapter sees it.
///
/// Implementations must be cheap to share (`Arc<dyn Backend>`) and safe to call concurrently.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The backend's short name: "memory", "kafka", "rabbitmq", "pubsub".
    fn kind(&self) -> &'static str;

    /// Where it connects, for humans, without credentials.
    fn endpoint(&self) -> String;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Whether it creates missing topics and groups on first use
    /// ([`ConnectOptions::auto_provision`]). Default: true.
    fn auto_provision(&self) -> bool {
        true
    }

    /// Hands `message` to the broker for `topic`, in call order.
    ///
    /// The returned future resolves once the message is queued in the client (it waits when the
    /// client's queue is full); the [`Confirmation`] it yields resolves when the broker has
    /// confirmed the message, or fails. Many confirmations may be pending at once. Transient
    /// failures are retried within a bounded time before the confirmation fails. A message is
    /// never confirmed that the broker did not take.
    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation>;

    /// Opens a subscription for a group.
    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream>;

    /// Creates the topic and its groups when they do not exist; does nothing when they do.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()>;

    /// The topics the broker holds.
    async fn list_topics(&self) -> Result<Vec<String>> {
        Err(Error::unsupported(format!(
            "listing topics is not supported on {}",
            self.kind()
        ))
        .backend(self.kind())
        .operation("list topics"))
    }

    /// Deletes a topic and its groups. A topic that does not exist is a `NotFound` error.
    async fn delete_topic(&self, name: &str) -> Result<()> {
        let _ = name;
        Err(Error::unsupported(format!(
            "deleting topics is not supported on {}",
            self.kind()
        ))
        .backend(self.kind())
        .operation("delete topic"))
    }

    /// Stops all subscriptions, flushes pending publishes and disconnects. Later calls fail with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed). Idempotent.
    async fn close(&self) -> Result<()>;
}

/// A shared backend.
pub type SharedBackend = Arc<dyn Backend>;
