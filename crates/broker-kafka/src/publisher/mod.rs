//! Publishing: one idempotent `acks=all` producer shared by every publisher of the backend.
//!
//! `send` hands the record to librdkafka synchronously when its queue has room and returns the
//! delivery report as the confirmation ([`crate::delivery`]: no allocation per message),
//! so any number of messages are in flight with no await per message. Only when librdkafka
//! reports its queue full does `send` wait (boxed), retrying until the delivery timeout; sends
//! made while one waits queue behind it ([`waiting_line`]), so that records keep their call order. The line is
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
//! Replacing, draining and closing are in [`lifecycle`]; [`record`] builds a message's headers.

mod lifecycle;
mod record;
mod waiting_line;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, UNIX_EPOCH};

use broker_api::completion::{self, Completion};
use broker_api::{Confirmation, Error, ErrorKind, Message, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use self::record::{wire_headers, wire_size};
use self::waiting_line::WaitingLine;
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
}
