//! [`ReceiptPool`]: confirmations answered into entries reused from one message to the next.
//!
//! Publishing keeps every unconfirmed message's answer somewhere until its confirmation takes
//! it. An allocation per message for it (a shared slot, a boxed receipt) lives that long: a
//! caller that sends a burst before awaiting holds thousands of them, freed in bulk much later,
//! which costs glibc's allocator more than the allocations themselves (measured on Pub/Sub's
//! publish: see `crates/broker-bench/README.md`). The pool reuses its entries instead, and
//! keeps the answer in the form the backend heard it, made a [`Receipt`] only when the
//! confirmation takes it, on the awaiting task. Kafka's delivery reports, RabbitMQ's confirms
//! and Pub/Sub's publish answers go through it; a backend whose own task answers holds each
//! entry as a [`ReceiptReply`], which fails its confirmation if the task ends without answering.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use sharded_slab::{Clear, Pool};

use crate::backend::Receipt;
use crate::confirmation::{Confirmation, ReceiptSlot, ReceiptTable};
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageId;

/// What a backend heard for one message, made its [`Receipt`] when the confirmation takes it.
pub trait IntoReceipt: Send + Sync + 'static {
    /// The message's receipt.
    fn into_receipt(self) -> Receipt;
}

impl IntoReceipt for Receipt {
    fn into_receipt(self) -> Receipt {
        self
    }
}

/// The answers of the messages in flight, by key, each for one [`Confirmation`].
///
/// An entry has two owners: whoever answers it (a client callback, a backend's task), until
/// it [answered](Self::answer), and the confirmation, until it is awaited or dropped. It is
/// reused only once both let go, so an answer always finds its own message's entry, never a
/// later message's (a key freed before its answer could be handed out again, and an unlucky
/// generation count would then match). The pool keeps as many entries as were ever in use at
/// once.
pub struct ReceiptPool<A: IntoReceipt> {
    entries: Pool<Entry<A>>,
}

/// One message's entry: its id, the answer once it came, and how many of its two owners still
/// hold it.
struct Entry<A> {
    id: Option<MessageId>,
    answer: ReceiptSlot<A>,
    owners: AtomicU8,
}

impl<A> Default for Entry<A> {
    fn default() -> Self {
        Entry {
            id: None,
            answer: ReceiptSlot::default(),
            owners: AtomicU8::new(0),
        }
    }
}

impl<A> Clear for Entry<A> {
    fn clear(&mut self) {
        self.id = None;
        self.answer.reset();
    }
}

impl<A: IntoReceipt> std::fmt::Debug for ReceiptPool<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptPool").finish_non_exhaustive()
    }
}

impl<A: IntoReceipt> Default for ReceiptPool<A> {
    fn default() -> Self {
        ReceiptPool {
            entries: Pool::new(),
        }
    }
}

impl<A: IntoReceipt> ReceiptPool<A> {
    /// An entry for message `id`; its key goes to whoever answers, and makes the message's
    /// [`confirmation`](Self::confirmation). `None` when the pool cannot grow (more messages in
    /// flight than a process holds).
    pub fn open(&self, id: &MessageId) -> Option<usize> {
        self.entries.create_with(|entry| {
            entry.id = Some(id.clone());
            *entry.owners.get_mut() = 2;
        })
    }

    /// An entry for message `id`, answered through the returned [`ReceiptReply`], and the
    /// message's confirmation: for a backend whose own task answers. Fails when the pool cannot
    /// grow. A reply dropped unanswered fails the confirmation with `if_dropped()`.
    pub fn reply(
        self: &Arc<Self>,
        id: &MessageId,
        if_dropped: fn() -> Error,
    ) -> Result<(ReceiptReply<A>, Confirmation)> {
        let key = self.open(id).ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                "too many messages in flight: no room to track another confirmation",
            )
            .operation("publish")
        })?;
        let reply = ReceiptReply {
            pool: Arc::clone(self),
            key,
            if_dropped,
            answered: false,
        };
        Ok((reply, self.confirmation(key)))
    }

    /// The confirmation that resolves once entry `key` is answered.
    pub fn confirmation(self: &Arc<Self>, key: usize) -> Confirmation {
        Confirmation::keyed(self.clone(), key)
    }

    /// Frees entry `key` at once: its message was refused before it left, so no answer will
    /// come, and no confirmation was handed out.
    pub fn discard(&self, key: usize) {
        self.entries.clear(key);
    }

    /// Answers entry `key` with what `answer` makes of its message id and lets go of it;
    /// returns the waker of whoever awaits its confirmation, to be woken once the caller let
    /// go of what it holds. Only the first answer counts.
    #[must_use = "the waiter sleeps until the returned waker is woken"]
    pub fn answer(
        &self,
        key: usize,
        answer: impl FnOnce(&MessageId) -> Result<A>,
    ) -> Option<Waker> {
        let entry = self.entries.get(key)?;
        let waiter = entry
            .id
            .as_ref()
            .and_then(|id| entry.answer.store(answer(id)));
        self.let_go(key, entry);
        waiter
    }

    /// [`answer`](Self::answer)s entry `key` and wakes whoever awaits its confirmation.
    pub fn fill(&self, key: usize, answer: impl FnOnce(&MessageId) -> Result<A>) {
        if let Some(waker) = self.answer(key, answer) {
            waker.wake();
        }
    }

    /// One owner of `entry` (whose key is `key`) is done with it; the last one frees it.
    fn let_go(&self, key: usize, entry: sharded_slab::pool::Ref<'_, Entry<A>>) {
        let last = entry.owners.fetch_sub(1, Ordering::AcqRel) == 1;
        drop(entry);
        if last {
            self.entries.clear(key);
        }
    }
}

impl<A: IntoReceipt> ReceiptTable for ReceiptPool<A> {
    fn poll_receipt(&self, key: usize, cx: &mut Context<'_>) -> Poll<Result<Receipt>> {
        match self.entries.get(key) {
            Some(entry) => {
                let answer = std::task::ready!(entry.answer.poll_receipt(cx));
                self.let_go(key, entry);
                Poll::Ready(answer.map(IntoReceipt::into_receipt))
            }
            // The confirmation owns its entry until it is released, and is not polled after.
            None => Poll::Ready(Err(Error::new(
                ErrorKind::Other,
                "the answer for this message was lost",
            )
            .operation("publish"))),
        }
    }

    fn release(&self, key: usize) {
        if let Some(entry) = self.entries.get(key) {
            self.let_go(key, entry);
        }
    }
}

/// Where one message's answer goes: answered once, or, dropped unanswered (the task holding it
/// was abandoned or ended with its runtime), failing the confirmation instead of leaving it
/// waiting for ever. Made by [`ReceiptPool::reply`].
pub struct ReceiptReply<A: IntoReceipt> {
    pool: Arc<ReceiptPool<A>>,
    key: usize,
    if_dropped: fn() -> Error,
    answered: bool,
}

impl<A: IntoReceipt> ReceiptReply<A> {
    /// Answers the confirmation; returns the waker of whoever awaits it, to be woken once the
    /// caller let go of what it holds.
    #[must_use = "the waiter sleeps until the returned waker is woken"]
    pub fn answer(mut self, result: Result<A>) -> Option<Waker> {
        self.answered = true;
        self.pool.answer(self.key, |_| result)
    }

    /// [`answer`](Self::answer)s the confirmation and wakes whoever awaits it.
    pub fn fill(self, result: Result<A>) {
        if let Some(waker) = self.answer(result) {
            waker.wake();
        }
    }
}

impl<A: IntoReceipt> Drop for ReceiptReply<A> {
    fn drop(&mut self) {
        if !self.answered {
            self.pool.fill(self.key, |_| Err((self.if_dropped)()));
        }
    }
}

impl<A: IntoReceipt> std::fmt::Debug for ReceiptReply<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptReply")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::delivery::Position;

    /// An answer as a backend hears it: made a receipt only when taken.
    struct Heard(u64);

    impl IntoReceipt for Heard {
        fn into_receipt(self) -> Receipt {
            Receipt {
                message_id: MessageId::from("m"),
                position: Position::Memory { offset: self.0 },
            }
        }
    }

    fn offset(receipt: Result<Receipt>) -> Option<u64> {
        match receipt.ok()?.position {
            Position::Memory { offset } => Some(offset),
            _ => None,
        }
    }

    fn receipt(id: &MessageId) -> Result<Receipt> {
        Ok(Receipt {
            message_id: id.clone(),
            position: Position::Kafka {
                partition: 2,
                offset: 41,
            },
        })
    }

    #[test]
    fn a_confirmation_takes_its_own_answer_made_a_receipt() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let first = pool.open(&MessageId::from("m-1")).unwrap();
        let second = pool.open(&MessageId::from("m-2")).unwrap();
        let (mut waiting, other) = (pool.confirmation(first), pool.confirmation(second));
        assert_ne!(first, second);
        assert!((&mut waiting).now_or_never().is_none());
        assert!(
            pool.answer(first, |_| Ok(Heard(7))).is_some(),
            "the waiter is woken"
        );
        assert!(
            pool.answer(second, |_| Ok(Heard(8))).is_none(),
            "none waits yet"
        );
        assert_eq!(waiting.now_or_never().and_then(offset), Some(7));
        assert_eq!(other.now_or_never().and_then(offset), Some(8));
    }

    #[test]
    fn a_reply_dropped_unanswered_fails_its_confirmation() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let gone = || Error::new(ErrorKind::Closed, "the answering task is gone");
        let (answered, first) = pool.reply(&MessageId::from("m-1"), gone).unwrap();
        let (dropped, second) = pool.reply(&MessageId::from("m-2"), gone).unwrap();
        answered.fill(Ok(Heard(3)));
        drop(dropped);
        assert_eq!(first.now_or_never().and_then(offset), Some(3));
        let failed = second.now_or_never().expect("answered as it was dropped");
        assert_eq!(failed.map(|_| ()).unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn an_error_reaches_the_confirmation() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let key = pool.open(&MessageId::from("m-1")).unwrap();
        let confirmation = pool.confirmation(key);
        pool.fill(key, |_| Err(Error::new(ErrorKind::Closed, "gone")));
        let answer = confirmation.now_or_never().expect("answered");
        assert_eq!(answer.map(|_| ()).unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn a_report_resolves_its_confirmation_once_filled_in() {
        let reports = Arc::new(ReceiptPool::<Receipt>::default());
        let key = reports.open(&MessageId::from("m-1")).unwrap();
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
        let reports = Arc::new(ReceiptPool::<Receipt>::default());
        let first = reports.open(&MessageId::from("m-1")).unwrap();
        // Dropped before its report: the entry stays the answerer's until the report comes.
        drop(reports.confirmation(first));
        let second = reports.open(&MessageId::from("m-2")).unwrap();
        assert_ne!(first, second);
        reports.fill(first, receipt);
        // Reported and released: free for the next message, under a new key.
        let third = reports.open(&MessageId::from("m-3")).unwrap();
        assert_ne!(third, first);
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
        // before the report came, however many messages follow (keys' generations wrap after
        // a few thousand reuses of an entry).
        let reports = Arc::new(ReceiptPool::<Receipt>::default());
        let late = reports.open(&MessageId::from("late")).unwrap();
        drop(reports.confirmation(late));
        for i in 0..20_000 {
            let key = reports
                .open(&MessageId::from(format!("m-{i}").as_str()))
                .unwrap();
            assert_ne!(
                key, late,
                "message {i} got the key of a message still unreported"
            );
            drop(reports.confirmation(key));
            reports.fill(key, receipt);
        }
        let next = reports.open(&MessageId::from("next")).unwrap();
        let mut waiting = reports.confirmation(next);
        reports.fill(late, receipt);
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "the late report confirmed another message"
        );
    }
}
