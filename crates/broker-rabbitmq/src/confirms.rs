//! The task that waits for publisher confirms, so that they are collected (and their window
//! slots freed) whether or not the caller polls its confirmations.
//!
//! A publish whose first poll did not finish it (the usual case: its frames are queued, its
//! confirm is not in yet) is handed to this task, which polls every such publish together, as
//! one set: confirms that arrive together wake it once. The caller's confirmation only waits for
//! the result. Without it, a caller that sends more than `confirm_window` messages before
//! awaiting any would wait forever for a window slot held by a confirmation it has not polled.

use broker_api::completion::{self, Completion};
use broker_api::{Error, ErrorKind, Receipt, Result};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::BACKEND;

/// A publish in progress and where its outcome goes.
type Job = (
    BoxFuture<'static, Result<Receipt>>,
    oneshot::Sender<Result<Receipt>>,
);

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
    pub(crate) fn watch(
        &self,
        publish: BoxFuture<'static, Result<Receipt>>,
    ) -> Completion<'static, Receipt> {
        let (outcome, result) = oneshot::channel();
        if let Err(mpsc::error::SendError((publish, _))) = self.jobs.send((publish, outcome)) {
            // The task is gone (the runtime is shutting down): the caller drives it.
            return completion::boxed(publish);
        }
        completion::boxed(async move {
            result.await.unwrap_or_else(|_| {
                Err(
                    Error::new(ErrorKind::Closed, "the publish was abandoned at shutdown")
                        .backend(BACKEND)
                        .operation("publish"),
                )
            })
        })
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

async fn finish(
    publish: BoxFuture<'static, Result<Receipt>>,
    outcome: oneshot::Sender<Result<Receipt>>,
) {
    // The caller may have dropped its confirmation: the publish completes all the same.
    let _ = outcome.send(publish.await);
}
