//! Apache Kafka backend of the broker API, over rdkafka (librdkafka).
//!
//! Selected by `kind = "kafka"`; configured by the `[kafka]` section ([`KafkaConfig`]).
//!
//! # Mapping
//!
//! | API | Kafka |
//! | --- | --- |
//! | topic | topic (created through the admin API when auto-provisioning is on; credentials without the CREATE permission use the topics that exist) |
//! | group | consumer group (`group.id`) |
//! | key | record key: same key, same partition, so same-key messages stay in order |
//! | headers | record headers (UTF-8 values) |
//! | message id / content type | headers `message-id` / `content-type` |
//! | publish confirmation | delivery report of an idempotent `acks=all` producer |
//! | ack | offset marked handled; the contiguous handled prefix of each partition is committed |
//! | nack | the partition is rewound to its oldest unsettled message (the nacked one, or an earlier one still being handled): that message and every later one of the partition are delivered again |
//! | position | partition and offset |
//!
//! # Guarantees
//!
//! - A confirmation resolves only once every in-sync replica has the message. librdkafka
//!   retries transient failures (a broker restart) for up to
//!   [`KafkaConfig::delivery_timeout`], without duplicates or reordering (idempotence). A
//!   fatal error of the idempotent producer's sequence or id (the broker reports a sequence
//!   out of order, for one) stops it for good: the next publish replaces it with a new
//!   producer (a new producer id: ordering starts afresh), while the old one still gets the
//!   answers of what it had in flight; what it held queued fails as a temporary `Connection`
//!   error (it may or may not have been stored), to be published again. Other fatal errors (credentials not allowed to write
//!   idempotently) would stop any new producer too: publishes fail, saying why.
//! - Offsets are committed only up to the oldest unacknowledged message of each partition,
//!   every `auto.commit.interval.ms` (5 s by default), when partitions are revoked (sent
//!   from the rebalance callback without waiting for the answer, which would block the
//!   reading task: a new owner that fetches its position first gets some messages again) and
//!   synchronously when a subscription closes (a final commit the group refuses, as after
//!   a broker restart took this member out of it, is logged and its messages delivered again:
//!   close itself succeeds, as Kafka's own consumer does). A crash, a dropped delivery or a
//!   rebalance means redelivery, never loss. Groups rebalance cooperatively
//!   (`cooperative-sticky`): only the partitions that change owner are revoked. Acknowledging
//!   a delivery whose partition was revoked (or rewound by a nack) since it was read fails
//!   with a `Connection` error: the partition's owner gets the message again. The same
//!   applies to `at_most_once`, which yields that error instead of the value: a value is
//!   never yielded twice by a running subscription, but after a crash the group gets again
//!   what was acknowledged since the last commit (up to `auto.commit.interval.ms`).
//! - Records written by other programs are delivered whatever their headers: a header whose
//!   name is not UTF-8 (which rdkafka cannot read) is left out of the metadata and logged.
//! - Payloads up to 16 KiB are copied out of librdkafka into shared 64 KiB buffers (one
//!   allocation for many records): a payload kept after its handler (a `Bytes` value of a
//!   raw topic stored in a map) keeps its whole buffer alive. Copy it
//!   (`Bytes::copy_from_slice`) to keep it for long.
//! - A subscription hands out at most `max_in_flight` unsettled deliveries; its consumer stops
//!   reading at the limit, and librdkafka's prefetch is bounded in proportion to it
//!   ([`prefetch`]: 16 messages and 16 KiB per in-flight delivery, at least 1 MiB), so a
//!   subscription's memory follows `max_in_flight`, not the backlog. Behind a delivery left
//!   unsettled (a hung handler, a message a manual subscriber keeps) it reads on, since later
//!   deliveries settle and free their slots, but no further than 64 times `max_in_flight`
//!   messages: their offsets wait to be committed after it.
//! - A subscription's consumer is polled by its stream as it reads (records go from librdkafka
//!   to the handler on the reading task, no hand-off). While the stream does not read — at
//!   either limit above, while the application does not ask for the next delivery, or while
//!   a closing subscription lets its handlers finish — a task looks every second: it pauses
//!   the member's partitions and polls the consumer for rebalances and commit results, so that
//!   a member held at its limits (a message retried for minutes, say) lets its group rebalance
//!   within seconds and stays in it; reading again resumes the partitions, from the record
//!   after the last one handed out. So a member is not taken out of its group for being slow
//!   (`max.poll.interval.ms` does not apply): a handler that never returns keeps its
//!   partition, and that partition's commits, behind it, as does a stream kept but never read
//!   again (dropping it closes the subscription). Bound handlers in time.
//! - A new group reads from the earliest retained message, or, with `StartFrom::Latest`, from
//!   the end of each partition at the time `subscribe` was called. The start position is also
//!   librdkafka's `auto.offset.reset`: a group whose committed position is no longer in the
//!   log (retention deleted messages it had not handled) goes on from the oldest retained
//!   message with `Earliest`, from the end with `Latest`, as Kafka's own consumers do.
//! - A subscription ends with an error when its consumer fails for good (`Other`) or the
//!   broker refuses these credentials the group or the topic (`Rejected`: group, topic or
//!   cluster authorization, SASL authentication); other consumer errors are logged and
//!   retried by librdkafka.

mod ack;
mod admin;
mod config;
mod consumer;
mod context;
mod delivery;
mod error;
mod inbound;
mod keep_alive;
mod provision;
mod publisher;
mod subscriber;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, ConnectOptions, Error, ErrorKind,
    Message, Result, SubscribeRequest, TopicSpec,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;

pub use config::{
    prefetch, KafkaConfig, PREFETCH_BYTES_PER_IN_FLIGHT, PREFETCH_MESSAGES_PER_IN_FLIGHT,
};
/// The client crate this backend is built on, for tools and tests that need raw Kafka access.
pub use rdkafka;

use crate::admin::Admin;
use crate::error::{closed, BACKEND};
use crate::provision::Provisioner;
use crate::publisher::Publisher;

/// A connection to a Kafka cluster: one producer shared by every publisher, one consumer per
/// subscription, one admin client.
///
/// Made by [`KafkaBackend::connect`]; used through [`broker_api::Broker`]. librdkafka
/// reconnects by itself: while a broker is away, publishes wait (up to the delivery timeout)
/// and subscriptions pause, and what happens is logged as warnings under the `librdkafka`
/// target. The first publish to a topic this backend has not used yet looks the topic up
/// (or creates it) first, which fails after `connect_timeout` while the cluster is away.
pub struct KafkaBackend {
    config: KafkaConfig,
    publisher: Arc<Publisher>,
    topics: Arc<Provisioner>,
    subscriptions: Mutex<Vec<Arc<subscriber::Subscription>>>,
    closed: AtomicBool,
    auto_provision: bool,
}

impl KafkaBackend {
    /// Connects to the cluster at `config.bootstrap_servers`.
    ///
    /// Fails with a [`Config`](ErrorKind::Config) error naming the field or property when the
    /// configuration is invalid, with a [`Connection`](ErrorKind::Connection) error naming the
    /// servers when no broker answers within `connect_timeout`, and with a
    /// [`Rejected`](ErrorKind::Rejected) error when the brokers refuse the credentials.
    pub async fn connect(config: KafkaConfig, options: ConnectOptions) -> Result<KafkaBackend> {
        config.validate()?;
        let publisher = Arc::new(Publisher::new(&config)?);
        let admin = Arc::new(Admin::new(&config)?);
        check_reachable(&config, &publisher).await?;
        tracing::info!(endpoint = %config.endpoint(), auto_provision = options.auto_provision, "connected to Kafka");
        let topics = Arc::new(Provisioner::new(admin, options.auto_provision));
        publisher.attach(&topics);
        Ok(KafkaBackend {
            topics,
            auto_provision: options.auto_provision,
            config,
            publisher,
            subscriptions: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(closed(operation, "the Kafka backend"))
        } else {
            Ok(())
        }
    }

    async fn send_slow(&self, topic: &str, message: Message) -> Result<Confirmation> {
        self.topics
            .prepare(topic, "publish")
            .await
            .map_err(|e| e.operation("publish"))?;
        self.check_open("publish")?;
        self.publisher.enqueue(topic, message).await
    }
}

/// Asks the cluster for its metadata within `connect_timeout`.
async fn check_reachable(config: &KafkaConfig, publisher: &Arc<Publisher>) -> Result<()> {
    let timeout = config.connect_timeout;
    let probe = publisher.clone();
    let answer = tokio::task::spawn_blocking(move || {
        probe.producer().client().fetch_metadata(None, timeout)
    })
    .await;
    let error = match answer {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(e) => {
            return Err(Error::new(ErrorKind::Other, "the connection check failed")
                .backend(BACKEND)
                .operation("connect")
                .source(e))
        }
    };
    let last = publisher.log().last_error();
    let reason = last
        .as_ref()
        .map_or_else(|| error.to_string(), |l| l.text.clone());
    let refused = last.as_ref().and_then(|l| l.code).is_some_and(|code| {
        matches!(
            code,
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SSL
        )
    });
    let err = if refused {
        Error::new(
            ErrorKind::Rejected,
            format!(
                "the brokers at {} refused the connection (check the credentials and TLS \
                 settings in kafka.properties): {reason}",
                config.endpoint()
            ),
        )
        .temporary(false)
    } else {
        Error::new(
            ErrorKind::Connection,
            format!(
                "no Kafka broker answered at {} within {}: {reason}",
                config.endpoint(),
                humantime::format_duration(timeout)
            ),
        )
    };
    Err(err.backend(BACKEND).operation("connect").source(error))
}

#[async_trait]
impl Backend for KafkaBackend {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    fn endpoint(&self) -> String {
        self.config.endpoint()
    }

    fn auto_provision(&self) -> bool {
        self.auto_provision
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            new_group_reads_history: true,
            per_key_order: true,
            members_share_work: true,
            start_from_latest: true,
            survives_restart: true,
            partitions: true,
            list_topics: true,
            delete_topic: true,
            delivery_attempt: false,
            max_payload_bytes: Some(self.publisher.max_payload_bytes()),
        }
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        if self.is_closed() {
            return completion::ready(Err(closed("publish", "the Kafka backend")));
        }
        if self.topics.is_ready(topic) {
            self.publisher.enqueue(topic, message)
        } else {
            completion::boxed(self.send_slow(topic, message))
        }
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        self.check_open("subscribe")?;
        self.topics.prepare(&request.topic, "subscribe").await?;
        self.check_open("subscribe")?;
        let (stream, subscription) = subscriber::open(&self.config, &request).await?;
        let mut subscriptions = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscriptions.retain(|s| !s.is_finished());
        if self.is_closed() {
            subscription.close();
        }
        subscriptions.push(subscription);
        Ok(stream)
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        self.check_open("ensure topic")?;
        // Kafka groups need no creation: a new group reads the topic from its start.
        self.topics.ensure(spec).await
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        self.check_open("list topics")?;
        self.topics.admin().list_topics().await
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open("delete topic")?;
        self.topics.forget(name);
        // Kafka groups are not tied to a topic; their offsets expire with the broker's
        // offsets.retention.minutes.
        let deleted = self.topics.admin().delete_topic(name).await;
        // Again: a first use during the deletion may have found the topic still there.
        self.topics.forget(name);
        deleted
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let subscriptions = std::mem::take(
            &mut *self
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for subscription in &subscriptions {
            subscription.close();
        }
        self.publisher.close_intake();
        // One close_timeout for both: the consumers leave their groups while publishes flush.
        let timeout = self.config.close_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let flushed = self.publisher.flush_or_purge(timeout).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let waits = subscriptions.iter().map(|s| s.closed(left));
        let finished = futures::future::join_all(waits).await;
        let stuck = finished.iter().filter(|&&f| !f).count();
        if stuck > 0 {
            tracing::warn!(stuck, timeout = ?timeout,
                "consumers still leaving their groups after the close timeout; they finish in the background");
        }
        tracing::info!(endpoint = %self.config.endpoint(), "Kafka backend closed");
        flushed
    }
}

impl fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("endpoint", &self.config.endpoint())
            .field("auto_provision", &self.auto_provision)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
