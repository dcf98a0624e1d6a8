//! Publishing: one idempotent `acks=all` producer shared by every publisher of the backend.
//!
//! `send` hands the record to librdkafka synchronously when its queue has room and returns the
//! delivery report as the confirmation ([`crate::delivery`]: no allocation per message),
//! so any number of messages are in flight with no await per message. Only when librdkafka
//! reports its queue full does `send` wait (boxed), retrying until the delivery timeout; sends
//! made while one waits queue behind it, so that records keep their call order. The line is
//! taken in the order the waiting confirmations are first polled: call order when they are
//! awaited in turn (`publish`, `publish_batch`, a `FuturesOrdered`), and a confirmation that
//! waits for room but is no longer polled holds up those behind it until it is dropped.
//!
//! After a fatal error of the idempotent producer's sequence or id (the broker cannot accept
//! it, after a partition lost data) librdkafka's producer refuses every message: the next send
//! replaces it with a new producer and goes on. The old one keeps the answers of what it had
//! in flight: it is drained (flushed within the delivery timeout) before it is dropped, and
//! closing the backend flushes it too. Other fatal errors (credentials not allowed to write
//! idempotently, for one) would stop any new producer as well: publishes fail, saying why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use broker_api::completion::{self, Completion};
use broker_api::{Confirmation, Error, ErrorKind, Message, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::context::ClientLog;
use crate::delivery::{Deliveries, Reports};
use crate::error::{closed, from_kafka, payload_too_large, too_large, BACKEND};
use crate::provision::Provisioner;

pub(crate) use broker_api::{CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};

/// The producer type.
type KafkaProducer = ThreadedProducer<Deliveries>;

/// The shared producer.
pub(crate) struct Publisher {
    /// Replaced after a fatal error (see the module docs).
    producer: RwLock<Arc<KafkaProducer>>,
    /// Producers replaced after a fatal error, until they are drained.
    retired: Arc<Mutex<Vec<Arc<KafkaProducer>>>>,
    /// What makes a producer: its configuration, and what its callbacks share.
    config: ClientConfig,
    reports: Arc<Reports>,
    topics: OnceLock<Weak<Provisioner>>,
    log: ClientLog,
    message_max_bytes: usize,
    max_payload_bytes: usize,
    queue_wait: Duration,
    waiting: WaitingLine,
    /// Set by [`Publisher::close_intake`] under the producer's write lock, and read under its
    /// read lock by every send: a record is either handed over before closing flushes, or
    /// refused as closed.
    closed: AtomicBool,
}

/// What a send refused because the backend closed meets: librdkafka's own code for an
/// instance going away.
const CLOSED: KafkaError = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerDestroy);

/// The sends waiting for room in librdkafka's queue, in the order they were made.
#[derive(Default)]
struct WaitingLine {
    /// How many wait: while any does, a new send joins the line instead of overtaking it.
    len: AtomicUsize,
    /// Taken in turn (tokio's mutex is fair: first come, first served).
    turn: tokio::sync::Mutex<()>,
}

/// A send's place in the [`WaitingLine`], given up when it is done or dropped.
struct Place<'a>(&'a AtomicUsize);

impl WaitingLine {
    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn join(&self) -> Place<'_> {
        self.len.fetch_add(1, Ordering::AcqRel);
        Place(&self.len)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Publisher {
    /// A producer for `config`; it connects lazily.
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self> {
        let log = ClientLog::new("producer");
        let reports = Arc::new(Reports::default());
        let producer_config = config.producer_config();
        let producer = producer_config
            .create_with_context(Deliveries::new(log.clone(), reports.clone(), None))
            .map_err(|e| crate::config::property_error(&e))?;
        Ok(Publisher {
            producer: RwLock::new(Arc::new(producer)),
            retired: Arc::default(),
            config: producer_config,
            reports,
            topics: OnceLock::new(),
            log,
            message_max_bytes: config.message_max_bytes(),
            max_payload_bytes: config.max_payload_bytes(),
            queue_wait: config.effective_delivery_timeout(),
            waiting: WaitingLine::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// The largest payload accepted: `message.max.bytes` less room for key and headers, and a
    /// dead letter's headers.
    pub(crate) fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// The producer's log, for connect diagnostics.
    pub(crate) fn log(&self) -> &ClientLog {
        &self.log
    }

    /// Tells `topics` when the broker reports a topic unknown.
    pub(crate) fn attach(&self, topics: &Arc<Provisioner>) {
        let topics = Arc::downgrade(topics);
        self.current().context().attach(&topics);
        let _ = self.topics.set(topics);
    }

    /// The current producer, for metadata requests, flushing and purging.
    pub(crate) fn producer(&self) -> Arc<KafkaProducer> {
        self.current().clone()
    }

    fn current(&self) -> RwLockReadGuard<'_, Arc<KafkaProducer>> {
        self.producer.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the producer after librdkafka refused a message with a fatal error of its
    /// sequence or id; returns whether a working producer is in place (made here, or by a send
    /// that got here first).
    fn replace_failed(&self) -> bool {
        let mut producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((code, reason)) = producer.client().fatal_error() else {
            return true;
        };
        if !matches!(
            code,
            RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::Inconsistent
        ) {
            return false;
        }
        let context = Deliveries::new(
            self.log.clone(),
            self.reports.clone(),
            self.topics.get().cloned(),
        );
        match self.config.create_with_context(context) {
            Ok(fresh) => {
                tracing::warn!(%code, reason,
                    "the producer stopped after a fatal error; publishing goes on with a new one (the old one still gets the answers of what it had in flight)");
                let failed = std::mem::replace(&mut *producer, Arc::new(fresh));
                drop(producer);
                self.retire(failed);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "the producer stopped after a fatal error and no new one could be made");
                false
            }
        }
    }

    /// Queues `message` for `topic` (known to exist) and returns its confirmation.
    pub(crate) fn enqueue<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> Completion<'a, Confirmation> {
        if message.payload.len() > self.max_payload_bytes {
            return completion::ready(Err(payload_too_large(
                topic,
                message.payload.len(),
                self.max_payload_bytes,
                self.message_max_bytes,
            )));
        }
        if self.waiting.is_empty() {
            match self.try_enqueue(topic, &message) {
                Ok(key) => return completion::ready(Ok(self.reports.confirmation(key))),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {}
                Err(error) => return completion::ready(Err(self.refused(topic, &message, error))),
            }
        }
        // Counted from now: a send made next does not overtake it through the fast path.
        let place = self.waiting.join();
        completion::boxed(self.enqueue_when_room(topic, message, place))
    }

    /// Queues a send behind those already waiting for room in librdkafka's queue, then retries
    /// it until it fits or the delivery timeout passed.
    async fn enqueue_when_room(
        &self,
        topic: &str,
        message: Message,
        _place: Place<'_>,
    ) -> Result<Confirmation> {
        let deadline = Instant::now() + self.queue_wait;
        let _turn = self.waiting.turn.lock().await;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.try_enqueue(topic, &message) {
                Ok(key) => return Ok(self.reports.confirmation(key)),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(self.refused(topic, &message, error)),
            }
        }
    }

    /// Drains `failed` on a thread of its own: what it holds queued it would never send, so
    /// that fails at once; librdkafka still answers what it had in flight (dropped at once, it
    /// would purge those messages), within the delivery timeout; then it is dropped. Kept in
    /// `retired` meanwhile, for closing to flush it. Purging waits for librdkafka's threads,
    /// so it runs on the draining thread, not on the caller's (a runtime worker).
    fn retire(&self, failed: Arc<KafkaProducer>) {
        failed.context().mark_failed();
        let retired = self.retired.clone();
        lock(&retired).push(failed.clone());
        let timeout = self.queue_wait;
        let draining = std::thread::Builder::new()
            .name("kafka-producer-drain".into())
            .spawn(move || {
                failed.purge(rdkafka::producer::PurgeConfig::default().queue());
                if let Err(error) = failed.flush(timeout) {
                    tracing::warn!(%error, "a replaced producer did not get every answer in time");
                }
                lock(&retired).retain(|kept| !Arc::ptr_eq(kept, &failed));
            });
        if let Err(error) = draining {
            tracing::warn!(%error, "cannot start a thread to drain the replaced producer; closing flushes it");
        }
    }

    /// Hands one record to librdkafka; returns the key of its confirmation. A producer stopped
    /// by a fatal error is replaced and the record handed to the new one.
    fn try_enqueue(
        &self,
        topic: &str,
        message: &Message,
    ) -> std::result::Result<usize, KafkaError> {
        match self.try_enqueue_once(topic, message) {
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                if self.replace_failed() {
                    self.try_enqueue_once(topic, message)
                } else {
                    Err(error)
                }
            }
            other => other,
        }
    }

    fn try_enqueue_once(
        &self,
        topic: &str,
        message: &Message,
    ) -> std::result::Result<usize, KafkaError> {
        let producer = self.current();
        if self.closed.load(Ordering::Acquire) {
            return Err(CLOSED);
        }
        let reports = &self.reports;
        let key = reports
            .open(&message.id)
            .ok_or_else(|| KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))?;
        let mut record: BaseRecord<'_, str, [u8], usize> = BaseRecord::with_opaque_to(topic, key)
            .payload(&message.payload[..])
            .headers(wire_headers(message));
        if let Some(key) = &message.key {
            record = record.key(key.as_str());
        }
        if let Ok(since_epoch) = message.timestamp.duration_since(UNIX_EPOCH) {
            record = record.timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX));
        }
        producer.send(record).map(|()| key).map_err(|(error, _)| {
            reports.discard(key);
            error
        })
    }

    /// The error for a message librdkafka refused to queue.
    fn refused(&self, topic: &str, message: &Message, error: KafkaError) -> Error {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                too_large(topic, wire_size(message), self.message_max_bytes, error)
            }
            Some(RDKafkaErrorCode::BrokerDestroy) => closed("publish", "the Kafka backend"),
            Some(RDKafkaErrorCode::QueueFull) => Error::new(
                ErrorKind::Timeout,
                format!(
                    "the producer queue stayed full for {} (the broker is slow or away); \
                     message {} to topic {topic} was not sent{}",
                    humantime::format_duration(self.queue_wait),
                    message.id,
                    self.log.last_error_clause()
                ),
            )
            .backend(BACKEND)
            .operation("publish")
            .source(error),
            Some(RDKafkaErrorCode::Fatal) => {
                let cause = self.current().client().fatal_error().map_or_else(
                    || "no reason given".to_owned(),
                    |(code, reason)| format!("{code}: {reason}"),
                );
                Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "message {} to topic {topic} was not sent: the producer stopped for \
                         good after a fatal error ({cause}) that a new producer would meet \
                         too, or none could be made; connect the backend again once it is \
                         resolved",
                        message.id
                    ),
                )
                .backend(BACKEND)
                .operation("publish")
                .source(error)
            }
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                Provisioner::forget_unknown(&self.topics, topic);
                from_kafka(
                    "publish",
                    format!(
                        "message {} to topic {topic} was not sent: the cluster no longer knows the \
                         topic (deleted?); the next publish creates it again if auto_provision is \
                         on",
                        message.id
                    ),
                    error,
                )
            }
            _ => from_kafka(
                "publish",
                format!("message {} to topic {topic} was not sent", message.id),
                error,
            ),
        }
    }

    /// Refuses every send from now on, those waiting for room in librdkafka's queue too; a
    /// send already handing its record over finishes first, so that a flush after this sees
    /// every record a send accepted.
    pub(crate) fn close_intake(&self) {
        let _producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
    }

    /// Waits up to `timeout` for every queued message to be confirmed or to fail: the current
    /// producer's first, then what replaced producers still drain (their queued messages,
    /// which they would never send, fail at once). When time runs out, every message still
    /// queued or in flight fails as closed. Runs on a blocking thread: flushing and purging
    /// wait for librdkafka's threads.
    pub(crate) async fn flush_or_purge(self: &Arc<Self>, timeout: Duration) -> Result<()> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let flushed = this.flush(timeout);
            if let Err(error) = &flushed {
                tracing::warn!(%error, "pending publishes not confirmed at close; failing them");
                this.purge();
            }
            flushed
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(|e| {
            from_kafka(
                "close",
                format!(
                    "pending publishes were not all confirmed within {}",
                    humantime::format_duration(timeout)
                ),
                e,
            )
        })
    }

    /// Flushes the current producer, then each replaced one after purging its queue, all
    /// within `timeout`; blocks.
    fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut flushed = self.producer().flush(left());
        let retired = lock(&self.retired).clone();
        for producer in retired {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue());
            flushed = flushed.and(producer.flush(left()));
        }
        flushed
    }

    /// Fails every message still queued or in flight, as closed.
    fn purge(&self) {
        let all = rdkafka::producer::PurgeConfig::default().queue().inflight();
        for producer in lock(&self.retired).iter() {
            producer.context().mark_closing();
            producer.purge(all);
        }
        let current = self.current();
        current.context().mark_closing();
        current.purge(all);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The record headers: message id, content type, then the application's headers (entries
/// named like the first two are left out: the message's own fields win).
fn wire_headers(message: &Message) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2).insert(Header {
        key: MESSAGE_ID_HEADER,
        value: Some(message.id.as_str()),
    });
    if let Some(content_type) = &message.content_type {
        headers = headers.insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(content_type.as_ref()),
        });
    }
    for (name, value) in message.headers.without_wire_names() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers
}

/// Payload, key and headers, in bytes: what counts against `message.max.bytes`.
fn wire_size(message: &Message) -> usize {
    message.payload.len()
        + message.key.as_ref().map_or(0, String::len)
        + MESSAGE_ID_HEADER.len()
        + message.id.as_str().len()
        + message
            .content_type
            .as_ref()
            .map_or(0, |c| CONTENT_TYPE_HEADER.len() + c.len())
        + message
            .headers
            .without_wire_names()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn headers_carry_id_and_content_type_first() {
        let message = Message::new("x")
            .with_id("id-1")
            .with_content_type("text/plain")
            .with_header("a", "1")
            .with_header(MESSAGE_ID_HEADER, "spoofed");
        let headers = wire_headers(&message);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("message-id".to_owned(), "id-1".to_owned()),
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
        );
        assert_eq!(wire_size(&message), 1 + 10 + 4 + 12 + 10 + 2);
    }
}
