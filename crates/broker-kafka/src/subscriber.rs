//! Subscriptions: a consumer in the group and the stream that reads it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_api::{
    BoxDeliveryStream, Delivery, DeliveryStream, Error, ErrorKind, Result, StartFrom,
    SubscribeRequest,
};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use rdkafka::consumer::Consumer;
use tokio::sync::watch;

use crate::ack::Shared;
use crate::config::KafkaConfig;
use crate::consumer::{self, Hooks, KafkaConsumer, STORE_INTERVAL};
use crate::error::{from_kafka, BACKEND};
use crate::inbound::PayloadBuffer;
use crate::keep_alive;

/// How long an idle stream sleeps at most before it looks again by itself: bounds how late
/// handled offsets are stored while nothing arrives.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// How soon a stream that just ran dry looks again by itself. librdkafka's wake-up when records
/// arrive is not always delivered, so a stream that was busy re-checks soon, backing off to
/// [`IDLE_CHECK`] while it stays idle.
const FIRST_IDLE_CHECK: Duration = Duration::from_millis(1);

/// One subscription's consumer, and its closing.
///
/// The consumer sits behind a mutex so that closing can take it away from the stream, and the
/// keeper poll it while the stream does not: the stream and the keeper hold the lock while they
/// poll (without waiting for records; pausing and resuming wait briefly for librdkafka's
/// threads), closing takes the consumer to a thread of its own, commits and leaves the group
/// there.
pub(crate) struct Subscription {
    consumer: Mutex<Option<KafkaConsumer>>,
    shared: Arc<Shared>,
    closed: watch::Sender<bool>,
}

impl Subscription {
    fn consumer(&self) -> MutexGuard<'_, Option<KafkaConsumer>> {
        self.consumer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the consumer has left its group.
    pub(crate) fn is_finished(&self) -> bool {
        *self.closed.borrow()
    }

    /// Stops the stream and starts leaving the group (once), on a thread of its own: the
    /// handled prefix is committed synchronously, then the consumer closes.
    pub(crate) fn close(&self) {
        self.shared.stop();
        let Some(consumer) = self.consumer().take() else {
            return;
        };
        let shared = self.shared.clone();
        let closed = self.closed.clone();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                consumer::finish(consumer, &shared);
                closed.send_replace(true);
            });
        if let Err(error) = spawned {
            // The refused closure, consumer included, was dropped on this thread: the consumer
            // left its group here (blocking this thread meanwhile), its revoke hook committing
            // what was handled asynchronously instead of synchronously.
            tracing::warn!(topic = %self.shared.topic(), group = self.shared.group(), %error,
                "cannot start a thread to close the consumer; it left its group on the calling thread");
            self.closed.send_replace(true);
        }
    }

    /// One look of the keeper ([`keep_alive`]); false once there is nothing left to keep (the
    /// consumer was closed, or failed for good).
    pub(crate) fn keep_alive(&self) -> bool {
        let guard = match self.consumer.try_lock() {
            Ok(guard) => guard,
            // The stream is reading.
            Err(TryLockError::WouldBlock) => return true,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        match guard.as_ref() {
            Some(consumer) => keep_alive::look(consumer, &self.shared),
            None => false,
        }
    }

    /// Waits until the consumer has left its group, or `timeout` passed; says which.
    pub(crate) async fn closed(&self, timeout: Duration) -> bool {
        let mut closed = self.closed.subscribe();
        let result = tokio::time::timeout(timeout, closed.wait_for(|&done| done)).await;
        matches!(result, Ok(Ok(_)))
    }
}

/// Opens a subscription for `request` (its topic is known to exist).
pub(crate) async fn open(
    config: &KafkaConfig,
    request: &SubscribeRequest,
) -> Result<(BoxDeliveryStream, Arc<Subscription>)> {
    let shared = Arc::new(Shared::new(
        &request.topic,
        &request.group,
        request.max_in_flight,
    ));
    let mut consumer: KafkaConsumer = config
        .consumer_client_config(&request.group, request.start_from, request.max_in_flight)
        .create_with_context(Hooks::new(shared.clone()))
        .map_err(|e| crate::config::property_error(&e).operation("subscribe"))?;
    let waker_shared = shared.clone();
    consumer.set_nonempty_callback(move || waker_shared.wake_reader());
    let topic = request.topic.clone();
    let start_from = request.start_from;
    let timeout = config.connect_timeout;
    // Looking up offsets blocks: keep it off the async threads.
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
        Error::new(
            ErrorKind::Other,
            format!("subscribing to {} failed", request.topic),
        )
        .backend(BACKEND)
        .operation("subscribe")
        .source(e)
    })??;
    tracing::debug!(topic = %request.topic, group = %request.group,
        start_from = consumer::describe(start_from), max_in_flight = request.max_in_flight,
        "subscribed");
    let subscription = Arc::new(Subscription {
        consumer: Mutex::new(Some(consumer)),
        shared: shared.clone(),
        closed: watch::Sender::new(false),
    });
    keep_alive::spawn(&subscription);
    let stream = KafkaStream {
        subscription: subscription.clone(),
        shared,
        batch: VecDeque::new(),
        epoch_changes: 0,
        payloads: PayloadBuffer::default(),
        idle: Box::pin(tokio::time::sleep(IDLE_CHECK)),
        idle_delay: FIRST_IDLE_CHECK,
        last_store: Instant::now(),
        close_timeout: config.close_timeout,
        ended: false,
    };
    Ok((Box::new(stream), subscription))
}

/// The deliveries of one subscription.
///
/// Reads the consumer when polled, in batches of what librdkafka has ready. Ends when it is
/// closed, when the backend is closed, or after yielding an error the consumer cannot recover
/// from. Dropping it closes the subscription in the background.
struct KafkaStream {
    subscription: Arc<Subscription>,
    shared: Arc<Shared>,
    /// Read and admitted, not handed out yet, with their epochs.
    batch: VecDeque<(u64, Delivery)>,
    /// [`Shared::epoch_changes`] when the batch was last known current.
    epoch_changes: u64,
    payloads: PayloadBuffer,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_delay: Duration,
    last_store: Instant,
    close_timeout: Duration,
    ended: bool,
}

impl KafkaStream {
    /// Drops the batched deliveries whose partition was rewound (a nack) or revoked since they
    /// were read: handed out, they would run ahead of the rewound message, or on a partition
    /// another member now reads. They are delivered again.
    fn drop_stale(&mut self) {
        let changes = self.shared.epoch_changes();
        if changes == self.epoch_changes {
            return;
        }
        self.epoch_changes = changes;
        drop(self.shared.take_stale(&mut self.batch));
    }

    /// Housekeeping and one non-blocking read of the consumer.
    fn read(&mut self, room: usize) -> Option<Result<usize>> {
        let guard = self.subscription.consumer();
        let consumer = guard.as_ref()?;
        consumer::rewind(consumer, &self.shared);
        if self.last_store.elapsed() >= STORE_INTERVAL {
            consumer::store(consumer, &self.shared, &self.shared.take_moved());
            self.last_store = Instant::now();
        }
        if let Err(error) = self.shared.polling().check_ended(&self.shared) {
            return Some(Err(error));
        }
        if room == 0 || !keep_alive::resume(consumer, &self.shared) {
            return Some(Ok(0));
        }
        self.epoch_changes = self.shared.epoch_changes();
        Some(consumer::read_ready(
            consumer,
            &self.shared,
            room,
            &mut self.payloads,
            &mut self.batch,
        ))
    }
}

impl Stream for KafkaStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut registered = false;
        loop {
            if this.ended || this.shared.is_stopping() {
                return Poll::Ready(None);
            }
            this.drop_stale();
            if let Some((_, delivery)) = this.batch.pop_front() {
                this.shared.polling().note_read();
                return Poll::Ready(Some(Ok(delivery)));
            }
            let room = this.shared.room();
            match this.read(room) {
                None => return Poll::Ready(None),
                Some(Err(error)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Some(Ok(read)) if read > 0 => {
                    this.idle_delay = FIRST_IDLE_CHECK;
                    continue;
                }
                Some(Ok(_)) => {}
            }
            if registered {
                // Nothing ready after registering: librdkafka wakes us when records arrive, an
                // acknowledgement when a slot frees; the idle timer stores offsets meanwhile.
                this.idle
                    .as_mut()
                    .reset(tokio::time::Instant::now() + this.idle_delay);
                this.idle_delay = (this.idle_delay * 2).min(IDLE_CHECK);
                if this.idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                registered = false;
                continue;
            }
            // Register, then look once more: a record or a slot may have come in between.
            this.shared.register_reader(cx.waker());
            registered = true;
        }
    }
}

impl DeliveryStream for KafkaStream {
    /// From now on a dropped delivery leaves its partition's position where it is instead of
    /// rewinding the partition, which would discard the acknowledgements of the handlers
    /// still finishing.
    fn stop_intake(&mut self) {
        self.shared.stop();
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.ended = true;
            // Stops first: read but not handed out, the batch is delivered again to the group
            // without rewinding (which would discard acknowledgements still to come).
            self.subscription.close();
            self.batch.clear();
            if !self.subscription.closed(self.close_timeout).await {
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
        self.subscription.close();
        self.batch.clear();
    }
}
