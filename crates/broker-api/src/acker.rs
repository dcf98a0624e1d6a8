//! [`Acker`]: the handle that settles one delivery with the broker.
//!
//! Subscriptions hand out thousands of deliveries a second, so the handle is on the hot path:
//! a backend that tracks its deliveries itself in a table (Kafka's offsets) hands out
//! [keyed](Acker::keyed) handles, a shared reference and two words, allocating nothing per
//! delivery; any other settles through a [boxed](Acker::boxed) [`Acknowledge`], usually a
//! [`SettleOnce`] over a [`Settle`].

use std::sync::Arc;

use crate::completion::{self, Completion};
use crate::error::Result;

/// Settles one delivery with the broker. Adapters implement it; users call
/// [`Delivery::ack`](crate::Delivery::ack) and [`Delivery::nack`](crate::Delivery::nack).
///
/// A delivery dropped without being settled is never lost: the backend delivers it again, at the
/// latest to the next subscriber of the group once this subscription is closed.
pub trait Acknowledge: Send + 'static {
    /// The message was handled: the broker may forget it for this group. Fails when that
    /// cannot count any more (see [`Acker::is_live`]; a `Connection` or `Closed` error): the
    /// message is delivered again.
    fn ack(self: Box<Self>) -> Completion<'static, ()>;
    /// The message was not handled: deliver it again as soon as possible.
    fn nack(self: Box<Self>) -> Completion<'static, ()>;

    /// Whether settling still counts (see [`Acker::is_live`]); true unless the backend knows
    /// better.
    fn is_live(&self) -> bool {
        true
    }
}

/// Settles a delivery at once: for backends where acknowledging only records the outcome or
/// queues a frame. Wrapped in [`SettleOnce`], it becomes an [`Acknowledge`] that rejects the
/// delivery when it is dropped unsettled.
pub trait Settle: Send + 'static {
    /// Records the outcome: `handled` acknowledges; otherwise the message is delivered again.
    /// Fails when an acknowledgement cannot count (its channel closed, say): the message is
    /// delivered again.
    fn settle(&mut self, handled: bool) -> Result<()>;

    /// Whether settling still counts (see [`Acker::is_live`]); true unless the backend knows
    /// better.
    fn is_live(&self) -> bool {
        true
    }
}

/// An [`Acknowledge`] over a [`Settle`]: settles exactly once, as not handled when dropped
/// unsettled.
pub struct SettleOnce<S: Settle>(Option<S>);

impl<S: Settle> SettleOnce<S> {
    /// Boxed, ready for [`Delivery::new`](crate::Delivery::new).
    pub fn boxed(settle: S) -> Acker {
        Acker::boxed(Box::new(SettleOnce(Some(settle))))
    }

    fn settle(&mut self, handled: bool) -> Result<()> {
        match self.0.take() {
            Some(mut settle) => settle.settle(handled),
            None => Ok(()),
        }
    }
}

impl<S: Settle> Acknowledge for SettleOnce<S> {
    fn ack(mut self: Box<Self>) -> Completion<'static, ()> {
        completion::ready(self.settle(true))
    }

    fn nack(mut self: Box<Self>) -> Completion<'static, ()> {
        completion::ready(self.settle(false))
    }

    fn is_live(&self) -> bool {
        self.0.as_ref().is_some_and(Settle::is_live)
    }
}

impl<S: Settle> Drop for SettleOnce<S> {
    fn drop(&mut self) {
        // Nobody to tell: a delivery whose rejection fails is delivered again all the same.
        let _ = self.settle(false);
    }
}

/// Which delivery an [`AckTable`] settles: two words the backend chooses. Kafka: the epoch of
/// the partition's assignment (which names the partition) and the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckKey {
    /// What `offset` counts in.
    pub scope: u64,
    /// The delivery's place in `scope`.
    pub offset: u64,
}

/// How a keyed delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Handled: the broker may forget it for this group.
    Ack,
    /// Not handled: deliver it again as soon as possible.
    Nack,
    /// Dropped unsettled: it must be delivered again, at the latest to the next subscriber of
    /// the group once this subscription is closed.
    Dropped,
}

/// Deliveries a backend tracks itself, settled by key: each delivery carries a reference to
/// the table and its [`AckKey`] instead of a boxed handle of its own.
pub trait AckTable: Send + Sync + 'static {
    /// Settles delivery `key`. Called exactly once per delivery handed out, with
    /// [`Settlement::Dropped`] when it is dropped unsettled (the result is then ignored).
    fn settle(&self, key: AckKey, settlement: Settlement) -> Result<()>;

    /// Whether settling delivery `key` still counts (see [`Acker::is_live`]); true unless the
    /// backend knows better.
    fn is_live(&self, _key: AckKey) -> bool {
        true
    }
}

/// Settles one delivery: [`Delivery::ack`](crate::Delivery::ack) and
/// [`nack`](crate::Delivery::nack) go through it. Dropped unsettled, the delivery is delivered
/// again.
pub struct Acker(Handle);

enum Handle {
    Keyed(Arc<dyn AckTable>, AckKey),
    Boxed(Box<dyn Acknowledge>),
    /// Settled already: dropping it does nothing.
    Settled,
}

impl Acker {
    /// Settles through entry `key` of `table`.
    pub fn keyed(table: Arc<dyn AckTable>, key: AckKey) -> Self {
        Acker(Handle::Keyed(table, key))
    }

    /// Settles through `acknowledge`.
    pub fn boxed(acknowledge: Box<dyn Acknowledge>) -> Self {
        Acker(Handle::Boxed(acknowledge))
    }

    /// A handle that is settled already: settling or dropping it does nothing.
    pub(crate) fn settled() -> Self {
        Acker(Handle::Settled)
    }

    /// Whether settling the delivery still counts: false once it is settled, or once the
    /// backend knows that the message will be delivered again whatever this subscription does
    /// (Kafka: its partition was revoked or rewound; RabbitMQ: its channel closed; Pub/Sub:
    /// its streaming pull ended).
    /// The at-least-once runner stops retrying, and does not dead-letter, a message whose
    /// delivery is no longer live: whoever gets it again handles it.
    pub fn is_live(&self) -> bool {
        match &self.0 {
            Handle::Keyed(table, key) => table.is_live(*key),
            Handle::Boxed(acknowledge) => acknowledge.is_live(),
            Handle::Settled => false,
        }
    }

    /// Acknowledges the delivery; resolves when the backend has recorded it.
    pub fn ack(self) -> Completion<'static, ()> {
        self.settle(Settlement::Ack)
    }

    /// Rejects the delivery so that it is delivered again.
    pub fn nack(self) -> Completion<'static, ()> {
        self.settle(Settlement::Nack)
    }

    fn settle(mut self, settlement: Settlement) -> Completion<'static, ()> {
        match std::mem::replace(&mut self.0, Handle::Settled) {
            Handle::Keyed(table, key) => completion::ready(table.settle(key, settlement)),
            Handle::Boxed(acknowledge) if settlement == Settlement::Ack => acknowledge.ack(),
            Handle::Boxed(acknowledge) => acknowledge.nack(),
            Handle::Settled => completion::ready(Ok(())),
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Handle::Keyed(table, key) = &self.0 {
            // Nothing to report to: the backend delivers it again.
            let _ = table.settle(*key, Settlement::Dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every settlement it is asked for.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(AckKey, Settlement)>>);

    impl AckTable for Recorded {
        fn settle(&self, key: AckKey, settlement: Settlement) -> Result<()> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((key, settlement));
            Ok(())
        }
    }

    fn key(offset: u64) -> AckKey {
        AckKey { scope: 7, offset }
    }

    #[tokio::test]
    async fn a_keyed_acker_settles_exactly_once() {
        let table = Arc::new(Recorded::default());
        Acker::keyed(table.clone(), key(1))
            .ack()
            .await
            .expect("ack");
        Acker::keyed(table.clone(), key(2))
            .nack()
            .await
            .expect("nack");
        drop(Acker::keyed(table.clone(), key(3)));
        let settled = table.0.lock().expect("lock").clone();
        assert_eq!(
            settled,
            [
                (key(1), Settlement::Ack),
                (key(2), Settlement::Nack),
                (key(3), Settlement::Dropped)
            ]
        );
    }

    /// Records whether it was handled.
    struct Flag(Arc<Mutex<Vec<bool>>>);

    impl Settle for Flag {
        fn settle(&mut self, handled: bool) -> Result<()> {
            self.0.lock().expect("lock").push(handled);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_boxed_acker_settles_once_and_rejects_when_dropped() {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        SettleOnce::boxed(Flag(outcomes.clone()))
            .ack()
            .await
            .expect("ack");
        drop(SettleOnce::boxed(Flag(outcomes.clone())));
        assert_eq!(*outcomes.lock().expect("lock"), [true, false]);
    }
}
