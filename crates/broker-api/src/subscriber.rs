//! Typed subscribing: choose the group and settings, then how messages are handled.

use std::fmt;
use std::time::Duration;

use crate::backend::{BoxDeliveryStream, SharedBackend, StartFrom, SubscribeRequest};
use crate::error::Result;
use crate::handler::Handler;
use crate::naming::{validate_dead_letter_topic, validate_group_name, validate_topic_name};
use crate::runner::{AtLeastOnce, AtMostOnce, DeadLetters, Manual, Registry, Running};
use crate::settings::{RetryPolicy, SubscriberSettings};
use crate::topic::Topic;

/// A group subscription to one topic, not started yet.
///
/// Every group receives every message of the topic; the members of one group (subscribers with
/// the same group name, in this process or others) share them. Start it with one of:
///
/// - [`Subscriber::at_least_once`]: a handler; a message is acknowledged only after the handler
///   returned `Ok`; failures are retried with backoff, then dead-lettered.
/// - [`Subscriber::at_most_once`]: a stream of values acknowledged on receipt.
/// - [`Subscriber::manual`]: a stream of deliveries you acknowledge yourself.
pub struct Subscriber<T> {
    backend: SharedBackend,
    topic: Topic<T>,
    group: String,
    settings: SubscriberSettings,
    /// The running subscriptions of the broker handle this came from.
    registry: Registry,
}

impl<T: Send + 'static> Subscriber<T> {
    pub(crate) fn new(
        backend: SharedBackend,
        topic: Topic<T>,
        group: String,
        settings: SubscriberSettings,
        registry: Registry,
    ) -> Self {
        Subscriber {
            backend,
            topic,
            group,
            settings,
            registry,
        }
    }

    /// Where the group starts when it is new (existing groups resume where they were).
    pub fn start_from(mut self, start_from: StartFrom) -> Self {
        self.settings.start_from = start_from;
        self
    }

    /// The most messages fetched and not yet acknowledged.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.settings.max_in_flight = max_in_flight;
        self
    }

    /// How many handler calls run at once in `at_least_once` (same-key messages stay ordered).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency;
        self
    }

    /// How handler failures are retried and dead-lettered.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// How long closing waits for running handlers.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// Replaces all settings.
    pub fn settings(mut self, settings: SubscriberSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Handles every message with `handler`, at least once, until closed.
    ///
    /// A message is acknowledged only after its handler succeeded. A failed handler is retried
    /// per the [`RetryPolicy`]; a permanent failure, a panicking handler (when called or while
    /// its future runs) and an undecodable payload are dead-lettered at once.
    /// Retries stop, and nothing is dead-lettered, once the message's delivery is no longer
    /// live ([`Delivery::is_live`](crate::Delivery::is_live): its Kafka partition was revoked
    /// or rewound, even if it comes back to this member; its RabbitMQ channel closed; its
    /// Pub/Sub streaming pull ended): the broker delivers it again, to whichever member then
    /// owns it. When it comes back to this
    /// subscription within 10 minutes (by its message id, or without one by its Kafka or
    /// Pub/Sub position; the last 256 such messages are remembered), its attempts go on from
    /// where they stopped; elsewhere they count afresh.
    ///
    /// Resolves once the subscription is open (so messages published afterwards reach it);
    /// the returned [`Running`] handle closes it or waits for it to end. Closing the broker
    /// closes it too, as [`Running::close`] does, before the backend disconnects.
    pub async fn at_least_once(self, handler: impl Handler<T>) -> Result<Running> {
        let stream = self.open().await?;
        let dead_letters = self.dead_letters();
        Ok(
            AtLeastOnce::new(self.topic, self.group, self.settings, dead_letters).start(
                stream,
                handler,
                &self.registry,
            ),
        )
    }

    /// A stream of values, each acknowledged as it is received: a crash may lose the messages
    /// being handled, never deliver them twice. Undecodable payloads are dead-lettered.
    pub async fn at_most_once(self) -> Result<AtMostOnce<T>> {
        let stream = self.open().await?;
        let dead_letters = self.dead_letters();
        Ok(AtMostOnce::new(stream, self.topic, dead_letters))
    }

    /// A stream of deliveries that you acknowledge or reject yourself.
    pub async fn manual(self) -> Result<Manual<T>> {
        let stream = self.open().await?;
        Ok(Manual::new(stream, self.topic))
    }

    fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(
            self.backend.clone(),
            self.topic.name(),
            &self.group,
            self.settings.retry.clone(),
        )
    }

    async fn open(&self) -> Result<BoxDeliveryStream> {
        validate_topic_name(self.topic.name())?;
        validate_group_name(self.topic.name(), &self.group)?;
        self.settings.validate()?;
        if self.settings.retry.dead_letter {
            validate_dead_letter_topic(self.topic.name(), &self.group)?;
        }
        let request = SubscribeRequest::new(self.topic.name(), &self.group)
            .start_from(self.settings.start_from)
            .max_in_flight(self.settings.max_in_flight);
        self.backend.subscribe(request).await
    }
}

impl<T> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
