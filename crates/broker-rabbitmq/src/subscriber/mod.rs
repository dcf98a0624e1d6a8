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

mod acker;
mod group;

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use broker_api::{Delivery, DeliveryStream, ErrorKind, Result, SubscribeRequest};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::time::Instant;

use self::group::{Active, Group};
use crate::error;
use crate::in_flight::InFlight;
use crate::link::Link;
use crate::topology::Topology;

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
