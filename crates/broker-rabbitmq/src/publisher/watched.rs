//! [`Watched`]: a set of futures that tells when none of them is ready.
//!
//! A `FuturesUnordered` returning `Pending` does not mean that none of its futures is ready:
//! it yields to its task, waking it, after two of its futures were woken while it polled them
//! (or while another thread is halfway through waking one). The publishing task answers some
//! publishes only once no other publish is ready (see `driver`), so it polls the set through a
//! waker that notes whether the set woke the task during the poll.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::task::{waker_ref, ArcWake, AtomicWaker};
use futures::StreamExt;

/// What [`Watched::next`] found.
pub(super) enum Next<T> {
    /// A future finished with this output.
    Finished(T),
    /// None of the futures is ready (asked for, and the set may be empty).
    Idle,
}

/// A set of futures polled in the order they were woken, which tells when none is ready.
pub(super) struct Watched<F> {
    set: FuturesUnordered<F>,
    wakes: Arc<Wakes>,
}

/// The task's waker, and whether the set woke it since the poll began.
#[derive(Default)]
struct Wakes {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Wakes {
    fn wake_by_ref(wakes: &Arc<Self>) {
        wakes.woken.store(true, Ordering::Release);
        wakes.task.wake();
    }
}

impl<F: Future> Default for Watched<F> {
    fn default() -> Self {
        Watched {
            set: FuturesUnordered::new(),
            wakes: Arc::default(),
        }
    }
}

impl<F: Future> Watched<F> {
    pub(super) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Adds futures; the set first polls them in this order.
    pub(super) fn extend(&mut self, futures: impl IntoIterator<Item = F>) {
        self.set.extend(futures);
    }

    /// The output of the next future to finish; with `idle_too`, [`Next::Idle`] as soon as
    /// none is ready. `None` when the set is empty and idleness was not asked for.
    pub(super) fn next(
        &mut self,
        idle_too: bool,
    ) -> impl Future<Output = Option<Next<F::Output>>> + '_ {
        futures::future::poll_fn(move |cx| self.poll_next(idle_too, cx))
    }

    fn poll_next(&mut self, idle_too: bool, cx: &mut Context<'_>) -> Poll<Option<Next<F::Output>>> {
        self.wakes.task.register(cx.waker());
        self.wakes.woken.store(false, Ordering::Release);
        let waker = waker_ref(&self.wakes);
        match self.set.poll_next_unpin(&mut Context::from_waker(&waker)) {
            Poll::Ready(Some(output)) => Poll::Ready(Some(Next::Finished(output))),
            Poll::Ready(None) => Poll::Ready(idle_too.then_some(Next::Idle)),
            // Woken meanwhile: a future may be ready; the task is polled again.
            Poll::Pending if !idle_too || self.wakes.woken.load(Ordering::Acquire) => Poll::Pending,
            Poll::Pending => Poll::Ready(Some(Next::Idle)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::Waker;

    use futures::future::BoxFuture;
    use futures::FutureExt;

    use super::*;

    /// Finishes with `output` on its second poll, waking its task from the first.
    fn yielding(output: u32) -> BoxFuture<'static, u32> {
        let mut polled = false;
        futures::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(output);
            }
            polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .boxed()
    }

    /// Two futures that yield make the set return `Pending` before it polled the third, which
    /// is ready: that is not idleness.
    #[test]
    fn a_set_that_yielded_is_not_idle() {
        let mut watched = Watched::<BoxFuture<'static, u32>>::default();
        watched.extend([yielding(1), yielding(2), futures::future::ready(3).boxed()]);
        let mut cx = Context::from_waker(Waker::noop());
        let mut finished = Vec::new();
        loop {
            match Pin::new(&mut watched.next(true)).poll(&mut cx) {
                Poll::Ready(Some(Next::Finished(output))) => finished.push(output),
                Poll::Ready(Some(Next::Idle)) => break,
                Poll::Ready(None) => unreachable!("idleness was asked for"),
                Poll::Pending => {}
            }
        }
        finished.sort_unstable();
        assert_eq!(finished, [1, 2, 3], "idle only once every future finished");
        assert!(watched.is_empty());
    }

    /// The task relies on it for messages to keep their send order: a set polls the futures
    /// pushed into it in the order they were pushed.
    #[test]
    fn the_set_first_polls_futures_in_push_order() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut set = Watched::default();
        for batch in [0..300, 300..700] {
            set.extend(batch.map(|index| {
                let started = started.clone();
                async move {
                    started.lock().map(|mut order| order.push(index)).ok();
                    futures::future::pending::<()>().await;
                }
            }));
        }
        // The set may yield before it polled them all: poll it again until it did.
        for _ in 0..100 {
            assert!(
                set.next(false).now_or_never().is_none(),
                "none of them finishes"
            );
        }
        let order = started
            .lock()
            .map(|order| order.clone())
            .unwrap_or_default();
        assert_eq!(order, (0..700).collect::<Vec<_>>());
    }
}
