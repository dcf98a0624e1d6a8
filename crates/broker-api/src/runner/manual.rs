//! Manual acknowledgement: a stream of deliveries you settle yourself.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::fair_share::FairShare;
use crate::backend::BoxDeliveryStream;
use crate::completion::Completion;
use crate::delivery::{Delivery, Metadata};
use crate::error::Result;
use crate::topic::Topic;

/// A stream of [`Incoming`] messages, each to be acknowledged or rejected by the caller.
///
/// At most `max_in_flight` are unsettled at once: the stream waits for acknowledgements before
/// fetching more. It ends when the subscription or the broker is closed.
pub struct Manual<T> {
    deliveries: BoxDeliveryStream,
    topic: Topic<T>,
    fair_share: FairShare,
}

impl<T> Manual<T> {
    pub(crate) fn new(deliveries: BoxDeliveryStream, topic: Topic<T>) -> Self {
        Manual {
            deliveries,
            topic,
            fair_share: FairShare::default(),
        }
    }

    /// Stops intake and leaves the group: acknowledged messages are committed, unsettled ones
    /// are delivered again to the group.
    pub async fn close(&mut self) -> Result<()> {
        self.deliveries.close().await
    }
}

impl<T> Stream for Manual<T> {
    type Item = Result<Incoming<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        ready!(self.fair_share.poll_take(cx));
        let topic = self.topic.clone();
        Pin::new(&mut self.deliveries)
            .poll_next(cx)
            .map(|item| item.map(|result| result.map(|delivery| Incoming { delivery, topic })))
    }
}

impl<T> fmt::Debug for Manual<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manual")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A message from a [`Manual`] stream: decode it, then acknowledge or reject it.
///
/// Dropping it unsettled is the same as rejecting it: it is delivered again.
pub struct Incoming<T> {
    delivery: Delivery,
    topic: Topic<T>,
}

impl<T: 'static> Incoming<T> {
    /// Decodes the payload with the topic's codec.
    pub fn value(&self) -> Result<T> {
        self.topic.decode(&self.delivery.payload)
    }

    /// The payload as received.
    pub fn payload(&self) -> &Bytes {
        &self.delivery.payload
    }

    /// Topic, key, headers, ids, attempt and broker position.
    pub fn metadata(&self) -> &Metadata {
        &self.delivery.metadata
    }

    /// Acknowledges the message.
    pub fn ack(self) -> Completion<'static, ()> {
        self.delivery.ack()
    }

    /// Rejects the message so that it is delivered again.
    pub fn nack(self) -> Completion<'static, ()> {
        self.delivery.nack()
    }

    /// The untyped delivery.
    pub fn into_delivery(self) -> Delivery {
        self.delivery
    }
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.delivery, f)
    }
}
