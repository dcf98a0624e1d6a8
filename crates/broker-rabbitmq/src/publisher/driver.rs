//! [`Driver`]: the task that runs every publish of the backend, from its frames to its confirm.
//!
//! `send` only checks the message and takes its slot in the confirm window; the publish itself
//! is handed to this task, which starts the publishes handed to it in the order they came
//! (lapin queues a publish's frames at its first poll, so messages keep their send order) and
//! waits for their confirms as one set: confirms that arrive together wake it once, and it
//! frees each window slot when the broker answered, whether or not the caller polls its
//! confirmation. Without it, a caller that sends more than `confirm_window` messages before
//! awaiting any would wait forever for a slot held by a confirmation it has not polled.
//!
//! A publish is created, run and dropped on this one task, as the raw client's publishing loop
//! does: no per-message future is boxed on the caller's thread and freed on another, and the
//! frames of publishes sent together are queued together, for lapin to write at once.
//!
//! A publish acked without a returned message is answered once no publish is ready (see
//! [`Watched`]): RabbitMQ sends a message's `basic.return` before its ack, and lapin may hand
//! it to another confirm of the same `multiple` ack, completed before this one (see
//! `Pending::acked`), whose publish keeps it for its owner when the task polls it.
//!
//! A publish still unconfirmed `publish_timeout` after it was handed over fails its
//! confirmation with `Timeout`: RabbitMQ holds confirms back during a resource alarm and while
//! a quorum queue has no majority. The publish itself goes on until RabbitMQ answers or its
//! channel closes, holding its window slot: its frames stay queued in lapin meanwhile (a full
//! window then fails new sends after the same timeout instead of queuing more), and lapin
//! pairs returned messages with confirms, which a publish dropped before its answer would
//! upset. One timer serves every deadline, set to the oldest. Closing abandons the task when
//! publishes are still unconfirmed after `close_timeout`: their confirmations fail instead of
//! waiting for ever.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{
    Confirmation, Error, ErrorKind, MessageId, Receipt, ReceiptPool, ReceiptReply, Result,
};
use futures::FutureExt;
use slab::Slab;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::pending::{Answer, Publish, Unclaimed};
use super::watched::{Next, Watched};
use crate::error::BACKEND;
use crate::poll;

/// The most publishes taken from the queue at once, before the set is polled.
const BATCH: usize = 256;

/// What the task runs: a publish (in tests, a stand-in).
pub(super) trait Job: Send + 'static {
    /// Runs it to its answer. `answer_by` is when its caller is told it timed out, if
    /// RabbitMQ has not confirmed it by then (none when the caller drives it).
    fn run(self, answer_by: Option<Instant>) -> impl Future<Output = Answer> + Send;
}

impl Job for Publish {
    fn run(self, answer_by: Option<Instant>) -> impl Future<Output = Answer> + Send {
        Publish::run(self, answer_by)
    }
}

/// Where a publish's outcome goes; dropped unfilled (the task was abandoned at close or ended
/// with its runtime), it fails the confirmation instead of leaving it waiting for ever.
type Outcome = ReceiptReply<Receipt>;

/// The error of a publish whose outcome was dropped unfilled.
fn stopped() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the backend stopped before RabbitMQ confirmed this publish (closed with it \
         unconfirmed after rabbitmq.close_timeout, or its runtime shut down); the message may \
         or may not have been stored",
    )
    .backend(BACKEND)
    .operation("publish")
}

/// The handle of the publishing task.
pub(super) struct Driver<J = Publish> {
    jobs: mpsc::UnboundedSender<(J, Outcome)>,
    abandon: Arc<Notify>,
    /// The confirmations' answers, in entries reused from one publish to the next.
    receipts: Arc<ReceiptPool<Receipt>>,
}

impl<J: Job> Driver<J> {
    /// Starts the task on `runtime`; publishes unconfirmed after `publish_timeout` fail.
    pub(super) fn start(runtime: &tokio::runtime::Handle, publish_timeout: Duration) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let abandon = Arc::new(Notify::new());
        runtime.spawn(run(queue, abandon.clone(), publish_timeout));
        Driver {
            jobs,
            abandon,
            receipts: Arc::default(),
        }
    }

    /// Fails every publish the task holds or is handed from now on, without waiting for
    /// their confirms.
    pub(super) fn abandon(&self) {
        self.abandon.notify_one();
    }

    /// Hands `publish` of message `id` to the task and returns its confirmation.
    pub(super) fn drive(&self, id: &MessageId, publish: J) -> Result<Confirmation> {
        let (outcome, confirmation) = self
            .receipts
            .reply(id, stopped)
            .map_err(|e| e.backend(BACKEND))?;
        if let Err(mpsc::error::SendError((publish, _))) = self.jobs.send((publish, outcome)) {
            // The task is gone (the runtime is shutting down): the caller drives the publish.
            return Ok(run_in_caller(publish));
        }
        Ok(confirmation)
    }
}

/// Starts `publish` now (its frames are queued in call order) and leaves the rest to whoever
/// awaits the confirmation: for a publisher created outside a Tokio runtime, or after its task
/// ended. No `publish_timeout` applies: the caller may bound its wait itself. An acked publish
/// looks for its returned message at once (see [`Answer::Unclaimed`]).
pub(super) fn run_in_caller(publish: impl Job) -> Confirmation {
    Confirmation::from(poll::start(Box::pin(publish.run(None).map(Answer::now))))
}

/// A publish the task runs: its caller's outcome until it is answered or given up, and when
/// it is given up.
struct InFlight {
    outcome: Option<Outcome>,
    deadline: Instant,
}

async fn run<J: Job>(
    mut queue: mpsc::UnboundedReceiver<(J, Outcome)>,
    abandon: Arc<Notify>,
    timeout: Duration,
) {
    let mut pending = Watched::default();
    let mut in_flight = Slab::<InFlight>::new();
    let mut received = Vec::with_capacity(BATCH);
    // Acked publishes to answer once no other publish is ready (see the module's doc).
    let mut unclaimed = Vec::new();
    let mut open = true;
    // Set to the oldest deadline not given up yet, or later (moved on when it fires early).
    let mut expiry = pin!(tokio::time::sleep(timeout));
    let mut watching = false;
    while open || !pending.is_empty() || !unclaimed.is_empty() {
        tokio::select! {
            // In this order: answers and timeouts before new publishes.
            biased;
            () = abandon.notified() => break,
            Some(next) = pending.next(!unclaimed.is_empty()) => match next {
                Next::Finished((key, answer)) => {
                    finished(&mut in_flight, &mut unclaimed, key, answer);
                }
                Next::Idle => self::answer(&mut unclaimed),
            },
            () = &mut expiry, if watching => {
                let now = Instant::now();
                let mut next = None;
                for (_, publish) in in_flight.iter_mut() {
                    if publish.outcome.is_none() {
                        continue;
                    }
                    if publish.deadline <= now {
                        if let Some(outcome) = publish.outcome.take() {
                            outcome.fill(Err(timed_out(timeout)));
                        }
                    } else {
                        next = Some(next.map_or(publish.deadline, |n: Instant| n.min(publish.deadline)));
                    }
                }
                watching = next.is_some();
                if let Some(next) = next {
                    expiry.as_mut().reset(next);
                }
            }
            count = queue.recv_many(&mut received, BATCH), if open => {
                open = count > 0;
                if open && count < BATCH {
                    // Let the sender queue more before starting these: their frames then go
                    // out together, in fewer writes.
                    tokio::task::yield_now().await;
                    queue.recv_many(&mut received, BATCH - count).now_or_never();
                }
                let deadline = Instant::now() + timeout;
                if !watching {
                    expiry.as_mut().reset(deadline);
                    watching = true;
                }
                // The set polls new futures in the order they were pushed.
                pending.extend(received.drain(..).map(|(publish, outcome)| {
                    let key = in_flight.insert(InFlight {
                        outcome: Some(outcome),
                        deadline,
                    });
                    started(publish, key, deadline)
                }));
            }
        }
    }
    // Abandoned, or every sender is gone: a publish still pending fails as it is dropped, and
    // so does any handed over later; those acked are answered, after the publishes ready now
    // (which may carry their returned messages).
    // Awaited, not polled once: the set may yield before it is idle.
    while let Some(Next::Finished((key, answer))) = pending.next(true).await {
        finished(&mut in_flight, &mut unclaimed, key, answer);
    }
    answer(&mut unclaimed);
    drop(pending);
    drop(in_flight);
    while let Some(job) = queue.recv().await {
        drop(job);
    }
}

/// Answers the publish `key` with `answer`, or keeps it in `unclaimed` (unless it was given up).
fn finished(
    in_flight: &mut Slab<InFlight>,
    unclaimed: &mut Vec<(Option<Outcome>, Unclaimed)>,
    key: usize,
    answer: Answer,
) {
    if let Some(outcome) = in_flight.remove(key).outcome {
        match answer {
            Answer::Known(answer) => outcome.fill(answer),
            Answer::Unclaimed(acked) => unclaimed.push((Some(outcome), acked)),
        }
    } else if let Answer::Unclaimed(acked) = answer {
        // Given up (its caller was told it timed out): its returned message, if another
        // confirm carried it, is claimed all the same, or a later publish of the same id
        // would take it for its own.
        unclaimed.push((None, acked));
    }
}

/// Answers the acked publishes of `unclaimed`.
fn answer(unclaimed: &mut Vec<(Option<Outcome>, Unclaimed)>) {
    for (outcome, acked) in unclaimed.drain(..) {
        let answer = acked.claim();
        if let Some(outcome) = outcome {
            outcome.fill(answer);
        }
    }
}

/// `job` as the task runs it, ending with its `key`.
fn started<J: Job>(job: J, key: usize, deadline: Instant) -> impl Future<Output = (usize, Answer)> {
    // A combinator, not an `async` block, which would hold the publish twice.
    job.run(Some(deadline)).map(move |answer| (key, answer))
}

/// The error of a publish given up after `timeout` without RabbitMQ's confirm.
pub(super) fn timed_out(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "RabbitMQ did not confirm the publish within rabbitmq.publish_timeout = {} (a \
             resource alarm, or a quorum queue without a majority?); the message may or may not \
             have been stored",
            humantime::format_duration(timeout)
        ),
    )
    .backend(BACKEND)
    .operation("publish")
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use broker_api::{MessageId, Position};
    use futures::future::BoxFuture;
    use tokio::sync::oneshot;

    use super::super::orphans::Orphans;
    use super::super::Route;
    use super::*;

    /// A stand-in publish: runs the future it was made of.
    struct Scripted(BoxFuture<'static, Answer>);

    impl Job for Scripted {
        fn run(self, _: Option<Instant>) -> impl Future<Output = Answer> + Send {
            self.0
        }
    }

    /// `job` handed to `driver` as the publish of message `id`.
    fn drive(driver: &Driver<Scripted>, id: &str, job: Scripted) -> Confirmation {
        driver
            .drive(&MessageId::from(id), job)
            .expect("room for the confirmation")
    }

    /// A publish to `route` that answers with `answer` once `go` fires.
    fn scripted(
        go: oneshot::Receiver<()>,
        answer: impl FnOnce() -> Answer + Send + 'static,
    ) -> Scripted {
        Scripted(Box::pin(async move {
            go.await.ok();
            answer()
        }))
    }

    /// A route whose returned messages the scripted publishes share.
    fn route() -> Arc<Route> {
        Arc::new(Route {
            exchange: "orders".into(),
            channel: RwLock::new(None),
            reopen: tokio::sync::Mutex::new(()),
            orphans: Orphans::default(),
        })
    }

    /// The answer of publish x: acked, its returned message to be looked for.
    fn x_acked(route: &Arc<Route>) -> impl FnOnce() -> Answer + Send + 'static {
        let route = route.clone();
        move || {
            Answer::Unclaimed(Unclaimed {
                route,
                message_id: MessageId::from("x"),
            })
        }
    }

    /// The answer of publish z, `answer`, whose confirm carried x's returned message.
    fn z_with_x_returned(
        route: &Arc<Route>,
        answer: Answer,
    ) -> impl FnOnce() -> Answer + Send + 'static {
        let route = route.clone();
        move || {
            route.orphans.keep("x");
            answer
        }
    }

    /// lapin handed publish x's returned message to the confirm of publish z, completed first
    /// in the same multiple ack; x's frames were written before, so the task polls x first and
    /// finds it acked without one. Answered at once, x would be reported published.
    #[tokio::test]
    async fn an_acked_publish_is_answered_after_the_publishes_woken_before_it() {
        let route = route();
        let driver = Driver::start(&tokio::runtime::Handle::current(), Duration::from_secs(60));
        let (written, on_written) = oneshot::channel();
        let (confirmed, on_confirmed) = oneshot::channel();
        let x = drive(&driver, "x", scripted(on_written, x_acked(&route)));
        let stored = Answer::Known(Ok(Receipt {
            message_id: MessageId::from("z"),
            position: Position::Unknown,
        }));
        let z = drive(
            &driver,
            "z",
            scripted(on_confirmed, z_with_x_returned(&route, stored)),
        );
        // The task starts both before they are woken, x first.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(written.send(()).is_ok() && confirmed.send(()).is_ok());
        let x = x.await;
        assert!(
            x.as_ref()
                .is_err_and(|error| error.kind() == ErrorKind::Rejected),
            "x was returned: {x:?}"
        );
        assert!(z.await.is_ok());
    }

    /// Publish x was given up (its caller told it timed out), then acked; its returned message
    /// came with z's confirm. A later publish with x's id, stored, is not answered as returned.
    #[tokio::test]
    async fn a_given_up_publish_claims_its_returned_message() {
        let route = route();
        let driver = Driver::start(
            &tokio::runtime::Handle::current(),
            Duration::from_millis(100),
        );
        let (acked, on_acked) = oneshot::channel();
        let (confirmed, on_confirmed) = oneshot::channel();
        let given_up = drive(&driver, "x", scripted(on_acked, x_acked(&route)));
        let failed = Answer::Known(Err(timed_out(Duration::ZERO)));
        let z = drive(
            &driver,
            "z",
            scripted(on_confirmed, z_with_x_returned(&route, failed)),
        );
        let err = given_up.await.expect_err("not acked within the timeout");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(z.await.is_err());
        assert!(confirmed.send(()).is_ok() && acked.send(()).is_ok());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let (stored, on_stored) = oneshot::channel();
        let again = drive(&driver, "x", scripted(on_stored, x_acked(&route)));
        assert!(stored.send(()).is_ok());
        let again = again.await;
        assert!(
            again.is_ok(),
            "answered with the given-up publish's return: {again:?}"
        );
    }

    /// Every publish in flight is one of these futures, allocated by the set: 1 600 bytes
    /// (lapin's publish future is 1 064 of them); written as `async fn`s that copy their
    /// arguments and awaited futures, it was 2 704.
    #[test]
    fn a_publish_in_flight_stays_small() {
        fn output_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let in_flight = output_size(started::<Publish>);
        assert!(
            in_flight <= 2048,
            "a publish in flight takes {in_flight} bytes"
        );
    }
}
