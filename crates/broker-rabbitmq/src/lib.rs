//! # broker-rabbitmq
//!
//! The RabbitMQ backend of the broker API, over [lapin](https://docs.rs/lapin) (AMQP 0-9-1).
//! Services do not use it directly: the `broker` facade connects it when the configuration
//! says `kind = "rabbitmq"`, from the `[rabbitmq]` section ([`RabbitMqConfig`]).
//!
//! ## Wire mapping
//!
//! What this backend writes, other AMQP programs (the management UI, other languages) read, and
//! the other way round:
//!
//! | library | RabbitMQ |
//! | --- | --- |
//! | topic `t` | durable `topic` exchange `t` |
//! | group `g` | durable queue `t.g` bound to `t` with `#` ([`broker_api::naming::group_resource`]); quorum by default ([`QueueType`]), `x-single-active-consumer: true` |
//! | key | routing key (no key: `""`, which `#` matches too) |
//! | headers | AMQP `headers` table, long-string values |
//! | message id | `message_id` property |
//! | content type | `content_type` property |
//! | timestamp / publish time | `timestamp` property (whole seconds) |
//! | — | `delivery_mode` 2 (persistent) |
//! | dead letters of `g` on `t` | queue `t.g.dlq` (on exchange `t.g.dlq`) |
//!
//! A message another program published without `message_id` is delivered with
//! `message_id: None`. On delivery, quorum queues' `x-delivery-count` header becomes
//! [`Metadata::attempt`](broker_api::Metadata) (count + 1); the position is
//! [`Position::Amqp`](broker_api::Position) (delivery tag, redelivered flag, exchange, routing
//! key).
//!
//! ## Guarantees ([`Capabilities`])
//!
//! | capability | value | why |
//! | --- | --- | --- |
//! | `new_group_reads_history` | false | a queue only receives messages published after it exists: declare groups with their topic (`[topics.<name>] groups = [...]`), which the facade creates at connect |
//! | `per_key_order` | true | each group queue has a single active consumer, so one member consumes at a time, in queue order |
//! | `members_share_work` | false | the other members of a group are standbys that take over when the active one leaves |
//! | `start_from_latest` | true | a new queue starts empty, so `earliest` and `latest` both mean "from when the group was created"; an existing group resumes where it was |
//! | `survives_restart` | true | durable exchanges and queues, persistent messages, publisher confirms |
//! | `delivery_attempt` | quorum queues only | from `x-delivery-count` |
//! | `partitions`, `list_topics` | false | AMQP has neither (listing would need the management API) |
//! | `delete_topic` | true | deletes the exchange and the group queues of it this process declared or used; queues other processes made for other groups are left, unbound; a missing exchange is `NotFound` (RabbitMQ itself would say nothing) |
//! | `max_payload_bytes` | `rabbitmq.max_message_size` (16 MiB) | RabbitMQ closes the channel of a larger publish, so larger payloads are refused before sending |
//!
//! ## Publishing
//!
//! Publishes go out with publisher confirms on a confirm channel per topic, many in flight: a
//! send hands the message to lapin and returns its confirmation; it waits only when
//! `rabbitmq.confirm_window` publishes are unconfirmed. Messages are `mandatory`: one that no
//! group queue takes (a topic nobody declared a group for) is returned by RabbitMQ and fails
//! with [`ErrorKind::Rejected`](broker_api::ErrorKind), as does a `basic.nack`. With
//! auto-provisioning on, the first publish to a topic declares its exchange; with it off, a
//! missing exchange is [`ErrorKind::NotFound`](broker_api::ErrorKind), checked before the first
//! publish.
//!
//! ## Subscribing
//!
//! Each subscription consumes on a channel of its own with `basic.qos(prefetch)` — the
//! subscription's `max_in_flight`, or `rabbitmq.prefetch` when that is smaller — so at most
//! that many deliveries are unacknowledged. Acknowledging sends `basic.ack`, rejecting `basic.nack` with
//! requeue; a delivery dropped unsettled is rejected. Closing the stream closes its channel:
//! RabbitMQ gives every unacknowledged message back to the queue.
//!
//! ## Dead letters
//!
//! Dead letters go through the shared runner of `broker-api`, like on every backend: it creates
//! the topic `<t>.<g>.dlq` with its group `g` (whose queue is `<t>.<g>.dlq`, per
//! [`group_resource`](broker_api::naming::group_resource)) and publishes there with the reason
//! headers. RabbitMQ's own dead-letter exchanges are not used, so that retries, reasons and
//! dead-letter topics work the same on every broker through one code path.
//!
//! ## Reconnecting
//!
//! A backend holds two connections (count them against a user's or virtual host's connection
//! limit): one publishes, the other consumes and declares. RabbitMQ
//! blocks a connection that publishes during a resource alarm and reads nothing more from it;
//! acknowledgements on their own connection still flow, so subscriptions go on draining their
//! queues while publishes wait.
//!
//! A RabbitMQ restart or a dropped connection is survived: a supervisor reconnects with
//! exponential backoff (`rabbitmq.reconnect`), logging each attempt and why, and declares again
//! the topology this process declared. Publishers reopen their confirm channels and publish
//! again what was in flight at the drop (within `rabbitmq.retry_timeout`, else the publish
//! fails: a message is never reported published without a confirm, and may be stored twice).
//! Subscriptions consume again by themselves; deliveries received before the drop are not
//! handed out any more, and RabbitMQ delivers them again; acknowledging one already handed
//! out fails with a `Connection` error saying so. An `at_most_once` stream acknowledges a
//! message just before yielding it: if the connection drops while that acknowledgement is on
//! its way, RabbitMQ delivers the message again and the stream yields it twice (the window is
//! one frame's trip to the broker; consuming without acknowledgements would close it, but then
//! RabbitMQ pushes without bound and `max_in_flight` no longer bounds memory). A
//! consumer RabbitMQ cancels (its queue deleted by someone else) consumes again, declaring the
//! queue; one whose topic this backend deleted ends.
//!
//! ## Limits
//!
//! Queue names (`<topic>.<group>`), routing keys, message ids, content types and header names
//! are AMQP short strings: at most 255 bytes. A message's properties (headers, id, content
//! type) travel in one frame of at most the connection's `frame_max` (131 072 bytes by
//! default); a message whose properties are larger is refused before it is sent. Each topic
//! published to holds one channel of the
//! publishing connection, each subscription one of the consuming connection (RabbitMQ allows
//! 2047 per connection by default). A publish retried after a connection drop can
//! land after messages sent later, so per-key order holds between reconnects, not across one
//! where a publish of that key was in flight. A resource alarm (memory, disk) holds publishes
//! until it clears: a publish unconfirmed after
//! `rabbitmq.publish_timeout` fails with `Timeout`, and closing the backend meanwhile fails
//! those still unconfirmed after `rabbitmq.close_timeout` (`Closed`); either may or may not
//! have been stored. On RabbitMQ 4, quorum queues give up
//! on a message rejected 20 times (their default delivery limit), and these queues have no
//! dead-letter exchange: the library's runners retry in process instead of rejecting, but a
//! message requeued at every close or restart (a handler that never succeeds with
//! dead-lettering off, a manual `nack` loop, one sent ahead to a closing subscription at every
//! close) is dropped by the broker after 20 deliveries.

mod channel;
mod config;
mod error;
mod in_flight;
mod link;
mod metadata;
mod poll;
mod publisher;
mod subscriber;
mod topology;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_api::completion::Completion;
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, ConnectOptions, Message, Result,
    SubscribeRequest, TopicSpec,
};
use tokio::time::Instant;

pub use config::{QueueType, RabbitMqConfig, ReconnectBackoff, DEFAULT_URI};

/// The lapin crate this backend is built on, for programs that need raw AMQP next to it
/// (tests that publish as another program would, benchmarks against the raw client).
pub use lapin;

use crate::channel::{close_channel, scratch_channel};
use crate::config::Settings;
use crate::link::{Link, OwnedLink, Role};
use crate::publisher::Publisher;
use crate::subscriber::Subscription;
use crate::topology::Topology;

/// The RabbitMQ backend: two AMQP connections, each kept up by a supervisor, one for every
/// publish of the broker handle, the other for its subscriptions and declarations (RabbitMQ
/// blocks a publishing connection during a resource alarm, acknowledgements included).
pub struct RabbitMqBackend {
    settings: Arc<Settings>,
    publishing: OwnedLink,
    consuming: OwnedLink,
    topology: Arc<Topology>,
    publisher: Publisher,
    closing: AtomicBool,
}

impl RabbitMqBackend {
    /// Connects to the broker of `config`.
    ///
    /// Fails with an [`ErrorKind::Config`](broker_api::ErrorKind) error for an invalid
    /// configuration (naming the key, never the password), with
    /// [`ErrorKind::Connection`](broker_api::ErrorKind) naming the endpoint when the broker
    /// cannot be reached within `connect_timeout`, and with
    /// [`ErrorKind::Rejected`](broker_api::ErrorKind) when it refuses the credentials.
    pub async fn connect(
        config: RabbitMqConfig,
        options: ConnectOptions,
    ) -> Result<RabbitMqBackend> {
        let settings = Arc::new(config.settings()?);
        let topology = Arc::new(Topology::new(
            settings.config.queue_type,
            options.auto_provision,
        ));
        let (publishing, consuming) = match tokio::join!(
            Link::connect(Role::Publishing, settings.clone(), topology.clone()),
            Link::connect(Role::Consuming, settings.clone(), topology.clone()),
        ) {
            (Ok(publishing), Ok(consuming)) => (publishing, consuming),
            // The one that connected is abandoned as it is dropped.
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        tracing::debug!(endpoint = %settings.endpoint, "connected to RabbitMQ");
        let publisher =
            Publisher::new(publishing.clone(), topology.clone(), options.auto_provision);
        Ok(RabbitMqBackend {
            settings,
            publishing,
            consuming,
            topology,
            publisher,
            closing: AtomicBool::new(false),
        })
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.closing.load(Ordering::Acquire) || self.is_closed() {
            return Err(error::closed(operation));
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.publishing.is_closed() || self.consuming.is_closed()
    }

    /// Closes both connections, each within `timeout`.
    async fn close_links(&self, timeout: Duration) {
        tokio::join!(
            self.publishing.close(timeout),
            self.consuming.close(timeout)
        );
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.settings.config.retry_timeout
    }
}

#[async_trait]
impl Backend for RabbitMqBackend {
    fn kind(&self) -> &'static str {
        error::BACKEND
    }

    fn endpoint(&self) -> String {
        self.settings.endpoint.clone()
    }

    fn auto_provision(&self) -> bool {
        self.topology.auto_provision()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            new_group_reads_history: false,
            per_key_order: true,
            // Single active consumer: one member works, the others stand by.
            members_share_work: false,
            start_from_latest: true,
            survives_restart: true,
            delivery_attempt: self.settings.config.queue_type == QueueType::Quorum,
            partitions: false,
            list_topics: false,
            delete_topic: true,
            max_payload_bytes: Some(self.settings.config.max_message_size),
        }
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        self.publisher.send(topic, message)
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        self.check_open("subscribe")?;
        let subscription = Subscription::open(
            self.consuming.clone(),
            self.topology.clone(),
            &request,
            self.deadline(),
        )
        .await?;
        Ok(Box::new(subscription))
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        self.check_open("ensure topic")?;
        let deadline = self.deadline();
        let declaring = async {
            let session = self.consuming.session(deadline).await?;
            let channel = scratch_channel(&session.connection).await?;
            let result = self.topology.ensure_topic(&channel, spec).await;
            close_channel(&channel, "done").await;
            result
        };
        error::within(deadline, "ensure topic", declaring)
            .await
            .map_err(|e| e.operation("ensure topic"))
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open("delete topic")?;
        let deadline = self.deadline();
        let deleting = async {
            let session = self.consuming.session(deadline).await?;
            let channel = scratch_channel(&session.connection).await?;
            let result = self.topology.delete_topic(&channel, name).await;
            close_channel(&channel, "done").await;
            result
        };
        let result = error::within(deadline, "delete topic", deleting).await;
        if result.is_ok() {
            // Not the topology again: it forgot the topic as it deleted it, and what a
            // subscription declared for that topic since must stay known.
            self.publisher.drop_route(name).await;
        }
        result
    }

    async fn close(&self) -> Result<()> {
        let timeout = self.settings.config.close_timeout;
        if self.closing.swap(true, Ordering::AcqRel) {
            // Another close is under way; it may also have been given up (a caller's own
            // timeout), and would then never close the link: after waiting for it as long as
            // it waits for confirms, close the link here (idempotent).
            let both_closed = async {
                tokio::join!(self.publishing.closed(), self.consuming.closed());
            };
            if tokio::time::timeout(timeout, both_closed).await.is_err() {
                self.publisher.close(Duration::ZERO).await;
                self.close_links(timeout).await;
            }
            return Ok(());
        }
        if !self.publisher.close(timeout).await {
            tracing::warn!(
                endpoint = %self.settings.endpoint,
                "closing with publishes still unconfirmed after {}; they fail",
                humantime::format_duration(timeout)
            );
        }
        self.close_links(timeout).await;
        Ok(())
    }
}

impl fmt::Debug for RabbitMqBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBackend")
            .field("endpoint", &self.settings.endpoint)
            .field("queue_type", &self.settings.config.queue_type)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
