//! Cooperative scheduling of the runners: a backlog that is always ready, handled by handlers
//! that finish at once, still lets the other tasks of the thread run, and still stops at close.
//!
//! The backend here hands out a backlog without ever consuming tokio's task budget, as a
//! client library that knows nothing of tokio does: only the runner can give the thread back.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Broker, Capabilities, Confirmation, Delivery, DeliveryStream,
    Error, HandlerResult, Message, Metadata, Received, Result, Running, Settle, SettleOnce,
    SubscribeRequest, Topic, TopicSpec,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};

const BACKLOG: usize = 20_000;

/// A backend whose every subscription starts with a backlog of [`BACKLOG`] messages.
#[derive(Debug)]
struct BacklogBackend;

#[async_trait]
impl Backend for BacklogBackend {
    fn kind(&self) -> &'static str {
        "backlog"
    }

    fn endpoint(&self) -> String {
        "backlog".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, _message: Message) -> Completion<'a, Confirmation> {
        completion::ready(Err(Error::unsupported("the backlog backend only delivers")))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Ok(Box::new(Backlog {
            topic: request.topic.into(),
            left: BACKLOG,
        }))
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Always ready until the backlog is handed out, then pending forever.
struct Backlog {
    topic: Arc<str>,
    left: usize,
}

impl Stream for Backlog {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Pending;
        }
        self.left -= 1;
        let metadata = Metadata::new(self.topic.clone());
        let acker = SettleOnce::boxed(Forget);
        Poll::Ready(Some(Ok(Delivery::new(
            Bytes::from_static(b"m"),
            metadata,
            acker,
        ))))
    }
}

impl DeliveryStream for Backlog {
    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }
}

/// Settling records nothing.
struct Forget;

impl Settle for Forget {
    fn settle(&mut self, _handled: bool) -> broker_api::Result<()> {
        Ok(())
    }
}

/// A subscription to the backlog with `concurrency` handlers at a time, and the count of the
/// messages they handled.
async fn counted_subscription(concurrency: usize) -> (Running, Arc<AtomicUsize>) {
    let broker = Broker::new(BacklogBackend);
    let topic = Topic::<String>::text("events");
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let running = broker
        .subscriber(&topic, "g")
        .concurrency(concurrency)
        .at_least_once(move |_: Received<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { HandlerResult::Ok(()) }
        })
        .await
        .expect("subscribe");
    (running, handled)
}

/// How many messages of the backlog were handled when another task of the thread first ran,
/// with `concurrency` handlers at a time.
async fn handled_when_a_neighbour_runs(concurrency: usize) -> usize {
    let (running, handled) = counted_subscription(concurrency).await;
    // Spawned after the subscription's task: on one thread it runs when that task yields.
    let neighbour = tokio::spawn({
        let handled = handled.clone();
        async move { handled.load(Ordering::SeqCst) }
    });
    let seen = neighbour.await.expect("neighbour task");
    running.close().await.expect("close");
    seen
}

/// How many messages of the backlog were handled once a close requested during it returned,
/// with `concurrency` handlers at a time.
async fn handled_when_closed_during_the_backlog(concurrency: usize) -> usize {
    let (running, handled) = counted_subscription(concurrency).await;
    // Spawned after the subscription's task: on one thread it runs when that task yields.
    let closing = tokio::spawn(running.close());
    closing.await.expect("close task").expect("close");
    handled.load(Ordering::SeqCst)
}

/// `seen`: how many messages of the backlog were done when the neighbour task first ran.
fn ran_during_the_backlog(seen: usize) {
    assert!(
        seen > 0,
        "the other task ran before the subscription's: the case tests nothing"
    );
    assert!(
        seen < BACKLOG,
        "another task ran only after the whole backlog of {BACKLOG} was done"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_sequential_runner_lets_other_tasks_run_during_a_backlog() {
    ran_during_the_backlog(handled_when_a_neighbour_runs(1).await);
}

#[tokio::test(flavor = "current_thread")]
async fn the_concurrent_runner_lets_other_tasks_run_during_a_backlog() {
    ran_during_the_backlog(handled_when_a_neighbour_runs(4).await);
}

/// `handled`: how many messages of the backlog were done when closing returned.
fn stopped_during_the_backlog(handled: usize) {
    assert!(
        handled > 0,
        "closing ran before the subscription's task: the case tests nothing"
    );
    assert!(
        handled < BACKLOG,
        "closing waited for the whole backlog of {BACKLOG}: the runner did not look for the \
         close between ready messages"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_sequential_runner_stops_during_a_backlog_at_close() {
    stopped_during_the_backlog(handled_when_closed_during_the_backlog(1).await);
}

#[tokio::test(flavor = "current_thread")]
async fn the_concurrent_runner_stops_during_a_backlog_at_close() {
    stopped_during_the_backlog(handled_when_closed_during_the_backlog(4).await);
}

/// How many values of the backlog a loop over an `at_most_once` stream (or, `manual`, over
/// the manual stream, acknowledging each) had read when another task of the thread first ran.
async fn read_when_a_neighbour_runs(manual: bool) -> usize {
    let broker = Broker::new(BacklogBackend);
    let topic = Topic::<String>::text("events");
    let read = Arc::new(AtomicUsize::new(0));
    let neighbour = tokio::spawn({
        let read = read.clone();
        async move { read.load(Ordering::SeqCst) }
    });
    let subscriber = broker.subscriber(&topic, "g");
    if manual {
        let mut stream = subscriber.manual().await.expect("subscribe");
        while read.load(Ordering::SeqCst) < BACKLOG {
            let incoming = stream.next().await.expect("a message").expect("no error");
            incoming.ack().await.expect("ack");
            read.fetch_add(1, Ordering::SeqCst);
        }
        stream.close().await.expect("close");
    } else {
        let mut stream = subscriber.at_most_once().await.expect("subscribe");
        while read.load(Ordering::SeqCst) < BACKLOG {
            stream.next().await.expect("a value").expect("no error");
            read.fetch_add(1, Ordering::SeqCst);
        }
        stream.close().await.expect("close");
    }
    neighbour.await.expect("neighbour task")
}

#[tokio::test(flavor = "current_thread")]
async fn an_at_most_once_stream_lets_other_tasks_run_during_a_backlog() {
    ran_during_the_backlog(read_when_a_neighbour_runs(false).await);
}

#[tokio::test(flavor = "current_thread")]
async fn a_manual_stream_lets_other_tasks_run_during_a_backlog() {
    ran_during_the_backlog(read_when_a_neighbour_runs(true).await);
}
