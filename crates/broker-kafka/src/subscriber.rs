//! Subscriptions: a consumer in the group, its thread, and the stream of its deliveries.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use broker_api::{
    BoxDeliveryStream, Delivery, DeliveryStream, Error, ErrorKind, Result, StartFrom,
    SubscribeRequest,
};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, watch};

use crate::ack::Shared;
use crate::config::KafkaConfig;
use crate::consumer::{self, Hooks, KafkaConsumer};
use crate::error::{from_kafka, BACKEND};

/// What the backend keeps of a subscription to close it.
pub(crate) struct Handle {
    shared: std::sync::Weak<Shared>,
    done: watch::Receiver<bool>,
}

impl Handle {
    /// Whether the subscription's consumer is gone.
    pub(crate) fn is_finished(&self) -> bool {
        *self.done.borrow() || self.shared.strong_count() == 0
    }

    /// Asks the subscription to stop; its stream ends.
    pub(crate) fn stop(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.stop();
        }
    }

    /// Waits until the consumer has committed and left its group, or `timeout` passed.
    /// Returns whether it finished.
    pub(crate) async fn finished(&self, timeout: Duration) -> bool {
        wait_done(self.done.clone(), timeout).await
    }
}

async fn wait_done(mut done: watch::Receiver<bool>, timeout: Duration) -> bool {
    // A dropped sender means the thread ended too.
    let wait = async { done.wait_for(|&finished| finished).await.map(|_| ()) };
    !matches!(tokio::time::timeout(timeout, wait).await, Err(_elapsed))
}

/// Opens a subscription for `request` (its topic is known to exist).
pub(crate) async fn open(
    config: &KafkaConfig,
    request: &SubscribeRequest,
) -> Result<(BoxDeliveryStream, Handle)> {
    let shared = Arc::new(Shared::new(
        &request.topic,
        &request.group,
        request.max_in_flight,
    ));
    let consumer: KafkaConsumer = config
        .consumer_config(&request.group, request.start_from)
        .create_with_context(Hooks::new(shared.clone()))
        .map_err(|e| crate::config::property_error(&e).operation("subscribe"))?;
    let topic = request.topic.clone();
    let start_from = request.start_from;
    let timeout = config.connect_timeout;
    // Joining and looking up offsets block: keep them off the async threads.
    let consumer = tokio::task::spawn_blocking(move || -> Result<KafkaConsumer> {
        if start_from == StartFrom::Latest {
            consumer::start_at_end(&consumer, &topic, timeout)?;
        }
        consumer.subscribe(&[&topic]).map_err(|e| {
            from_kafka("subscribe", format!("cannot subscribe to topic {topic}"), e)
        })?;
        Ok(consumer)
    })
    .await
    .map_err(|e| {
        from_kafka(
            "subscribe",
            format!("subscribing to {} failed: {e}", request.topic),
            KafkaError::Canceled,
        )
    })??;

    let (deliveries, receiver) = mpsc::unbounded_channel();
    let (done_sender, done) = watch::channel(false);
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || consumer::run(consumer, thread_shared, deliveries, done_sender))
        .map_err(|e| {
            Error::new(ErrorKind::Other, "cannot start the consumer thread")
                .backend(BACKEND)
                .operation("subscribe")
                .source(e)
        })?;
    tracing::debug!(topic = %request.topic, group = %request.group,
        start_from = consumer::describe(start_from), max_in_flight = request.max_in_flight,
        "subscribed");
    let handle = Handle {
        shared: Arc::downgrade(&shared),
        done: done.clone(),
    };
    let stream = KafkaStream {
        receiver,
        batch: Vec::new().into_iter(),
        shared,
        done,
        close_timeout: config.close_timeout,
        closed: false,
    };
    Ok((Box::new(stream), handle))
}

/// The deliveries of one subscription.
///
/// Ends when it is closed, when the backend is closed, or after yielding an error the
/// consumer cannot recover from. Dropping it closes the subscription in the background.
struct KafkaStream {
    receiver: mpsc::UnboundedReceiver<Vec<Result<Delivery>>>,
    batch: std::vec::IntoIter<Result<Delivery>>,
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    close_timeout: Duration,
    closed: bool,
}

impl Stream for KafkaStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.closed || self.shared.is_stopping() {
                return Poll::Ready(None);
            }
            if let Some(delivery) = self.batch.next() {
                return Poll::Ready(Some(delivery));
            }
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl DeliveryStream for KafkaStream {
    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            if !self.closed {
                self.closed = true;
                self.shared.stop();
                self.receiver.close();
                // Fetched but not handed out: delivered again to the group.
                self.batch = Vec::new().into_iter();
                while self.receiver.try_recv().is_ok() {}
            }
            if !wait_done(self.done.clone(), self.close_timeout).await {
                tracing::warn!(topic = %self.shared.topic(), group = self.shared.group(),
                    timeout = ?self.close_timeout,
                    "the consumer did not leave its group in time; it goes on closing in the background");
            }
            Ok(())
        }
        .boxed()
    }
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        self.shared.stop();
    }
}
