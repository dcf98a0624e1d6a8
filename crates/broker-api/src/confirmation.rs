//! [`Confirmation`]: the future of one sent message's broker confirmation.
//!
//! Publishing keeps thousands of confirmations pending, so their representation is on the hot
//! path: a backend that already knows the answer returns it [ready](Confirmation::ready); one
//! whose client reports by key into entries it reuses (Kafka's delivery report) hands out
//! [keyed](Confirmation::keyed) confirmations, allocating nothing per message; anything else
//! is [boxed](Confirmation::boxed). [`ReceiptPool`](crate::ReceiptPool) is such a table, of
//! [`ReceiptSlot`]s reused from one message to the next, which every backend that hears its
//! answers later (a client callback, a task of its own) answers into.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use futures::task::AtomicWaker;
use futures::FutureExt;

use crate::backend::Receipt;
use crate::completion::Completion;
use crate::error::Result;

/// Confirmations a client fills in by key, in entries it reuses once their confirmation is
/// done with them: publishing then allocates nothing per message for its confirmation.
pub trait ReceiptTable: Send + Sync {
    /// The answer for `key` once it arrived, and then the confirmation is done with `key` (as
    /// if [`release`](Self::release)d, in the same lookup); registers `cx`'s waker to be woken
    /// by the answer until then.
    fn poll_receipt(&self, key: usize, cx: &mut Context<'_>) -> Poll<Result<Receipt>>;

    /// The confirmation of `key` is done with it unanswered (dropped). The table must not hand
    /// `key` out again while an answer for it may still arrive: that answer would resolve
    /// another message's confirmation.
    fn release(&self, key: usize);
}

/// The answer for one message, filled in once by whoever hears from the broker and taken by
/// the [`Confirmation`] that waits for it: its [`Receipt`], or what a backend makes one of
/// when the confirmation takes it (see [`ReceiptPool`](crate::ReceiptPool)).
pub struct ReceiptSlot<A = Receipt> {
    result: Mutex<Option<Result<A>>>,
    waker: AtomicWaker,
}

impl<A> Default for ReceiptSlot<A> {
    fn default() -> Self {
        ReceiptSlot {
            result: Mutex::new(None),
            waker: AtomicWaker::new(),
        }
    }
}

impl<A> ReceiptSlot<A> {
    /// Stores the broker's answer and wakes the waiter. Only the first answer counts.
    pub fn fill(&self, result: Result<A>) {
        if let Some(waker) = self.store(result) {
            waker.wake();
        }
    }

    /// Stores the broker's answer and returns the waiter's waker, if one waits, without waking
    /// it: the caller lets go of whatever holds the slot first, then wakes the waiter.
    #[must_use = "the waiter sleeps until the returned waker is woken"]
    pub fn store(&self, result: Result<A>) -> Option<std::task::Waker> {
        let mut slot = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return None;
        }
        *slot = Some(result);
        drop(slot);
        self.waker.take()
    }

    /// Empties the slot, to be filled in again for another message.
    pub fn reset(&mut self) {
        *self
            .result
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        drop(self.waker.take());
    }

    /// The broker's answer once it arrived; registers `cx`'s waker to be woken by it until then.
    pub fn poll_receipt(&self, cx: &mut Context<'_>) -> Poll<Result<A>> {
        if let Some(result) = self.take() {
            return Poll::Ready(result);
        }
        self.waker.register(cx.waker());
        self.take().map_or(Poll::Pending, Poll::Ready)
    }

    fn take(&self) -> Option<Result<A>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Resolves when the broker has confirmed (or refused) one sent message.
///
/// Dropping it does not cancel the publish: the message may still be stored.
#[must_use = "a confirmation says whether the broker stored the message"]
pub struct Confirmation(State);

enum State {
    Ready(Option<Result<Receipt>>),
    Keyed(Arc<dyn ReceiptTable>, usize),
    Boxed(BoxFuture<'static, Result<Receipt>>),
}

impl Confirmation {
    /// A confirmation whose answer is known.
    pub fn ready(result: Result<Receipt>) -> Self {
        Confirmation(State::Ready(Some(result)))
    }

    /// A confirmation that waits for entry `key` of `table` to be filled in, and releases it
    /// when answered or dropped.
    pub fn keyed(table: Arc<dyn ReceiptTable>, key: usize) -> Self {
        Confirmation(State::Keyed(table, key))
    }

    /// A confirmation that waits for `future`.
    pub fn boxed(future: impl Future<Output = Result<Receipt>> + Send + 'static) -> Self {
        Confirmation(State::Boxed(future.boxed()))
    }
}

impl From<Completion<'static, Receipt>> for Confirmation {
    fn from(completion: Completion<'static, Receipt>) -> Self {
        match completion {
            Either::Left(ready) => Confirmation::ready(ready.into_inner()),
            Either::Right(future) => Confirmation(State::Boxed(future)),
        }
    }
}

impl Future for Confirmation {
    type Output = Result<Receipt>;

    /// A yield point of tokio's cooperative scheduling, like its channels: a task that
    /// publishes and awaits confirmations that are already answered (the in-memory backend's
    /// always are) lets the other tasks of its worker run once its budget is spent, instead of
    /// starving them, its own subscribers included.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let answer = match &mut self.0 {
            State::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("a Confirmation must not be polled after it completed"),
            ),
            State::Keyed(table, key) => {
                // Answered: the table let go of the key already.
                let result = std::task::ready!(table.poll_receipt(*key, cx));
                self.0 = State::Ready(None);
                Poll::Ready(result)
            }
            State::Boxed(future) => future.as_mut().poll(cx),
        };
        if answer.is_ready() {
            budget.made_progress();
        }
        answer
    }
}

impl Drop for Confirmation {
    fn drop(&mut self) {
        if let State::Keyed(table, key) = &self.0 {
            table.release(*key);
        }
    }
}

impl fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            State::Ready(Some(result)) => {
                return f.debug_tuple("Confirmation").field(result).finish()
            }
            State::Ready(None) => "completed",
            State::Keyed(..) | State::Boxed(_) => "pending",
        };
        f.debug_tuple("Confirmation").field(&state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Position;
    use crate::message::MessageId;

    fn receipt() -> Receipt {
        Receipt {
            message_id: MessageId::from("m"),
            position: Position::Memory { offset: 7 },
        }
    }

    #[test]
    fn each_form_resolves_to_its_receipt() {
        assert_eq!(
            Confirmation::ready(Ok(receipt()))
                .now_or_never()
                .map(Result::ok),
            Some(Some(receipt()))
        );
        assert_eq!(
            Confirmation::boxed(async { Ok(receipt()) })
                .now_or_never()
                .map(Result::ok),
            Some(Some(receipt()))
        );
    }

    /// A table of one entry that counts its releases.
    #[derive(Default)]
    struct OneEntry {
        slot: ReceiptSlot,
        releases: std::sync::atomic::AtomicUsize,
    }

    impl ReceiptTable for OneEntry {
        fn poll_receipt(&self, key: usize, cx: &mut Context<'_>) -> Poll<Result<Receipt>> {
            let answer = std::task::ready!(self.slot.poll_receipt(cx));
            self.release(key);
            Poll::Ready(answer)
        }

        fn release(&self, key: usize) {
            assert_eq!(key, 3);
            self.releases
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_keyed_confirmation_releases_its_entry_once_answered_or_dropped() {
        let releases = |table: &OneEntry| table.releases.load(std::sync::atomic::Ordering::SeqCst);
        let table = Arc::new(OneEntry::default());
        let mut waiting = Confirmation::keyed(table.clone(), 3);
        assert!((&mut waiting).now_or_never().is_none());
        assert_eq!(releases(&table), 0);
        table.slot.fill(Ok(receipt()));
        // Only the first answer counts.
        table
            .slot
            .fill(Err(crate::Error::new(crate::ErrorKind::Other, "late")));
        assert_eq!(
            (&mut waiting).now_or_never().map(Result::ok),
            Some(Some(receipt()))
        );
        assert_eq!(releases(&table), 1);
        drop(waiting);
        assert_eq!(releases(&table), 1, "answered: released once");

        let table = Arc::new(OneEntry::default());
        drop(Confirmation::keyed(table.clone(), 3));
        assert_eq!(releases(&table), 1, "dropped unanswered: released");
    }

    #[test]
    fn a_reset_slot_takes_a_new_answer() {
        let mut slot = ReceiptSlot::default();
        slot.fill(Err(crate::Error::new(crate::ErrorKind::Other, "first")));
        slot.reset();
        slot.fill(Ok(receipt()));
        assert_eq!(slot.take().map(Result::ok), Some(Some(receipt())));
    }
}
