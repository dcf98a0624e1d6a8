//! Delivery reports as confirmations, with one shared allocation per message.
//!
//! The producer is a `ThreadedProducer` whose delivery callback turns the report into the
//! message's receipt (or error) and fills it into the message's [`Report`], handed to
//! librdkafka as the message's opaque and to the publisher as its [`Confirmation`]. rdkafka's
//! `FutureProducer` pays a oneshot channel and a boxed sender per message for the same; this
//! pays one `Arc`.

use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use broker_api::{
    Confirmation, Error, ErrorKind, MessageId, PendingReceipt, Position, Receipt, ReceiptSlot,
    Result,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::Message as _;

use crate::context::ClientLog;
use crate::error::{from_kafka, BACKEND};
use crate::provision::Provisioner;

/// One message's delivery report, once it arrives.
pub(crate) struct Report {
    id: MessageId,
    slot: ReceiptSlot,
}

impl Report {
    /// The report of message `id`, to be handed to librdkafka with the message.
    pub(crate) fn new(id: MessageId) -> Arc<Report> {
        Arc::new(Report {
            id,
            slot: ReceiptSlot::default(),
        })
    }

    /// The confirmation that resolves with this report.
    pub(crate) fn confirmation(self: Arc<Self>) -> Confirmation {
        Confirmation::shared(self)
    }
}

impl PendingReceipt for Report {
    fn poll_receipt(&self, cx: &mut Context<'_>) -> Poll<Result<Receipt>> {
        self.slot.poll_receipt(cx)
    }
}

/// The producer's callbacks: logs, and delivery reports into each message's [`Report`].
pub(crate) struct Deliveries {
    log: ClientLog,
    /// Told when the broker reports a topic unknown (deleted behind our back), so that the
    /// next publish provisions it again.
    topics: OnceLock<Weak<Provisioner>>,
}

impl Deliveries {
    pub(crate) fn new(log: ClientLog) -> Self {
        Deliveries {
            log,
            topics: OnceLock::new(),
        }
    }

    /// Tells `topics` about topics the broker reports unknown.
    pub(crate) fn attach(&self, topics: &Arc<Provisioner>) {
        let _ = self.topics.set(Arc::downgrade(topics));
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
            code => {
                if matches!(
                    code,
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) {
                    if let Some(topics) = self.topics.get().and_then(Weak::upgrade) {
                        topics.forget(topic);
                    }
                }
                from_kafka(
                    "publish",
                    format!("message {id} to topic {topic} was not confirmed by the broker"),
                    error.clone(),
                )
            }
        }
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Arc<Report>) {
        let waiter = report.slot.store(match result {
            Ok(message) => Ok(Receipt {
                message_id: report.id.clone(),
                position: Position::Kafka {
                    partition: message.partition(),
                    offset: message.offset(),
                },
            }),
            Err((error, message)) => Err(self.failed(&report.id, error, message)),
        });
        // Let go of the report before waking its waiter, which then frees it on its own thread.
        drop(report);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_report_resolves_its_confirmation_once_filled_in() {
        let report = Report::new(MessageId::from("m-1"));
        let mut waiting = report.clone().confirmation();
        assert!((&mut waiting).now_or_never().is_none());
        report.slot.fill(Ok(Receipt {
            message_id: report.id.clone(),
            position: Position::Kafka {
                partition: 2,
                offset: 41,
            },
        }));
        let receipt = waiting.now_or_never().and_then(Result::ok);
        assert_eq!(
            receipt.map(|r| (r.message_id, r.position)),
            Some((
                MessageId::from("m-1"),
                Position::Kafka {
                    partition: 2,
                    offset: 41
                }
            ))
        );
    }
}
