//! Keeps a subscription's consumer in its group while its stream does not read.
//!
//! librdkafka serves rebalances, and counts a member alive (`max.poll.interval.ms`), only while
//! its consumer is polled. The stream polls it only when it may hand deliveries out: at its
//! read limits (every `max_in_flight` slot taken, or the offset window behind an unsettled
//! delivery full), or while the application does not ask for the next delivery, nothing would
//! poll it, and a rebalance of the whole group would wait — for as long as one message is
//! retried, say — until the member is taken out of the group after `max.poll.interval.ms`.
//!
//! So a task looks every [`INTERVAL`]: when the stream did not read (nor hand out a delivery)
//! since the last look, it pauses the member's partitions and polls the consumer for its events
//! (rebalances, commit results), as Kafka's own consumers are meant to be used with long
//! handlers, and stores the offsets acknowledgements moved meanwhile for the next
//! commit. The stream resumes the partitions when it reads again; records fetched before the
//! pause are dropped by librdkafka and fetched again from the last one handed out. The task
//! ends when the subscription closes, or its consumer failed for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use broker_api::Result;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::Message;

use crate::ack::Shared;
use crate::consumer::{self, KafkaConsumer};
use crate::subscriber::Subscription;

/// How often the keeper looks whether the stream read: a member held at its limits answers a
/// rebalance within about twice this.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Polls in one look: events (a rebalance, commit results) come one a poll.
const POLLS: usize = 16;

/// Who polls the consumer: the stream, or the keeper while the stream does not read.
#[derive(Default)]
pub(crate) struct Polling {
    /// Set each time the stream reads; cleared when the keeper looks.
    read: AtomicBool,
    /// The member's partitions are paused and the keeper polls the consumer. Changed only
    /// while the consumer's lock is held, by the stream, the keeper and the rebalance hook.
    held: AtomicBool,
    /// A consumer error ending the subscription that the keeper polled, for the stream to
    /// report.
    ending: OnceLock<KafkaError>,
}

impl Polling {
    /// The stream read the consumer, or handed out a delivery it had read.
    pub(crate) fn note_read(&self) {
        self.read.store(true, Ordering::Release);
    }

    /// Whether the stream read since the last call.
    fn take_read(&self) -> bool {
        self.read.swap(false, Ordering::AcqRel)
    }

    /// Fails with the consumer error ending the subscription that the keeper polled, if it did.
    pub(crate) fn check_ended(&self, shared: &Shared) -> Result<()> {
        match self.ending.get() {
            Some(error) => Err(consumer::ended(shared, error.clone())),
            None => Ok(()),
        }
    }

    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// Starts the task that keeps `subscription`'s consumer polled; it ends with the subscription.
pub(crate) fn spawn(subscription: &Arc<Subscription>) {
    let subscription = Arc::downgrade(subscription);
    tokio::spawn(keep(subscription));
}

async fn keep(subscription: Weak<Subscription>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let Some(subscription) = subscription.upgrade() else {
            return;
        };
        if !subscription.keep_alive() {
            return;
        }
    }
}

/// One look of the keeper: when the stream did not read since the last one, pauses the
/// assignment (once) and serves the consumer's events. False once the consumer failed for
/// good or was refused (the stream reports it): nothing is left to keep.
pub(crate) fn look(consumer: &KafkaConsumer, shared: &Shared) -> bool {
    if shared.polling().ending.get().is_some() {
        return false;
    }
    if shared.polling().take_read() {
        return true;
    }
    // Acknowledgements since the stream last read move the group's committed position on.
    consumer::store(consumer, shared, &shared.take_moved());
    if !shared.polling().is_held() {
        let paused = consumer
            .assignment()
            .and_then(|assignment| consumer.pause(&assignment));
        if let Err(error) = paused {
            tracing::warn!(topic = %shared.topic(), group = shared.group(), %error,
                "cannot pause the partitions of a subscription that is not read; its consumer is not polled until it is");
            return true;
        }
        shared.polling().held.store(true, Ordering::Release);
        tracing::debug!(topic = %shared.topic(), group = shared.group(),
            "subscription not read: partitions paused, consumer polled for its events");
    }
    serve_events(consumer, shared);
    true
}

/// Before the stream reads: resumes the partitions the keeper paused; says whether the stream
/// may read (not while this fails: it is tried again at its next read, and the keeper goes on
/// polling the consumer meanwhile).
pub(crate) fn resume(consumer: &KafkaConsumer, shared: &Shared) -> bool {
    let polling = shared.polling();
    if polling.is_held() {
        let resumed = consumer
            .assignment()
            .and_then(|assignment| consumer.resume(&assignment));
        if let Err(error) = resumed {
            tracing::warn!(topic = %shared.topic(), group = shared.group(), %error,
                "cannot resume the paused partitions; trying again at the next read");
            return false;
        }
        polling.held.store(false, Ordering::Release);
        tracing::debug!(topic = %shared.topic(), group = shared.group(), "partitions resumed");
    }
    polling.note_read();
    true
}

/// From the rebalance hook: newly assigned partitions are paused while the keeper holds the
/// consumer, resumed otherwise (librdkafka keeps a partition's pause across assignments, so a
/// partition paused while this member owned it before would otherwise stay paused).
pub(crate) fn assigned(consumer: &KafkaConsumer, shared: &Shared, list: &TopicPartitionList) {
    let (done, what) = if shared.polling().is_held() {
        (consumer.pause(list), "pause")
    } else {
        (consumer.resume(list), "resume")
    };
    if let Err(error) = done {
        tracing::warn!(topic = %shared.topic(), group = shared.group(), %error,
            "cannot {what} newly assigned partitions");
    }
}

/// Polls [`POLLS`] times without blocking: a poll that serves an event returns nothing, like
/// one that finds nothing, so emptiness cannot be told. A record is not expected (its partition
/// is paused); should one come, it is read again later, like a nacked one.
fn serve_events(consumer: &KafkaConsumer, shared: &Shared) {
    for _ in 0..POLLS {
        match consumer.poll(Duration::ZERO) {
            None => {}
            Some(Ok(record)) => {
                tracing::debug!(topic = %shared.topic(), partition = record.partition(),
                    offset = record.offset(), "record read while paused; it is read again later");
                shared.read_again(record.partition(), record.offset());
            }
            Some(Err(error)) if consumer::ends_subscription(&error) => {
                let _ = shared.polling().ending.set(error);
                // The stream reports it.
                shared.wake_reader();
                return;
            }
            // Transient: logged by the client context; librdkafka retries by itself.
            Some(Err(_)) => {}
        }
    }
}
