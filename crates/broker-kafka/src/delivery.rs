//! Delivery reports as confirmations, with no allocation per message.
//!
//! The producer is a `ThreadedProducer` whose delivery callback turns the report into the message's
//! receipt (or error) and fills it into the message's entry of [`Reports`], a [`ReceiptPool`] of
//! entries reused from one message to the next. The entry's key is the message's opaque in
//! librdkafka and its [`Confirmation`](broker_api::Confirmation)'s key. rdkafka's `FutureProducer`
//! pays a oneshot channel and a boxed sender per message for the same; a shared slot per message
//! costs an allocation on the publishing thread freed after librdkafka's thread wrote to it, which
//! contends for the allocator with librdkafka's own per-message allocations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use broker_api::{Error, ErrorKind, MessageId, Position, Receipt, ReceiptPool};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::Message as _;

use crate::context::ClientLog;
use crate::error::{from_kafka, kind_of, BACKEND};
use crate::provision::Provisioner;

/// The confirmations of the messages a producer has in flight, keyed by each record's opaque.
pub(crate) type Reports = ReceiptPool<Receipt>;

/// The producer's callbacks: logs, and delivery reports into each message's entry of
/// [`Reports`].
pub(crate) struct Deliveries {
    log: ClientLog,
    reports: Arc<Reports>,
    /// Told when the broker reports a topic unknown (deleted behind our back), so that the
    /// next publish provisions it again.
    topics: OnceLock<Weak<Provisioner>>,
    /// Set when the producer stopped after a fatal error: librdkafka then purges its queue (as
    /// does replacing the producer), and those messages fail as [`purged_by_fatal_error`].
    failed: AtomicBool,
    /// Set when the backend closes: messages purged from then on fail as closed.
    closing: AtomicBool,
}

impl Deliveries {
    /// Callbacks filling `reports` (shared by the producers that replace one another after a
    /// fatal error) and telling `topics`, once set, about topics the broker reports unknown.
    pub(crate) fn new(
        log: ClientLog,
        reports: Arc<Reports>,
        topics: Option<Weak<Provisioner>>,
    ) -> Self {
        let attached = OnceLock::new();
        if let Some(topics) = topics {
            let _ = attached.set(topics);
        }
        Deliveries {
            log,
            reports,
            topics: attached,
            failed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    /// Says that the producer stopped after a fatal error (also told by librdkafka's error
    /// event, which may come later).
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Says that the backend closes: messages purged from the queue from now on fail as closed.
    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Tells `topics` about topics the broker reports unknown.
    pub(crate) fn attach(&self, topics: &Weak<Provisioner>) {
        let _ = self.topics.set(topics.clone());
    }

    /// The error of a delivery report that says the message was not stored.
    fn failed(&self, id: &MessageId, error: &KafkaError, message: &BorrowedMessage<'_>) -> Error {
        let topic = message.topic();
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                let size = message.payload().map_or(0, <[u8]>::len)
                    + message.key().map_or(0, <[u8]>::len)
                    + message.headers().map_or(0, |h| {
                        h.iter()
                            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                            .sum()
                    });
                Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "message {id} of {size} bytes (payload, key and headers) to topic {topic} \
                         is larger than the broker accepts (the topic's max.message.bytes)"
                    ),
                )
                .backend(BACKEND)
                .operation("publish")
                .source(error.clone())
            }
            Some(RDKafkaErrorCode::PurgeQueue)
                if self.failed.load(Ordering::Acquire) && !self.closing.load(Ordering::Acquire) =>
            {
                purged_by_fatal_error(id, topic, error.clone())
            }
            code => {
                if matches!(
                    code,
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) {
                    Provisioner::forget_unknown(&self.topics, topic);
                }
                let fate = fate(code);
                let cause = if fate.is_empty() {
                    String::new()
                } else {
                    self.log.last_error_clause()
                };
                from_kafka(
                    "publish",
                    format!(
                        "message {id} to topic {topic} was not confirmed by the broker{fate}{cause}"
                    ),
                    error.clone(),
                )
            }
        }
    }
}

/// The error of a message purged from the queue of a producer that stopped after a fatal
/// error (librdkafka purges the queue then, and so does the replacing of the producer):
/// temporary, since the next publish goes to a new producer or says why none can take it. A
/// message queued again after a failed attempt may have been stored by that attempt.
fn purged_by_fatal_error(id: &MessageId, topic: &str, error: KafkaError) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "message {id} to topic {topic} was not confirmed: the producer holding it stopped \
             after a fatal error; it may or may not have been stored, publish it again"
        ),
    )
    .temporary(true)
    .backend(BACKEND)
    .operation("publish")
    .source(error)
}

/// What a failed delivery's error code says about the message: one that timed out, lost its
/// connection or was purged at close may have been written before its answer was lost (a
/// purged message may have been sent once and queued again for a retry), so sending it again
/// may store it twice.
fn fate(code: Option<RDKafkaErrorCode>) -> &'static str {
    let unknown = code.map(kind_of).is_some_and(|kind| {
        matches!(
            kind,
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Closed
        )
    });
    if unknown {
        "; it may or may not have been stored"
    } else {
        ""
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Before the reports of what librdkafka purges after it: they come on the same queue.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.mark_failed();
        }
        self.log.error(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, key: usize) {
        self.reports.fill(key, |id| match result {
            Ok(message) => Ok(Receipt {
                message_id: id.clone(),
                position: Position::Kafka {
                    partition: message.partition(),
                    offset: message.offset(),
                },
            }),
            Err((error, message)) => Err(self.failed(id, error, message)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_purged_after_a_fatal_error_is_worth_publishing_again() {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue);
        let err = purged_by_fatal_error(&MessageId::from("m-1"), "orders", error);
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.is_temporary());
        assert!(
            err.to_string().contains("message m-1 to topic orders"),
            "{err}"
        );
        // Purged at close, it is closed, as before.
        assert_eq!(kind_of(RDKafkaErrorCode::PurgeQueue), ErrorKind::Closed);
    }
}
