//! Delivery reports as confirmations, with no allocation per message.
//!
//! The producer is a `ThreadedProducer` whose delivery callback turns the report into the
//! message's position (or error) and fills it into the message's entry of [`Reports`], slabs of
//! entries reused from one message to the next. The entry's key is the message's opaque in
//! librdkafka and its [`Confirmation`]'s key. rdkafka's `FutureProducer` pays a oneshot channel
//! and a boxed sender per message for the same; a shared slot per message costs an allocation
//! on the publishing thread freed after librdkafka's thread wrote to it, which contends for the
//! allocator with librdkafka's own per-message allocations.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use broker_api::{
    Confirmation, Error, ErrorKind, MessageId, Position, Receipt, ReceiptTable, Result,
};
use crossbeam_utils::CachePadded;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::Message as _;
use slab::Slab;

use crate::context::ClientLog;
use crate::error::{from_kafka, BACKEND};
use crate::provision::Provisioner;

/// The confirmations of the messages a producer has in flight, by key.
///
/// An entry has two owners: librdkafka, until it reports the message, and the confirmation,
/// until it is awaited or dropped. It is freed only once both let go, so a report always finds
/// its own message's entry, never a later message's. Entries live in [`SHARDS`] slabs, each
/// behind its own lock on its own cache line, taken in turn by new messages: the publishing
/// thread opening new entries and librdkafka's thread filling older ones rarely meet on a lock.
/// A slab keeps as many entries as were ever alive in it at once, about 150 bytes each.
pub(crate) struct Reports {
    shards: Box<[CachePadded<Mutex<Slab<Entry>>>]>,
    /// Where the next entry goes.
    next: AtomicUsize,
}

/// How many slabs [`Reports`] spreads its entries over.
const SHARDS: usize = 16;

/// One message's entry: its id, the broker's answer once the report arrives (where it stored
/// the message, or why not), the waiting confirmation's waker, and whether the confirmation
/// let go already. Under 128 bytes, so that it moves without a call to `memcpy`.
struct Entry {
    id: MessageId,
    answer: Option<Result<Position>>,
    waker: Option<Waker>,
    /// The confirmation was dropped unanswered: the report frees the entry.
    abandoned: bool,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Reports {
    /// An entry for message `id`, whose key goes to librdkafka as the message's opaque.
    pub(crate) fn open(&self, id: &MessageId) -> usize {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let slot = self.shard(shard).insert(Entry {
            id: id.clone(),
            answer: None,
            waker: None,
            abandoned: false,
        });
        slot * SHARDS + shard
    }

    /// Frees entry `key` at once: librdkafka refused its message, so no report will come and
    /// no confirmation was handed out.
    pub(crate) fn discard(&self, key: usize) {
        let (shard, slot) = split(key);
        self.shard(shard).try_remove(slot);
    }

    /// The confirmation that resolves when entry `key` is filled in.
    pub(crate) fn confirmation(self: &Arc<Self>, key: usize) -> Confirmation {
        Confirmation::keyed(self.clone(), key)
    }

    /// Fills entry `key` in with what `answer` makes of its message id (under the entry's
    /// lock: the position, or an error naming the message), and wakes its waiter; frees the
    /// entry instead when its confirmation was dropped.
    fn fill(&self, key: usize, answer: impl FnOnce(&MessageId) -> Result<Position>) {
        let (shard, slot) = split(key);
        let waker = {
            let mut entries = self.shard(shard);
            let Some(entry) = entries.get_mut(slot) else {
                return;
            };
            // Made even for an abandoned entry: a failure tells the provisioner about a topic
            // the broker no longer knows.
            let answer = answer(&entry.id);
            if entry.abandoned {
                entries.remove(slot);
                return;
            }
            entry.answer = Some(answer);
            entry.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn shard(&self, shard: usize) -> MutexGuard<'_, Slab<Entry>> {
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error of a confirmation whose entry is gone (not expected: it owns its entry).
fn lost() -> Error {
    Error::new(
        ErrorKind::Other,
        "the delivery report of this message was lost",
    )
    .backend(BACKEND)
    .operation("publish")
}

/// A key's slab and slot.
fn split(key: usize) -> (usize, usize) {
    (key % SHARDS, key / SHARDS)
}

impl ReceiptTable for Reports {
    fn poll_receipt(&self, key: usize, cx: &mut Context<'_>) -> Poll<Result<Receipt>> {
        let (shard, slot) = split(key);
        let mut entries = self.shard(shard);
        let Some(entry) = entries.get_mut(slot) else {
            // The confirmation owns its entry until it is answered or released.
            return Poll::Ready(Err(lost()));
        };
        if entry.answer.is_none() {
            if !entry
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                entry.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // Reported, and now answered: both owners are done with the entry.
        let Entry { id, answer, .. } = entries.remove(slot);
        let answer = answer.unwrap_or_else(|| Err(lost()));
        Poll::Ready(answer.map(|position| Receipt {
            message_id: id,
            position,
        }))
    }

    fn release(&self, key: usize) {
        let (shard, slot) = split(key);
        let mut entries = self.shard(shard);
        let Some(entry) = entries.get_mut(slot) else {
            return;
        };
        if entry.answer.is_some() {
            entries.remove(slot);
        } else {
            entry.abandoned = true;
            entry.waker = None;
        }
    }
}

/// The producer's callbacks: logs, and delivery reports into each message's entry of
/// [`Reports`].
pub(crate) struct Deliveries {
    log: ClientLog,
    reports: Arc<Reports>,
    /// Told when the broker reports a topic unknown (deleted behind our back), so that the
    /// next publish provisions it again.
    topics: OnceLock<Weak<Provisioner>>,
}

impl Deliveries {
    pub(crate) fn new(log: ClientLog) -> Self {
        Deliveries {
            log,
            reports: Arc::default(),
            topics: OnceLock::new(),
        }
    }

    /// The confirmations of the messages in flight.
    pub(crate) fn reports(&self) -> &Arc<Reports> {
        &self.reports
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
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, key: usize) {
        self.reports.fill(key, |id| match result {
            Ok(message) => Ok(Position::Kafka {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, message)) => Err(self.failed(id, error, message)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn receipt(_: &MessageId) -> Result<Position> {
        Ok(Position::Kafka {
            partition: 2,
            offset: 41,
        })
    }

    #[test]
    fn an_entry_moves_without_memcpy() {
        assert!(std::mem::size_of::<Entry>() <= 128);
    }

    #[test]
    fn a_report_resolves_its_confirmation_once_filled_in() {
        let reports = Arc::new(Reports::default());
        let key = reports.open(&MessageId::from("m-1"));
        let mut waiting = reports.confirmation(key);
        assert!((&mut waiting).now_or_never().is_none());
        reports.fill(key, receipt);
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

    #[test]
    fn an_entry_is_reused_only_once_reported_and_released() {
        let reports = Arc::new(Reports::default());
        let first = reports.open(&MessageId::from("m-1"));
        // Dropped before its report: the entry stays librdkafka's until the report comes.
        drop(reports.confirmation(first));
        let second = reports.open(&MessageId::from("m-2"));
        assert_ne!(first, second);
        reports.fill(first, receipt);
        // Reported and released: freed, its slot free for a later message.
        assert!(
            matches!(reports.confirmation(first).now_or_never(), Some(Err(_))),
            "a freed entry answers nothing"
        );
        let mut waiting = reports.confirmation(second);
        assert!((&mut waiting).now_or_never().is_none());
        reports.fill(second, receipt);
        let id = waiting
            .now_or_never()
            .and_then(Result::ok)
            .map(|r| r.message_id);
        assert_eq!(id, Some(MessageId::from("m-2")));
    }

    #[test]
    fn a_late_report_never_confirms_a_later_message() {
        // A confirmation dropped before its report: that key must not be handed out again
        // before the report came, however many messages follow and reuse the other slots.
        let reports = Arc::new(Reports::default());
        let late = reports.open(&MessageId::from("late"));
        drop(reports.confirmation(late));
        for i in 0..20_000 {
            let key = reports.open(&MessageId::from(format!("m-{i}").as_str()));
            assert_ne!(
                key, late,
                "message {i} got the key of a message still unreported"
            );
            drop(reports.confirmation(key));
            reports.fill(key, receipt);
        }
        let next = reports.open(&MessageId::from("next"));
        let mut waiting = reports.confirmation(next);
        reports.fill(late, receipt);
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "the late report confirmed another message"
        );
    }
}
