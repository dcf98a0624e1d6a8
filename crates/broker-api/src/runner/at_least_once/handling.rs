//! Handling one delivery to the end: the handler's attempts, retries with backoff,
//! dead-lettering, the acknowledgement.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::AtLeastOnce;
use crate::acker::Acker;
use crate::completion::Completion;
use crate::delivery::{Delivery, Metadata};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Handler, HandlerError, Received};

/// Why an attempt failed.
pub(super) enum Failure {
    /// The payload cannot be decoded: no retry helps.
    Undecodable(String),
    /// The handler failed (or panicked).
    Handler(HandlerError),
}

impl Failure {
    /// A handler that panicked: a permanent failure, named by the panic's message.
    fn panicked(panic: Box<dyn std::any::Any + Send>) -> Self {
        Failure::Handler(HandlerError::permanent(panic_message(panic)))
    }
}

/// How handling one delivery ended: done with it (acknowledged, dead-lettered and
/// acknowledged, or failed and dropped once no longer live, which the broker delivers again),
/// or left [`Unsettled`].
pub(super) type Handled = std::result::Result<(), Unsettled>;

/// A delivery left unsettled: closing abandoned its retries, or it failed for good and could
/// not be dead-lettered (dead-lettering off, or the dead letter not published), with the error
/// that stops the subscription.
///
/// Its acknowledgement handle comes back to the runner, which drops it (the broker delivers
/// the message again) only after the stream stopped intake, and never starts the next message
/// of its key: a backend that rewinds on a dropped delivery (Kafka) would otherwise discard
/// the acknowledgements of the handlers still finishing, and the key's order would break.
pub(super) struct Unsettled {
    pub(super) acker: Acker,
    pub(super) error: Option<Error>,
}

impl Unsettled {
    fn new(delivery: Delivery, error: Option<Error>) -> Self {
        let (_, _, acker) = delivery.into_parts();
        Unsettled { acker, error }
    }

    /// The subscription's outcome when closing gives the delivery back, or none was left.
    pub(super) fn outcome_of(handled: Handled) -> Result<()> {
        handled.map_or_else(Unsettled::into_outcome, |_| Ok(()))
    }

    /// The subscription's outcome once the delivery was given back.
    pub(super) fn into_outcome(self) -> Result<()> {
        self.into_error().map_or(Ok(()), Err)
    }

    /// Gives the delivery back (drops its handle); returns the error, if any.
    pub(super) fn into_error(self) -> Option<Error> {
        self.error
    }
}

impl<T: Send + 'static> AtLeastOnce<T> {
    /// Handles one delivery to the end: acknowledged, dead-lettered, or left [`Unsettled`]
    /// (abandoned at close, or a fatal error). The concurrent runner runs one per message; the
    /// sequential one runs the same two steps in its own loop.
    ///
    /// The first attempt runs in this future, retries in a boxed one: this future is built and
    /// moved for every message, so it holds only what the first attempt needs. Not an
    /// `async fn`, which would store its arguments twice.
    #[allow(clippy::manual_async_fn)] // see above: the async block holds the delivery once
    pub(super) fn handle<'a, H: Handler<T>>(
        &'a self,
        delivery: Delivery,
        handler: &'a H,
        abandon: &'a CancellationToken,
    ) -> impl Future<Output = Handled> + Send + 'a {
        async move {
            let outcome = self
                .attempt(&delivery.payload, &delivery.metadata, handler)
                .await;
            self.conclude(delivery, outcome, handler, abandon).await
        }
    }

    /// After an attempt: acknowledges the delivery when it succeeded, retries it otherwise.
    pub(super) fn conclude<'a, H: Handler<T>>(
        &'a self,
        delivery: Delivery,
        outcome: std::result::Result<(), Failure>,
        handler: &'a H,
        abandon: &'a CancellationToken,
    ) -> impl Future<Output = Handled> + Send + 'a {
        match outcome {
            Ok(()) => {
                self.succeeded(&delivery.metadata);
                Either::Left(acknowledge(delivery).map(|()| Ok(())))
            }
            Err(failure) => Either::Right(self.retry(delivery, handler, abandon, failure)),
        }
    }

    /// After a first attempt that succeeded: the message's earlier calls, if it came back, are
    /// forgotten (one atomic load while none are remembered).
    pub(super) fn succeeded(&self, metadata: &Metadata) {
        self.earlier_calls.forget(metadata);
    }

    /// Decodes the payload and calls the handler once. A panic, in the call or in the future
    /// it returned, is a permanent failure.
    ///
    /// Decodes and calls before the first poll, so that the future holds only the handler's
    /// future, not the value and metadata it was built from.
    pub(super) fn attempt<H: Handler<T>>(
        &self,
        payload: &Bytes,
        metadata: &Metadata,
        handler: &H,
    ) -> impl Future<Output = std::result::Result<(), Failure>> + Send + 'static {
        let called = match self.topic.decode(payload) {
            Ok(value) => {
                let received = Received {
                    value,
                    metadata: metadata.clone(),
                };
                std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(received)))
                    .map_err(Failure::panicked)
            }
            Err(e) => Err(Failure::Undecodable(e.to_string())),
        };
        match called {
            Ok(running) => {
                Either::Left(AssertUnwindSafe(running).catch_unwind().map(
                    |outcome| match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Failure::Handler(e)),
                        Err(panic) => Err(Failure::panicked(panic)),
                    },
                ))
            }
            Err(failure) => Either::Right(futures::future::ready(Err(failure))),
        }
    }

    /// After a failed first attempt: retries with backoff until the handler succeeds, fails
    /// for good (dead-lettered), closing abandons the message (given back unsettled) or the
    /// delivery is no longer live (dropped: the broker delivers it again, see
    /// [`Delivery::is_live`]).
    ///
    /// Boxed: it is rare, and its future (timers, the retry state, dead-lettering) is large.
    pub(super) fn retry<'a, H: Handler<T>>(
        &'a self,
        delivery: Delivery,
        handler: &'a H,
        abandon: &'a CancellationToken,
        first: Failure,
    ) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let retry = &self.settings.retry;
            // Failed handler calls counted so far: those made before the message came back
            // after its delivery stopped being live, then one for each failure below.
            let mut calls = self.earlier_calls.take(&delivery.metadata);
            let mut failure = first;
            loop {
                if self.handled_elsewhere(&delivery, calls + 1) {
                    return Ok(());
                }
                let failure_now = match failure {
                    Failure::Undecodable(reason) => {
                        return self
                            .give_up(delivery, ErrorKind::Decode, reason, calls)
                            .await;
                    }
                    Failure::Handler(e) => e,
                };
                calls += 1;
                if failure_now.is_permanent() || calls >= retry.max_attempts {
                    let reason = failure_now.to_string();
                    return self
                        .give_up(delivery, ErrorKind::Handler, reason, calls)
                        .await;
                }
                let delay = retry.backoff(calls);
                tracing::debug!(
                    topic = self.topic.name(), group = %self.group, attempt = calls,
                    error = %failure_now, ?delay, "handler failed, retrying"
                );
                tokio::select! {
                    // Closing first: with no backoff (min_backoff = 0) both are ready at once.
                    biased;
                    () = abandon.cancelled() => return Err(Unsettled::new(delivery, None)),
                    () = tokio::time::sleep(delay) => {}
                }
                if self.handled_elsewhere(&delivery, calls) {
                    return Ok(());
                }
                match self
                    .attempt(&delivery.payload, &delivery.metadata, handler)
                    .await
                {
                    Ok(()) => {
                        self.earlier_calls.forget(&delivery.metadata);
                        acknowledge(delivery).await;
                        return Ok(());
                    }
                    Err(again) => failure = again,
                }
            }
        })
    }

    /// Whether a failed delivery is no longer live: retried or dead-lettered here, its message
    /// would be handled twice (the broker delivers it again, see [`Delivery::is_live`]). If so,
    /// the `calls` made on it are remembered for when it comes back.
    fn handled_elsewhere(&self, delivery: &Delivery, calls: u32) -> bool {
        if delivery.is_live() {
            return false;
        }
        self.earlier_calls.remember(&delivery.metadata, calls);
        tracing::info!(
            topic = self.topic.name(), group = %self.group,
            message_id = delivery.metadata.id_text(),
            "a failed message is no longer this subscription's (its partition revoked or \
             rewound, its channel closed, its streaming pull ended): retries stop, the broker \
             delivers it again"
        );
        true
    }

    /// Dead-letters and acknowledges the delivery, or, with dead-lettering off or when the
    /// dead letter is not published, gives it back unsettled with the error that stops the
    /// subscription: a [`Decode`](ErrorKind::Decode) error for a payload that cannot be
    /// decoded (`failed`), a [`Handler`](ErrorKind::Handler) error for a handler that failed.
    /// Runs within the boxed [`retry`](Self::retry).
    async fn give_up(
        &self,
        delivery: Delivery,
        failed: ErrorKind,
        reason: String,
        attempts: u32,
    ) -> Handled {
        self.earlier_calls.forget(&delivery.metadata);
        let id = delivery.metadata.id_text().to_owned();
        if !self.dead_letters.is_enabled() {
            let (topic, group) = (self.topic.name(), &self.group);
            let message = if failed == ErrorKind::Decode {
                format!(
                    "message {id} on topic {topic} for group {group} cannot be decoded and \
                     dead-lettering is off: {reason}"
                )
            } else {
                format!(
                    "message {id} on topic {topic} for group {group} failed after {attempts} \
                     attempts and dead-lettering is off: {reason}"
                )
            };
            let error = Error::new(failed, message);
            return Err(Unsettled::new(delivery, Some(error)));
        }
        tracing::warn!(topic = self.topic.name(), group = %self.group, message_id = %id, attempts, reason, "dead-lettering message");
        let (payload, metadata, acker) = delivery.into_parts();
        if let Err(e) = self
            .dead_letters
            .publish(payload, &metadata, &reason, attempts)
            .await
        {
            let error = Error::new(
                ErrorKind::Handler,
                format!(
                    "message {id} could not be dead-lettered to {}; it stays unacknowledged",
                    self.dead_letters.topic()
                ),
            )
            .source(e);
            return Err(Unsettled {
                acker,
                error: Some(error),
            });
        }
        if let Err(e) = acker.ack().await {
            tracing::warn!(error = %e, "acknowledgement of a dead-lettered message failed; it will be delivered again");
        }
        Ok(())
    }
}

/// Acknowledges a handled delivery. A failed acknowledgement is logged: the message will be
/// delivered again, the subscription goes on. The delivery is settled before the first poll:
/// the future holds only the backend's completion, not the delivery.
fn acknowledge(delivery: Delivery) -> impl Future<Output = ()> + Send {
    acknowledged(delivery.ack())
}

/// Waits for an acknowledgement; a failed one is logged (see [`acknowledge`]).
pub(super) fn acknowledged(ack: Completion<'static, ()>) -> impl Future<Output = ()> + Send {
    ack.map(|acked| {
        if let Err(e) = acked {
            tracing::warn!(error = %e, "acknowledgement failed; the message will be delivered again");
        }
    })
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    format!("handler panicked: {}", crate::error::panic_text(&*panic))
}
