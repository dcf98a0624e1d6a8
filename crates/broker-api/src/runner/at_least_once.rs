//! `at_least_once`: acknowledge a message only after its handler succeeded.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetters;
use super::fair_share::FairShare;
use super::key_lanes::KeyLanes;
use super::registry::Registry;
use super::stop::Stop;
use crate::acker::Acker;
use crate::backend::BoxDeliveryStream;
use crate::completion::Completion;
use crate::delivery::{Delivery, Metadata};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Handler, HandlerError, Received};
use crate::settings::SubscriberSettings;
use crate::topic::Topic;

/// A running `at_least_once` subscription.
///
/// Dropping the handle leaves the subscription running until the broker is closed.
#[derive(Debug)]
pub struct Running {
    stop: Stop,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Stops intake, lets running handlers finish (up to the shutdown timeout), acknowledges
    /// what they handled and leaves the group. Messages not handled are delivered again to the
    /// group later. Returns the subscription's error if it had already failed.
    pub async fn close(self) -> Result<()> {
        self.stop.request();
        self.join().await
    }

    /// Waits until the subscription ends by itself: the broker was closed, or a message could
    /// neither be handled nor dead-lettered (the error says which and why).
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::new(ErrorKind::Other, "subscription task failed").source(e)),
        }
    }

    /// Whether the subscription has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The runner behind [`Running`]: pulls deliveries, runs the handler with bounded concurrency,
/// keeps same-key messages in order, retries with backoff, dead-letters, acknowledges.
pub(crate) struct AtLeastOnce<T> {
    topic: Topic<T>,
    group: String,
    settings: SubscriberSettings,
    dead_letters: DeadLetters,
}

/// Why an attempt failed.
enum Failure {
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

/// How handling one delivery ended: settled (acknowledged, or dead-lettered and
/// acknowledged), or not.
type Handled = std::result::Result<(), Unsettled>;

/// A delivery left unsettled: closing abandoned its retries, or it failed for good and could
/// not be dead-lettered (dead-lettering off, or the dead letter not published), with the error
/// that stops the subscription.
///
/// Its acknowledgement handle comes back to the runner, which drops it (the broker delivers
/// the message again) only after the stream stopped intake, and never starts the next message
/// of its key: a backend that rewinds on a dropped delivery (Kafka) would otherwise discard
/// the acknowledgements of the handlers still finishing, and the key's order would break.
struct Unsettled {
    acker: Acker,
    error: Option<Error>,
}

impl Unsettled {
    fn new(delivery: Delivery, error: Option<Error>) -> Self {
        let (_, _, acker) = delivery.into_parts();
        Unsettled { acker, error }
    }

    /// The subscription's outcome once the delivery was given back.
    fn into_outcome(self) -> Result<()> {
        self.into_error().map_or(Ok(()), Err)
    }

    /// Gives the delivery back (drops its handle); returns the error, if any.
    fn into_error(self) -> Option<Error> {
        self.error
    }
}

/// What one handled delivery left behind.
struct Finished {
    key: Option<String>,
    handled: Handled,
}

impl<T: Send + 'static> AtLeastOnce<T> {
    pub(crate) fn new(
        topic: Topic<T>,
        group: String,
        settings: SubscriberSettings,
        dead_letters: DeadLetters,
    ) -> Self {
        AtLeastOnce {
            topic,
            group,
            settings,
            dead_letters,
        }
    }

    /// Starts the subscription's task; closing the broker handle behind `registry` closes it.
    pub(crate) fn start(
        self,
        stream: BoxDeliveryStream,
        handler: impl Handler<T>,
        registry: &Registry,
    ) -> Running {
        let stop = Stop::default();
        let ended = registry.register(stop.clone());
        let running = Arc::new(self).run(stream, Arc::new(handler), stop.clone());
        let task = tokio::spawn(async move {
            let _ended = ended;
            running.await
        });
        Running { stop, task }
    }

    async fn run<H: Handler<T>>(
        self: Arc<Self>,
        mut stream: BoxDeliveryStream,
        handler: Arc<H>,
        stop: Stop,
    ) -> Result<()> {
        let outcome = if self.settings.concurrency <= 1 {
            self.run_sequential(&mut stream, &*handler, &stop).await
        } else {
            self.clone()
                .run_concurrent(&mut stream, handler, &stop)
                .await
        };
        tracing::debug!(topic = self.topic.name(), group = %self.group, "subscription stopping");
        let closed = stream.close().await;
        outcome.and(closed)
    }

    /// One message at a time, in delivery order (the default, as in Lagom).
    async fn run_sequential<H: Handler<T>>(
        &self,
        stream: &mut BoxDeliveryStream,
        handler: &H,
        stop: &Stop,
    ) -> Result<()> {
        let mut fair_share = FairShare::default();
        let closing = stop.token();
        loop {
            // A delivery that is ready is taken without arming the close signal (a registration
            // per message); only an empty stream waits for both.
            if stop.is_requested() {
                return Ok(());
            }
            // Yields before taking the next delivery, not while holding it: a delivery held
            // across an await is moved into this future's state once more.
            fair_share.take().await;
            // Matched where it is polled: each binding on the way would move it once more.
            let mut delivery = match futures::poll!(stream.next()) {
                Poll::Ready(Some(Ok(delivery))) => delivery,
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => return Ok(()),
                Poll::Pending => tokio::select! {
                    biased;
                    () = closing.cancelled() => return Ok(()),
                    item = stream.next() => match item {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    },
                },
            };
            // The delivery stays in this loop until it is settled; the attempt borrows none of it.
            let attempt = self.attempt(&delivery.payload, &delivery.metadata, handler);
            tokio::pin!(attempt);
            // Most handlers finish at their first poll: no need to watch for close then.
            let outcome = match futures::poll!(&mut attempt) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => tokio::select! {
                    biased;
                    outcome = &mut attempt => outcome,
                    () = closing.cancelled() => {
                        // Closing: let the running handler finish, within the shutdown timeout.
                        // Intake stops first: the delivery may be dropped unsettled.
                        stream.stop_intake();
                        let finishing = async {
                            let outcome = attempt.await;
                            let handled = self.conclude(delivery, outcome, handler, closing).await;
                            handled.or_else(Unsettled::into_outcome)
                        };
                        return self.finish_within_timeout(finishing).await;
                    }
                },
            };
            let failure = match outcome {
                // Settled in place: the delivery is not moved again, only its acker.
                Ok(()) => {
                    acknowledged(delivery.take_acker().ack()).await;
                    continue;
                }
                Err(failure) => failure,
            };
            // Retries give up their message when closing begins during a backoff; a retry
            // running then (or dead-lettering) gets the shutdown timeout, as a first attempt.
            let mut retrying = self.retry(delivery, handler, closing, failure);
            let retried = tokio::select! {
                biased;
                retried = &mut retrying => retried,
                () = closing.cancelled() => {
                    stream.stop_intake();
                    let finishing = retrying.map(|handled| handled.or_else(Unsettled::into_outcome));
                    return self.finish_within_timeout(finishing).await;
                }
            };
            if let Err(unsettled) = retried {
                stream.stop_intake();
                return unsettled.into_outcome();
            }
        }
    }

    /// Up to `concurrency` messages at a time; same-key messages wait for each other.
    async fn run_concurrent<H: Handler<T>>(
        self: Arc<Self>,
        stream: &mut BoxDeliveryStream,
        handler: Arc<H>,
        stop: &Stop,
    ) -> Result<()> {
        // Cancelled on close or on a fatal error: handlers waiting to retry give up their message.
        let abandon = stop.token().child_token();
        let mut running = FuturesUnordered::new();
        let mut lanes = KeyLanes::default();
        let mut outcome = Ok(());
        let mut unsettled = Vec::new();
        let mut fair_share = FairShare::default();
        let start = |delivery: Delivery| {
            let runner = self.clone();
            let handler = handler.clone();
            let abandon = abandon.clone();
            async move {
                let key = delivery.metadata.key.clone();
                let handled = runner.handle(delivery, &*handler, &abandon).await;
                Finished { key, handled }
            }
        };

        loop {
            let has_room = running.len() < self.settings.concurrency;
            tokio::select! {
                biased;
                () = stop.token().cancelled() => break,
                Some(finished) = running.next() => {
                    let Finished { key, handled } = finished;
                    if let Err(left) = handled {
                        // Abandoned by a close that began meanwhile, or a fatal error: its
                        // key's next message does not start.
                        let Unsettled { acker, error } = left;
                        outcome = error.map_or(Ok(()), Err);
                        unsettled.push(acker);
                        break;
                    }
                    if let Some(next) = key.and_then(|key| lanes.release(&key)) {
                        running.push(start(next));
                    }
                }
                item = stream.next(), if has_room => match item {
                    Some(Ok(delivery)) => {
                        if let Some(delivery) = lanes.admit(delivery) {
                            running.push(start(delivery));
                        }
                        fair_share.take().await;
                    }
                    Some(Err(e)) => {
                        outcome = Err(e);
                        break;
                    }
                    None => break,
                },
            }
        }

        // Intake is closed; messages waiting behind their key were not started and are
        // delivered again later. Let running handlers finish, within the shutdown timeout.
        stream.stop_intake();
        if outcome.is_err() {
            abandon.cancel();
        }
        drop(lanes);
        drop(unsettled);
        let drain = async {
            let mut first_error = Ok(());
            while let Some(Finished { handled, .. }) = running.next().await {
                if let Err(Some(e)) = handled.map_err(Unsettled::into_error) {
                    abandon.cancel();
                    if first_error.is_ok() {
                        first_error = Err(e);
                    }
                }
            }
            first_error
        };
        let drained = self.finish_within_timeout(drain).await;
        outcome.and(drained)
    }

    /// Waits for running handlers up to the shutdown timeout; after it they are abandoned and
    /// their messages delivered again later.
    async fn finish_within_timeout(&self, running: impl Future<Output = Result<()>>) -> Result<()> {
        match tokio::time::timeout(self.settings.shutdown_timeout, running).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    topic = self.topic.name(),
                    group = %self.group,
                    "handlers still running after the shutdown timeout; their messages will be delivered again"
                );
                Ok(())
            }
        }
    }

    /// Handles one delivery to the end: acknowledged, dead-lettered, or left [`Unsettled`]
    /// (abandoned at close, or a fatal error). The concurrent runner runs one per message; the
    /// sequential one runs the same two steps in its own loop.
    ///
    /// The first attempt runs in this future, retries in a boxed one: this future is built and
    /// moved for every message, so it holds only what the first attempt needs. Not an
    /// `async fn`, which would store its arguments twice.
    #[allow(clippy::manual_async_fn)] // see above: the async block holds the delivery once
    fn handle<'a, H: Handler<T>>(
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
    fn conclude<'a, H: Handler<T>>(
        &'a self,
        delivery: Delivery,
        outcome: std::result::Result<(), Failure>,
        handler: &'a H,
        abandon: &'a CancellationToken,
    ) -> impl Future<Output = Handled> + Send + 'a {
        match outcome {
            Ok(()) => Either::Left(acknowledge(delivery).map(Ok)),
            Err(failure) => Either::Right(self.retry(delivery, handler, abandon, failure)),
        }
    }

    /// Decodes the payload and calls the handler once. A panic, in the call or in the future
    /// it returned, is a permanent failure.
    ///
    /// Decodes and calls before the first poll, so that the future holds only the handler's
    /// future, not the value and metadata it was built from.
    fn attempt<H: Handler<T>>(
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
    /// for good (dead-lettered) or closing abandons the message (given back unsettled).
    ///
    /// Boxed: it is rare, and its future (timers, the retry state, dead-lettering) is large.
    fn retry<'a, H: Handler<T>>(
        &'a self,
        delivery: Delivery,
        handler: &'a H,
        abandon: &'a CancellationToken,
        first: Failure,
    ) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let retry = &self.settings.retry;
            // Handler calls made so far.
            let mut calls = 0;
            let mut failure = first;
            loop {
                let failure_now = match failure {
                    Failure::Undecodable(reason) => {
                        return self.give_up(delivery, reason, calls).await;
                    }
                    Failure::Handler(e) => e,
                };
                calls += 1;
                if failure_now.is_permanent() || calls >= retry.max_attempts {
                    return self.give_up(delivery, failure_now.to_string(), calls).await;
                }
                let delay = retry.backoff(calls);
                tracing::debug!(
                    topic = self.topic.name(), group = %self.group, attempt = calls,
                    error = %failure_now, ?delay, "handler failed, retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = abandon.cancelled() => return Err(Unsettled::new(delivery, None)),
                }
                match self
                    .attempt(&delivery.payload, &delivery.metadata, handler)
                    .await
                {
                    Ok(()) => {
                        acknowledge(delivery).await;
                        return Ok(());
                    }
                    Err(again) => failure = again,
                }
            }
        })
    }

    /// Dead-letters and acknowledges the delivery, or, with dead-lettering off or when the
    /// dead letter is not published, gives it back unsettled with the error that stops the
    /// subscription. Runs within the boxed [`retry`](Self::retry).
    async fn give_up(&self, delivery: Delivery, reason: String, attempts: u32) -> Handled {
        let id = delivery.metadata.id_text().to_owned();
        if !self.dead_letters.is_enabled() {
            let error = Error::new(
                ErrorKind::Handler,
                format!(
                    "message {id} on topic {} for group {} failed after {attempts} attempts and \
                     dead-lettering is off: {reason}",
                    self.topic.name(),
                    self.group
                ),
            );
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
fn acknowledged(ack: Completion<'static, ()>) -> impl Future<Output = ()> + Send {
    ack.map(|acked| {
        if let Err(e) = acked {
            tracing::warn!(error = %e, "acknowledgement failed; the message will be delivered again");
        }
    })
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("handler panicked: {text}")
}
