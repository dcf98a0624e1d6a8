//! A group's consumer: opening it on a channel of its own (declaring the group, setting the
//! prefetch), retrying with backoff, and closing its channel before the consumer goes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Delivery, ErrorKind, Result, SettleOnce};
use bytes::Bytes;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;

use super::acker::AmqpAcker;
use crate::channel::{close_channel, scratch_channel};
use crate::config::ReconnectBackoff;
use crate::error;
use crate::in_flight::InFlight;
use crate::link::{Link, Session};
use crate::metadata::{self, DeliveryFields};
use crate::poll;
use crate::topology::Topology;

/// What a subscription needs to (re)open its consumer.
pub(super) struct Group {
    pub(super) link: Arc<Link>,
    pub(super) topology: Arc<Topology>,
    pub(super) topic: Arc<str>,
    pub(super) group: String,
    pub(super) prefetch: u16,
    pub(super) backoff: ReconnectBackoff,
    /// Set by `stop_intake`: deliveries are no longer rejected one by one.
    pub(super) intake_stopped: Arc<AtomicBool>,
    /// The unsettled deliveries, across channels, against `max_in_flight`.
    pub(super) in_flight: Arc<InFlight>,
}

/// A consumer and the channel it lives on.
///
/// Its channel is closed before its consumer is let go, also when it is dropped (a stream
/// dropped without `close`, a subscription closed while it resumes): a lapin consumer dropped
/// first sends `basic.cancel`, on which single active consumer hands the queue to another
/// member at once, while this channel still holds unacknowledged messages; that member would
/// receive later messages of their keys before them.
pub(super) struct Active {
    pub(super) channel: Arc<Channel>,
    /// Taken only to be dropped after the channel closed.
    pub(super) consumer: Option<Consumer>,
    link: Arc<Link>,
}

impl Active {
    /// Closes the channel (giving every unacknowledged message back to the queue, after the
    /// acknowledgements queued before), then lets the consumer go.
    pub(super) async fn close(mut self) {
        let consumer = self.consumer.take();
        // Bounded: close_channel waits at most its own timeout for the broker's answer.
        close_channel(&self.channel, "subscription closed").await;
        drop(consumer);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let channel = Channel::clone(&self.channel);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.link
                .close_in_background_holding(channel, "subscription dropped", consumer);
        } else {
            // No runtime to wait on: the close is queued (lapin does that at the first poll),
            // and the channel marked closing, before the consumer goes, so it sends no cancel.
            let _ = poll::fire(channel.close(200, "subscription dropped".into()));
            drop(consumer);
        }
    }
}

impl Group {
    /// Whether the group's queue is still this backend's: not deleted with its topic since.
    pub(super) fn is_known(&self) -> bool {
        Topology::queue_name(&self.topic, &self.group)
            .is_ok_and(|queue| self.topology.knows_queue(&self.topic, queue.as_str()))
    }

    /// Opens the consumer, retrying transient failures with backoff, until `give_up` (never
    /// when `None`); a subscription that cannot open in time fails with its last failure.
    /// Refusals (missing group with auto-provisioning off, mismatched queue) and `close` end it
    /// at once.
    pub(super) async fn consume(self: Arc<Self>, give_up: Option<Instant>) -> Result<Active> {
        // "Never" is a deadline far enough away for a wait on the supervisor.
        let deadline =
            give_up.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400));
        let mut attempt = 0;
        loop {
            let session = self.link.session(deadline).await?;
            // A broker that stops answering mid-way is retried like one that refused.
            let answer_by =
                deadline.min(Instant::now() + self.link.settings().config.connect_timeout);
            let failure = match self.consume_on(&session, answer_by).await {
                Ok(active) => {
                    // Declaring this group's queue declared the exchange too, if it was gone:
                    // publishing then finds it and would not bind the other groups again.
                    if self.topology.take_doubt(&self.topic) {
                        let patience = self.link.settings().config.connect_timeout;
                        self.topology
                            .rebind(&session.connection, &self.topic, patience)
                            .await;
                    }
                    return Ok(active);
                }
                Err(e) => e,
            };
            // Something missing is final without auto-provisioning; with it, the exchange was
            // deleted between its declaration and the binding (someone deleting the topic):
            // declared again at the next attempt.
            let missing_for_good =
                failure.kind() == ErrorKind::NotFound && !self.topology.auto_provision();
            let fatal = missing_for_good
                || matches!(
                    failure.kind(),
                    ErrorKind::Rejected | ErrorKind::Config | ErrorKind::Closed
                );
            attempt += 1;
            let delay = self.backoff.delay(attempt);
            if fatal || give_up.is_some_and(|at| Instant::now() + delay >= at) {
                return Err(failure);
            }
            if !session.is_open() {
                self.link.report_broken();
            }
            tracing::warn!(
                topic = %self.topic,
                group = %self.group,
                error = %failure,
                retry_in = ?delay,
                "subscribing failed; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.link.closed() => return Err(error::closed("subscribe")),
            }
        }
    }

    /// One attempt to consume on a channel of its own, closed again unless the attempt
    /// succeeds (see [`ClosedUnlessKept`]).
    async fn consume_on(&self, session: &Session, answer_by: Instant) -> Result<Active> {
        let channel =
            error::within(answer_by, "subscribe", scratch_channel(&session.connection)).await?;
        let opening = ClosedUnlessKept::new(channel, self.link.clone());
        let consumer =
            error::within(answer_by, "subscribe", self.consume_with(opening.channel())).await?;
        Ok(Active {
            channel: Arc::new(opening.keep()),
            consumer: Some(consumer),
            link: self.link.clone(),
        })
    }

    /// Declares the group on `channel`, sets the prefetch and starts consuming.
    async fn consume_with(&self, channel: &Channel) -> Result<Consumer> {
        let queue = self
            .topology
            .ensure_group(channel, &self.topic, &self.group)
            .await
            .map_err(|e| e.operation("subscribe"))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| error::from_lapin("subscribe", "cannot set the prefetch", e))?;
        channel
            .basic_consume(
                queue.clone(),
                // The broker names the consumer.
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                error::from_lapin("subscribe", format!("cannot consume from queue {queue}"), e)
            })
    }

    /// A delivery of this library from lapin's, holding one of the `max_in_flight` slots until
    /// it is settled.
    pub(super) fn delivery(
        &self,
        delivery: lapin::message::Delivery,
        channel: &Arc<Channel>,
    ) -> Delivery {
        let fields = DeliveryFields {
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            delivery_tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            properties: &delivery.properties,
        };
        let metadata = metadata::metadata(&self.topic, &fields, self.topology.counts_deliveries());
        self.in_flight.take();
        let acker = AmqpAcker {
            channel: channel.clone(),
            delivery_tag: delivery.delivery_tag,
            intake_stopped: self.intake_stopped.clone(),
            in_flight: self.in_flight.clone(),
        };
        Delivery::new(
            Bytes::from(delivery.data),
            metadata,
            SettleOnce::boxed(acker),
        )
    }
}

/// The channel of an attempt to consume, closed in the background when the attempt fails,
/// runs out of time or is dropped half-way (the subscription closed while reconnecting, a
/// caller gave up on `subscribe`). A `basic.consume` answered late registers a consumer that
/// keeps the channel open, taking the group's messages (all of them, as its single active
/// consumer) without anyone reading them, until the connection closes.
struct ClosedUnlessKept {
    channel: Channel,
    link: Arc<Link>,
    kept: bool,
}

impl ClosedUnlessKept {
    fn new(channel: Channel, link: Arc<Link>) -> Self {
        ClosedUnlessKept {
            channel,
            link,
            kept: false,
        }
    }

    fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The attempt succeeded: the channel stays open.
    fn keep(mut self) -> Channel {
        self.kept = true;
        self.channel.clone()
    }
}

impl Drop for ClosedUnlessKept {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Outside a runtime lapin closes the dropped channel itself.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.link
                .close_in_background(self.channel.clone(), "subscribing failed");
        }
    }
}
