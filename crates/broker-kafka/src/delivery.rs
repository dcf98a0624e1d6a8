//! Delivery reports as confirmations, with one shared allocation per message.
//!
//! The producer is a `ThreadedProducer` whose delivery callback fills in the message's
//! [`Report`] (handed to librdkafka as the message's opaque) and wakes whoever waits for it.
//! rdkafka's `FutureProducer` pays a oneshot channel and a boxed sender per message for the
//! same; this pays one `Arc`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::Message as _;

use crate::context::ClientLog;

/// What the broker said about one message: where it was stored, or why not.
pub(crate) type Outcome = Result<(i32, i64), (KafkaError, OwnedMessage)>;

/// One message's delivery report, once it arrives.
#[derive(Default)]
pub(crate) struct Report {
    outcome: Mutex<Option<Outcome>>,
    waker: AtomicWaker,
}

impl Report {
    fn complete(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.waker.wake();
    }
}

/// Resolves with the report of one message.
pub(crate) struct Reported(pub(crate) Arc<Report>);

impl Future for Reported {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let report = &self.0;
        if let Some(outcome) = report.take() {
            return Poll::Ready(outcome);
        }
        report.waker.register(cx.waker());
        match report.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl Report {
    fn take(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The producer's callbacks: logs, and delivery reports into each message's [`Report`].
pub(crate) struct Deliveries {
    log: ClientLog,
}

impl Deliveries {
    pub(crate) fn new(log: ClientLog) -> Self {
        Deliveries { log }
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
        report.complete(match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, message)) => Err((error.clone(), message.detach())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_report_wakes_its_waiter_once_filled_in() {
        let report = Arc::new(Report::default());
        let mut waiting = Reported(report.clone());
        assert!((&mut waiting).now_or_never().is_none());
        report.complete(Ok((2, 41)));
        assert_eq!(waiting.now_or_never().map(|o| o.ok()), Some(Some((2, 41))));
    }
}
