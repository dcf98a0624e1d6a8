//! `at_most_once`: a stream of values acknowledged as they are received.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;

use futures::future::{BoxFuture, Either};
use futures::{FutureExt, Stream};

use super::dead_letter::DeadLetters;
use super::fair_share::FairShare;
use crate::backend::BoxDeliveryStream;
use crate::delivery::{Delivery, Metadata};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::Received;
use crate::topic::Topic;

/// What settling one delivery yields: a value, an error, or nothing (it was dead-lettered).
type Settled<T> = Option<Result<Received<T>>>;

/// A stream of decoded values, each acknowledged before it is yielded.
///
/// A value is never yielded twice; one that was yielded and not handled because the process
/// stopped is lost (that is the trade). Payloads that cannot be decoded are dead-lettered and
/// skipped; with dead-lettering off, each is yielded as a `Decode` error naming the message,
/// and the stream goes on. The stream ends when the subscription or the broker is closed.
pub struct AtMostOnce<T> {
    deliveries: BoxDeliveryStream,
    topic: Topic<T>,
    dead_letters: DeadLetters,
    /// Work on the current delivery that had to wait: its acknowledgement or its dead letter.
    pending: Option<BoxFuture<'static, Settled<T>>>,
    fair_share: FairShare,
}

impl<T: Send + 'static> AtMostOnce<T> {
    pub(crate) fn new(
        deliveries: BoxDeliveryStream,
        topic: Topic<T>,
        dead_letters: DeadLetters,
    ) -> Self {
        AtMostOnce {
            deliveries,
            topic,
            dead_letters,
            pending: None,
            fair_share: FairShare::default(),
        }
    }

    /// Stops intake and leaves the group. Deliveries already fetched but not yet acknowledged
    /// are delivered again to the group; one whose acknowledgement (or dead letter) was under
    /// way when closing began is given up, which at most once allows.
    pub async fn close(&mut self) -> Result<()> {
        if self.pending.take().is_some() {
            tracing::warn!(
                topic = self.topic.name(),
                "closed while a delivery was being acknowledged or dead-lettered: an undecodable \
                 one may be acknowledged without its dead letter"
            );
        }
        self.deliveries.close().await
    }

    /// Acknowledges, then decodes or dead-letters; returns `None` when nothing is to be yielded.
    fn settle(&self, delivery: Delivery) -> Either<Settled<T>, BoxFuture<'static, Settled<T>>> {
        let (payload, metadata, acker) = delivery.into_parts();
        match acker.ack() {
            Either::Left(done) => match done.into_inner() {
                Err(e) => Either::Left(Some(Err(e))),
                Ok(()) => decoded(&self.topic, &self.dead_letters, payload, metadata),
            },
            Either::Right(ack) => {
                let topic = self.topic.clone();
                let dead_letters = self.dead_letters.clone();
                Either::Right(
                    async move {
                        if let Err(e) = ack.await {
                            return Some(Err(e));
                        }
                        match decoded(&topic, &dead_letters, payload, metadata) {
                            Either::Left(settled) => settled,
                            Either::Right(dead_lettering) => dead_lettering.await,
                        }
                    }
                    .boxed(),
                )
            }
        }
    }
}

/// An acknowledged delivery's value; or, when its payload cannot be decoded, its dead letter
/// (nothing to yield), or the decode error when dead-lettering is off.
fn decoded<T: Send + 'static>(
    topic: &Topic<T>,
    dead_letters: &DeadLetters,
    payload: Bytes,
    metadata: Metadata,
) -> Either<Settled<T>, BoxFuture<'static, Settled<T>>> {
    match topic.decode(&payload) {
        Ok(value) => Either::Left(Some(Ok(Received { value, metadata }))),
        Err(e) if !dead_letters.is_enabled() => Either::Left(Some(Err(undecodable(&metadata, e)))),
        Err(e) => Either::Right(
            dead_letter(dead_letters.clone(), payload, metadata, e.to_string()).boxed(),
        ),
    }
}

/// The error yielded for an undecodable payload with dead-lettering off.
fn undecodable(metadata: &Metadata, cause: Error) -> Error {
    let id = metadata.id_text();
    Error::new(
        ErrorKind::Decode,
        format!(
            "message {id} on topic {} cannot be decoded and dead-lettering is off; it was \
             acknowledged (at most once) and is not delivered again",
            metadata.topic
        ),
    )
    .source(cause)
}

async fn dead_letter<T>(
    dead_letters: DeadLetters,
    payload: Bytes,
    metadata: Metadata,
    reason: String,
) -> Settled<T> {
    tracing::warn!(topic = %metadata.topic, reason, "dead-lettering undecodable message");
    match dead_letters.publish(payload, &metadata, &reason, 0).await {
        Ok(()) => None,
        Err(e) => Some(Err(e)),
    }
}

impl<T: Send + 'static> Stream for AtMostOnce<T> {
    type Item = Result<Received<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pending) = self.pending.as_mut() {
                let settled = ready!(pending.poll_unpin(cx));
                self.pending = None;
                match settled {
                    Some(item) => return Poll::Ready(Some(item)),
                    None => continue,
                }
            }
            ready!(self.fair_share.poll_take(cx));
            let delivery = match ready!(Pin::new(&mut self.deliveries).poll_next(cx)) {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            };
            match self.settle(delivery) {
                Either::Left(Some(item)) => return Poll::Ready(Some(item)),
                Either::Left(None) => continue,
                Either::Right(waiting) => self.pending = Some(waiting),
            }
        }
    }
}

impl<T> Unpin for AtMostOnce<T> {}

impl<T> fmt::Debug for AtMostOnce<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtMostOnce")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
