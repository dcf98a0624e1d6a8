//! [`FairShare`]: lets a runner that never waits give its worker thread back now and then.

use std::task::{Context, Poll};

/// How many ready deliveries a runner takes in a row before it yields to the scheduler by
/// itself: rarely enough to cost nothing measurable (a yield takes microseconds), often enough
/// that a backlog does not hold a worker thread for more than a few milliseconds.
const YIELD_EVERY: u32 = 1024;

/// Counts the deliveries a runner took without returning to the scheduler.
///
/// A backlog and handlers that finish at once would never return to it: the worker's other
/// tasks (a publisher, a timer, another subscription) would wait for the backlog to drain.
/// Client libraries know nothing of tokio's task budget, so the runners count for them.
#[derive(Debug, Default)]
pub(crate) struct FairShare {
    taken: u32,
}

impl FairShare {
    /// Before a runner takes a delivery: yields once every [`YIELD_EVERY`] of them.
    pub(crate) async fn take(&mut self) {
        std::future::poll_fn(|cx| self.poll_take(cx)).await;
    }

    /// [`take`](Self::take) for a stream's `poll_next`: pending once every [`YIELD_EVERY`]
    /// deliveries, woken at once (the task goes to the back of its worker's queue), ready
    /// otherwise.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.taken >= YIELD_EVERY {
            self.taken = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.taken += 1;
        Poll::Ready(())
    }
}
