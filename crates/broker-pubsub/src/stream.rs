//! The consumer side of a subscription: the [`DeliveryStream`] handed to the runners, the sink
//! the pulling task fills, and the acknowledgement handle of each delivery.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use broker_api::completion::{self, Completion};
use broker_api::{Acker, Acknowledge, Delivery, DeliveryStream, Error, ErrorKind, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use google_cloud_pubsub::model::Message as PubsubMessage;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::BACKEND;
use crate::mapping::from_pubsub;

/// How long closing a subscription waits for its pulling task to send the last
/// acknowledgements.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pulling task puts the deliveries of one [`SubscriptionStream`].
pub(crate) struct Sink {
    topic: Arc<str>,
    sender: mpsc::Sender<Result<Delivery>>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

/// A message handed back by a sink whose consumer stopped.
pub(crate) type Returned = (PubsubMessage, Handler);

impl Sink {
    /// A sink and its stream for a subscription of `topic` holding at most `max_in_flight`
    /// unsettled deliveries; `stop` ends both.
    pub(crate) fn new(
        topic: Arc<str>,
        max_in_flight: usize,
        stop: CancellationToken,
    ) -> (Arc<Sink>, SubscriptionStream) {
        let limit = max_in_flight.max(1);
        let (sender, receiver) = mpsc::channel(limit);
        let sink = Arc::new(Sink {
            topic,
            sender,
            permits: Arc::new(Semaphore::new(limit)),
            stop: stop.clone(),
        });
        let stream = SubscriptionStream {
            receiver,
            stop,
            task: None,
        };
        (sink, stream)
    }

    /// Whether the consumer still takes deliveries.
    pub(crate) fn is_open(&self) -> bool {
        !self.stop.is_cancelled() && !self.sender.is_closed()
    }

    /// Resolves when the consumer stops.
    pub(crate) async fn stopped(&self) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = self.sender.closed() => {}
        }
    }

    /// Hands a message to the consumer once it has room (fewer than `max_in_flight`
    /// unsettled deliveries), or hands it back when the consumer stops first. The delivery is
    /// live while `pull` is (see [`PullLife`]).
    pub(crate) async fn offer(
        &self,
        message: PubsubMessage,
        handler: Handler,
        pull: &PullLife,
    ) -> Option<Returned> {
        let permit = tokio::select! {
            biased;
            () = self.stopped() => return Some((message, handler)),
            permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Some((message, handler)),
            },
        };
        let attempt = handler.delivery_attempt();
        let (payload, metadata) = from_pubsub(&self.topic, message, attempt);
        let acker = Acker::boxed(Box::new(PubSubAcker {
            handler: Some(handler),
            pull: pull.clone(),
            _permit: permit,
        }));
        // Never waits: the channel holds as many deliveries as there are permits. A delivery
        // the consumer no longer takes is dropped, which rejects it.
        let _ = self
            .sender
            .send(Ok(Delivery::new(payload, metadata, acker)))
            .await;
        None
    }

    /// Ends the consumer's stream with `error`, once it has room for it; not when the consumer
    /// stops first (closing does not wait for a consumer that no longer reads).
    pub(crate) async fn fail(&self, error: Error) {
        tokio::select! {
            biased;
            () = self.stopped() => {}
            _ = self.sender.send(Err(error)) => {}
        }
    }
}

/// The deliveries of one subscription.
///
/// Ends when it is closed, when the backend is closed, or after yielding the error that made
/// the subscription fail for good.
pub(crate) struct SubscriptionStream {
    receiver: mpsc::Receiver<Result<Delivery>>,
    stop: CancellationToken,
    /// The task that pulls for this stream alone, awaited on close so that acknowledgements
    /// already given are sent.
    task: Option<JoinHandle<()>>,
}

impl SubscriptionStream {
    /// Awaits `task` when the stream is closed.
    pub(crate) fn owning(mut self, task: JoinHandle<()>) -> Self {
        self.task = Some(task);
        self
    }
}

impl Stream for SubscriptionStream {
    type Item = Result<Delivery>;

    /// Skips deliveries whose streaming pull ended while they waited: the service delivers
    /// them again (after the earlier messages of their key), and their acknowledgements would
    /// be dropped.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.stop.is_cancelled() {
            self.receiver.close();
            return Poll::Ready(None);
        }
        loop {
            match ready!(self.receiver.poll_recv(cx)) {
                Some(Ok(delivery)) if !delivery.is_live() => drop(delivery),
                item => return Poll::Ready(item),
            }
        }
    }
}

impl DeliveryStream for SubscriptionStream {
    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.stop.cancel();
            self.receiver.close();
            // Deliveries still queued are rejected now, so they are delivered again at once.
            while self.receiver.try_recv().is_ok() {}
            if let Some(task) = self.task.take() {
                match tokio::time::timeout(CLOSE_TIMEOUT, task).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(Error::new(ErrorKind::Other, "the subscription task failed")
                            .backend(BACKEND)
                            .operation("close subscription")
                            .source(e))
                    }
                    Err(_) => tracing::warn!(
                        "the subscription did not finish its last acknowledgements within {CLOSE_TIMEOUT:?}"
                    ),
                }
            }
            Ok(())
        }
        .boxed()
    }
}

impl Drop for SubscriptionStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether the streaming pull a message came from still stands. Once it was replaced (it
/// failed and was reopened) or shut down, the client rejected the messages it held and drops
/// their acknowledgements: the service delivers them again.
#[derive(Clone, Debug)]
pub(crate) struct PullLife(Arc<AtomicBool>);

impl PullLife {
    /// A pull just opened.
    pub(crate) fn new() -> Self {
        PullLife(Arc::new(AtomicBool::new(true)))
    }

    /// The pull was replaced or shut down.
    pub(crate) fn end(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn is_live(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Settles one message through the client's handler and frees its in-flight permit.
/// Dropping it unsettled rejects the message (the client's handler does so on drop).
struct PubSubAcker {
    handler: Option<Handler>,
    pull: PullLife,
    _permit: OwnedSemaphorePermit,
}

impl Acknowledge for PubSubAcker {
    /// Hands the acknowledgement to the client, which sends it within about 100 ms (batched).
    /// Once the message's streaming pull ended the client would drop it: a `Connection` error
    /// says so, and the service delivers the message again.
    fn ack(mut self: Box<Self>) -> Completion<'static, ()> {
        let Some(handler) = self.handler.take() else {
            return completion::ready(Ok(()));
        };
        if !self.pull.is_live() {
            return completion::ready(Err(Error::new(
                ErrorKind::Connection,
                "not acknowledged: the streaming pull this message came from ended, and Pub/Sub \
                 delivers it again",
            )
            .backend(BACKEND)
            .operation("ack")));
        }
        handler.ack();
        completion::ready(Ok(()))
    }

    /// Sets the message's acknowledgement deadline to zero, so the service delivers it again
    /// at once.
    fn nack(mut self: Box<Self>) -> Completion<'static, ()> {
        if let Some(handler) = self.handler.take() {
            handler.nack();
        }
        completion::ready(Ok(()))
    }

    /// Live while its streaming pull stands.
    fn is_live(&self) -> bool {
        self.handler.is_some() && self.pull.is_live()
    }
}
