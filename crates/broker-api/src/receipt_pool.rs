//! [`ReceiptPool`]: confirmations answered into entries reused from one message to the next.
//!
//! Publishing keeps every unconfirmed message's answer somewhere until its confirmation takes
//! it. An allocation per message for it (a shared slot, a boxed receipt) lives that long: a
//! caller that sends a burst before awaiting holds thousands of them, freed in bulk much later,
//! which costs glibc's allocator more than the allocations themselves (measured on Pub/Sub's
//! publish: see `crates/broker-bench/README.md`). The pool reuses its entries instead, and
//! keeps the answer in the form the backend heard it, made a [`Receipt`] only when the
//! confirmation takes it, on the awaiting task.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use sharded_slab::{Clear, Pool};

use crate::backend::Receipt;
use crate::confirmation::{Confirmation, ReceiptSlot, ReceiptTable};
use crate::error::{Error, ErrorKind, Result};

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
/// An entry has two owners: whoever answers it (the backend's task or client callback), until
/// it [answered](Self::answer) or [gave it up](Self::discard), and the confirmation, until it
/// is awaited or dropped. It is reused only once both let go, so an answer always finds its
/// own message's entry, never a later message's. The pool keeps as many entries as were ever
/// in use at once.
pub struct ReceiptPool<A: IntoReceipt> {
    entries: Pool<Entry<A>>,
}

/// One message's answer, and how many of its two owners still hold it.
struct Entry<A> {
    answer: ReceiptSlot<A>,
    owners: AtomicU8,
}

impl<A> Default for Entry<A> {
    fn default() -> Self {
        Entry {
            answer: ReceiptSlot::default(),
            owners: AtomicU8::new(0),
        }
    }
}

impl<A> Clear for Entry<A> {
    fn clear(&mut self) {
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
    /// An entry for one message and the confirmation that resolves once it is answered; the
    /// key goes to whoever answers. Fails when the pool cannot grow (more messages in flight
    /// than a process holds).
    pub fn open(self: &Arc<Self>) -> Result<(usize, Confirmation)> {
        let key = self
            .entries
            .create_with(|entry| *entry.owners.get_mut() = 2)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    "too many messages in flight: no room to track another confirmation",
                )
                .operation("publish")
            })?;
        let table: Arc<dyn ReceiptTable> = self.clone();
        Ok((key, Confirmation::keyed(table, key)))
    }

    /// Stores the answer for entry `key` and lets go of it; returns the waker of whoever awaits
    /// its confirmation, to be woken once the caller let go of what it holds. Only the first
    /// answer counts.
    #[must_use = "the waiter sleeps until the returned waker is woken"]
    pub fn answer(&self, key: usize, answer: Result<A>) -> Option<Waker> {
        let entry = self.entries.get(key)?;
        let waiter = entry.answer.store(answer);
        self.let_go(key, entry);
        waiter
    }

    /// Lets go of entry `key` unanswered: no answer will come for it (the message was refused
    /// before it left), and its confirmation was not handed out or is dropped.
    pub fn discard(&self, key: usize) {
        if let Some(entry) = self.entries.get(key) {
            self.let_go(key, entry);
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
        self.discard(key);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::delivery::Position;
    use crate::message::MessageId;

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

    #[test]
    fn a_confirmation_takes_its_own_answer_made_a_receipt() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let (first, mut waiting) = pool.open().unwrap();
        let (second, other) = pool.open().unwrap();
        assert_ne!(first, second);
        assert!((&mut waiting).now_or_never().is_none());
        assert!(
            pool.answer(first, Ok(Heard(7))).is_some(),
            "the waiter is woken"
        );
        assert!(
            pool.answer(second, Ok(Heard(8))).is_none(),
            "none waits yet"
        );
        assert_eq!(waiting.now_or_never().and_then(offset), Some(7));
        assert_eq!(other.now_or_never().and_then(offset), Some(8));
    }

    #[test]
    fn an_entry_is_reused_only_once_both_owners_let_go() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let (key, confirmation) = pool.open().unwrap();
        drop(confirmation);
        // Still the answerer's: a new message gets another entry.
        let (other, _kept) = pool.open().unwrap();
        assert_ne!(key, other);
        assert!(pool.answer(key, Ok(Heard(1))).is_none());
        // Both let go: the entry comes back empty, and takes its new message's answer.
        let (reused, confirmation) = pool.open().unwrap();
        assert!(pool.answer(reused, Ok(Heard(2))).is_none());
        assert_eq!(confirmation.now_or_never().and_then(offset), Some(2));
    }

    #[test]
    fn an_error_reaches_the_confirmation() {
        let pool = Arc::new(ReceiptPool::<Heard>::default());
        let (key, confirmation) = pool.open().unwrap();
        let _ = pool.answer(key, Err(Error::new(ErrorKind::Closed, "gone")));
        let answer = confirmation.now_or_never().expect("answered");
        assert_eq!(answer.map(|_| ()).unwrap_err().kind(), ErrorKind::Closed);
    }
}
