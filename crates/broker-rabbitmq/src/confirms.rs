//! The task that waits for publisher confirms, so that they are collected (and their window
//! slots freed) whether or not the caller polls its confirmations.
//!
//! A publish whose first poll did not finish it (the usual case: its frames are queued, its
//! confirm is not in yet) is handed to this task, which polls every such publish together, as
//! one set: confirms that arrive together wake it once. The caller's confirmation only waits for
//! the result. Without it, a caller that sends more than `confirm_window` messages before
//! awaiting any would wait forever for a window slot held by a confirmation it has not polled.

use std::sync::Arc;

use broker_api::{Confirmation, Error, ErrorKind, Receipt, ReceiptSlot, Result};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::BACKEND;

/// A publish in progress and where its outcome goes.
type Job = (BoxFuture<'static, Result<Receipt>>, Outcome);

/// Where a publish's outcome goes; dropped unfilled (the task ended at shutdown), it fails
/// the confirmation instead of leaving it waiting forever.
struct Outcome(Option<Arc<ReceiptSlot>>);

impl Outcome {
    fn fill(mut self, result: Result<Receipt>) {
        if let Some(slot) = self.0.take() {
            slot.fill(result);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.fill(Err(Error::new(
                ErrorKind::Closed,
                "the publish was abandoned at shutdown",
            )
            .backend(BACKEND)
            .operation("publish")));
        }
    }
}

/// The handle of the confirm task.
pub(crate) struct Confirms {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Confirms {
    /// Starts the task on `runtime`.
    pub(crate) fn start(runtime: &tokio::runtime::Handle) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        runtime.spawn(run(queue));
        Confirms { jobs }
    }

    /// Hands `publish` to the task and returns its confirmation.
    pub(crate) fn watch(&self, publish: BoxFuture<'static, Result<Receipt>>) -> Confirmation {
        let slot = Arc::new(ReceiptSlot::default());
        let outcome = Outcome(Some(slot.clone()));
        if let Err(mpsc::error::SendError((publish, mut outcome))) =
            self.jobs.send((publish, outcome))
        {
            // The task is gone (the runtime is shutting down): the caller drives it.
            outcome.0 = None;
            return Confirmation::from(futures::future::Either::Right(publish));
        }
        Confirmation::shared(slot)
    }
}

async fn run(mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            job = queue.recv(), if open => match job {
                Some((publish, outcome)) => pending.push(finish(publish, outcome)),
                None => open = false,
            },
            Some(()) = pending.next() => {}
        }
    }
}

async fn finish(publish: BoxFuture<'static, Result<Receipt>>, outcome: Outcome) {
    // The caller may have dropped its confirmation: the publish completes all the same.
    outcome.fill(publish.await);
}
