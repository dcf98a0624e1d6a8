//! [`InFlight`]: the bound on a subscription's unsettled deliveries, across its channels.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// How many deliveries of one subscription are unsettled, against its `max_in_flight`.
///
/// The channel's prefetch bounds what RabbitMQ sends ahead on one channel. After a reconnect
/// the deliveries of the old channel may still be held (settling them does nothing, but a
/// runner holds each until its handler ends) while the new channel's prefetch lets as many
/// more in: counted across channels, the stream never holds more than `max_in_flight`.
pub(crate) struct InFlight {
    count: AtomicUsize,
    limit: usize,
    /// The stream, waiting for a delivery to be settled.
    reader: AtomicWaker,
}

impl InFlight {
    pub(crate) fn new(limit: usize) -> Self {
        InFlight {
            count: AtomicUsize::new(0),
            limit: limit.max(1),
            reader: AtomicWaker::new(),
        }
    }

    /// Ready when another delivery may be handed out; otherwise the task is woken when one is
    /// settled.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_room() {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // Settled between the look and the registration: not missed.
        if self.has_room() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn has_room(&self) -> bool {
        self.count.load(Ordering::Acquire) < self.limit
    }

    /// A delivery is handed out.
    pub(crate) fn take(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// A delivery was settled (or dropped unsettled).
    pub(crate) fn release(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) >= self.limit {
            self.reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_bound_waits_for_a_settlement_and_is_woken_by_it() {
        let in_flight = InFlight::new(2);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = flag.clone().into();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..2 {
            assert!(in_flight.poll_room(&mut cx).is_ready());
            in_flight.take();
        }
        assert!(in_flight.poll_room(&mut cx).is_pending());
        in_flight.release();
        assert!(flag.0.load(Ordering::SeqCst), "the reader was woken");
        assert!(in_flight.poll_room(&mut cx).is_ready());
    }
}
