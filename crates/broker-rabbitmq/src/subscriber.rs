//! Group subscriptions: a consumer on the group's queue, on a channel of its own with
//! `basic.qos(prefetch)`, as a [`DeliveryStream`] that survives reconnects.
//!
//! Acknowledging sends `basic.ack`; rejecting sends `basic.nack` with `requeue`; a delivery
//! dropped unsettled is rejected the same way. When the channel or the connection fails, the
//! stream opens a new channel on the current connection (waiting for the supervisor to
//! reconnect), declares the group again and consumes again, by itself. Deliveries received on
//! the old channel can no longer be settled: acknowledging one fails, rejecting one does
//! nothing (RabbitMQ delivers them again, as it does for everything unacknowledged on a closed
//! channel), but they hold their `max_in_flight` slots until then ([`InFlight`]).
//!
//! Once intake stopped (the subscription is closing), rejecting does nothing: closing the
//! channel gives every unacknowledged message back at once, in its order. Rejected one by one
//! as the runner drops them (those waiting behind their key first, the one still running
//! last), a quorum queue would hand them out again in that order, breaking per-key order.
//! For the same reason stopping intake does not cancel the consumer: under single active
//! consumer a cancel hands the queue to another member at once, which would then receive
//! later messages before the ones this member still holds. RabbitMQ keeps sending up to the
//! prefetch meanwhile; those go back at close too, marked redelivered.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use broker_api::{
    Delivery, DeliveryStream, Error, ErrorKind, Result, Settle, SettleOnce, SubscribeRequest,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;

use crate::channel::{close_channel, scratch_channel};
use crate::config::ReconnectBackoff;
use crate::error;
use crate::in_flight::InFlight;
use crate::link::{Link, Session};
use crate::metadata::{self, DeliveryFields};
use crate::poll;
use crate::topology::Topology;

/// How long closing a subscription waits for the broker to close its channel.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a subscription needs to (re)open its consumer.
struct Group {
    link: Arc<Link>,
    topology: Arc<Topology>,
    topic: Arc<str>,
    group: String,
    prefetch: u16,
    backoff: ReconnectBackoff,
    /// Set by `stop_intake`: deliveries are no longer rejected one by one.
    intake_stopped: Arc<AtomicBool>,
    /// The unsettled deliveries, across channels, against `max_in_flight`.
    in_flight: Arc<InFlight>,
}

/// A consumer and the channel it lives on.
///
/// Its channel is closed before its consumer is let go, also when it is dropped (a stream
/// dropped without `close`, a subscription closed while it resumes): a lapin consumer dropped
/// first sends `basic.cancel`, on which single active consumer hands the queue to another
/// member at once, while this channel still holds unacknowledged messages; that member would
/// receive later messages of their keys before them.
struct Active {
    channel: Arc<Channel>,
    /// Taken only to be dropped after the channel closed.
    consumer: Option<Consumer>,
    link: Arc<Link>,
}

impl Active {
    /// Closes the channel (giving every unacknowledged message back to the queue, after the
    /// acknowledgements queued before), then lets the consumer go.
    async fn close(mut self) {
        let consumer = self.consumer.take();
        let closing = close_channel(&self.channel, "subscription closed");
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::debug!("RabbitMQ did not answer the subscription's channel close in time");
        }
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

enum State {
    Consuming(Active),
    Recovering(BoxFuture<'static, Result<Active>>),
    Ended,
}

/// One group subscription's deliveries.
pub(crate) struct Subscription {
    group: Arc<Group>,
    state: State,
}

impl Subscription {
    /// Declares the group (or checks it, with auto-provisioning off) and starts consuming,
    /// waiting for a connection until `deadline`.
    pub(crate) async fn open(
        link: Arc<Link>,
        topology: Arc<Topology>,
        request: &SubscribeRequest,
        deadline: Instant,
    ) -> Result<Subscription> {
        let config = &link.settings().config;
        let prefetch = prefetch(config.prefetch, request.max_in_flight);
        let group = Arc::new(Group {
            backoff: config.reconnect.clone(),
            link,
            topology,
            topic: Arc::from(request.topic.as_str()),
            group: request.group.clone(),
            prefetch,
            intake_stopped: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(InFlight::new(request.max_in_flight)),
        });
        let active = group.clone().consume(Some(deadline)).await?;
        Ok(Subscription {
            group,
            state: State::Consuming(active),
        })
    }

    fn resubscribe(&mut self) {
        self.state = State::Recovering(self.group.clone().consume(None).boxed());
    }
}

/// The `basic.qos` prefetch of a subscription: `rabbitmq.prefetch` when set, else its
/// `max_in_flight`; never more than `max_in_flight` (every message RabbitMQ sends ahead is an
/// unsettled delivery, which the stream must not hold more of) nor than AMQP's 65535.
fn prefetch(configured: Option<u16>, max_in_flight: usize) -> u16 {
    let bound = u16::try_from(max_in_flight.max(1)).unwrap_or(u16::MAX);
    configured.map_or(bound, |prefetch| prefetch.min(bound))
}

impl Group {
    /// Whether the group's queue is still this backend's: not deleted with its topic since.
    fn is_known(&self) -> bool {
        Topology::queue_name(&self.topic, &self.group)
            .is_ok_and(|queue| self.topology.knows_queue(&self.topic, queue.as_str()))
    }

    /// Opens the consumer, retrying transient failures with backoff, until `give_up` (never
    /// when `None`); a subscription that cannot open in time fails with its last failure.
    /// Refusals (missing group with auto-provisioning off, mismatched queue) and `close` end it
    /// at once.
    async fn consume(self: Arc<Self>, give_up: Option<Instant>) -> Result<Active> {
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

    fn delivery(&self, delivery: lapin::message::Delivery, channel: &Arc<Channel>) -> Delivery {
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

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Recovering(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Ok(active) => {
                        tracing::warn!(topic = %this.group.topic, group = %this.group.group, "subscription resumed");
                        this.state = State::Consuming(active);
                    }
                    Err(e) => {
                        this.state = State::Ended;
                        if e.kind() == ErrorKind::Closed || this.group.link.is_closed() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Consuming(active) => {
                    ready!(this.group.in_flight.poll_room(cx));
                    let Some(consumer) = &mut active.consumer else {
                        // Not reached: taken only when the subscription is done with it.
                        this.state = State::Ended;
                        return Poll::Ready(None);
                    };
                    let next = ready!(Pin::new(consumer).poll_next(cx));
                    match next {
                        // lapin keeps handing out what the channel received before it died:
                        // RabbitMQ gives those back (to this subscription once it consumed
                        // again), and settling them would do nothing. Handed out, an
                        // at-most-once stream would yield them twice.
                        Some(Ok(_)) if !active.channel.status().connected() => {}
                        Some(Ok(delivery)) => {
                            return Poll::Ready(Some(Ok(this
                                .group
                                .delivery(delivery, &active.channel))))
                        }
                        _ if this.group.link.is_closed() => {
                            this.state = State::Ended;
                            return Poll::Ready(None);
                        }
                        // This backend deleted (or is deleting) the topic: the subscription
                        // ends with it, rather than declare the group's queue again, whether
                        // RabbitMQ cancelled the consumer or the channel failed meanwhile.
                        Some(Err(_)) | None if !this.group.is_known() => {
                            tracing::warn!(topic = %this.group.topic, group = %this.group.group,
                                "the topic was deleted; the subscription ends");
                            this.state = State::Ended;
                            return Poll::Ready(None);
                        }
                        Some(Err(e)) => {
                            if error::is_connection_loss(&e) {
                                this.group.link.report_broken();
                            }
                            tracing::warn!(
                                topic = %this.group.topic,
                                group = %this.group.group,
                                error = %e,
                                "the subscription's channel failed; subscribing again"
                            );
                            this.resubscribe();
                        }
                        None => {
                            tracing::warn!(
                                topic = %this.group.topic,
                                group = %this.group.group,
                                "RabbitMQ cancelled the consumer (channel closed or queue deleted); \
                                 subscribing again"
                            );
                            this.group.topology.doubt_bindings(&this.group.topic);
                            // Cancelled already: its channel is left open for the deliveries
                            // still being handled, whose acknowledgements go on counting.
                            active.consumer = None;
                            this.resubscribe();
                        }
                    }
                }
            }
        }
    }
}

impl DeliveryStream for Subscription {
    fn stop_intake(&mut self) {
        self.group.intake_stopped.store(true, Ordering::Release);
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let State::Consuming(active) = std::mem::replace(&mut self.state, State::Ended) {
                active.close().await;
            }
            Ok(())
        })
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.group.topic)
            .field("group", &self.group.group)
            .field("prefetch", &self.group.prefetch)
            .finish_non_exhaustive()
    }
}

/// Settles one delivery on the channel it came from; dropped unsettled, it requeues it (unless
/// intake stopped: the channel's close requeues it, see the module docs).
struct AmqpAcker {
    channel: Arc<Channel>,
    delivery_tag: u64,
    intake_stopped: Arc<AtomicBool>,
    in_flight: Arc<InFlight>,
}

impl AmqpAcker {
    /// The error of an ack that cannot count: RabbitMQ gives the message back to the queue.
    fn not_acknowledged(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!(
                "message {} not acknowledged: {why}; RabbitMQ delivers it again",
                self.delivery_tag
            ),
        )
        .backend(error::BACKEND)
        .operation("ack")
    }
}

impl Settle for AmqpAcker {
    /// Queues `basic.ack` or `basic.nack(requeue)`. On a channel that is gone, RabbitMQ gave
    /// the message back to the queue already: a nack has nothing to do, an ack fails.
    fn settle(&mut self, ack: bool) -> Result<()> {
        self.in_flight.release();
        if !self.channel.status().connected() {
            tracing::debug!(
                delivery_tag = self.delivery_tag,
                "the delivery's channel is closed; RabbitMQ delivers the message again"
            );
            if ack {
                return Err(self.not_acknowledged("the channel it came from closed"));
            }
            return Ok(());
        }
        if !ack && self.intake_stopped.load(Ordering::Acquire) {
            tracing::debug!(
                delivery_tag = self.delivery_tag,
                "closing: the channel's close gives the message back, in order"
            );
            return Ok(());
        }
        let failed = if ack {
            poll::fire(
                self.channel
                    .basic_ack(self.delivery_tag, BasicAckOptions::default()),
            )
        } else {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            poll::fire(self.channel.basic_nack(self.delivery_tag, requeue))
        };
        match failed {
            Some(Err(e)) if ack => Err(self
                .not_acknowledged("the channel refused the acknowledgement")
                .source(e)),
            Some(Err(e)) => {
                tracing::debug!(delivery_tag = self.delivery_tag, error = %e,
                    "rejecting a delivery failed; RabbitMQ delivers the message again");
                Ok(())
            }
            // Queued, or sent.
            _ => Ok(()),
        }
    }

    /// Live while its channel is open: once it closed, RabbitMQ gave the message back.
    fn is_live(&self) -> bool {
        self.channel.status().connected()
    }
}

#[cfg(test)]
mod tests {
    use super::prefetch;

    #[test]
    fn prefetch_never_exceeds_max_in_flight() {
        assert_eq!(prefetch(None, 256), 256);
        assert_eq!(prefetch(Some(50), 256), 50);
        assert_eq!(prefetch(Some(50), 5), 5, "capped at max_in_flight");
        assert_eq!(prefetch(None, 1_000_000), u16::MAX, "AMQP's limit");
        assert_eq!(prefetch(Some(10), 0), 1);
    }
}
