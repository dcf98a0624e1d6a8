//! How the `at_least_once` runner gives deliveries back. Closing a concurrent subscription: the
//! stream hears that intake stopped before the runner drops the deliveries it will not handle
//! (those waiting behind their key), so that a backend which rewinds on a dropped delivery
//! (Kafka) does not discard the acknowledgements of the handlers still finishing. A failed
//! delivery that is no longer live is dropped, not retried.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Broker, Capabilities, Confirmation, Delivery, DeliveryStream,
    Error, ErrorKind, HandlerError, HandlerResult, Message, MessageId, Metadata, Received, Result,
    RetryPolicy, Settle, SettleOnce, SubscribeRequest, Topic, TopicSpec,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::Notify;

/// What the stream and its deliveries saw, in order.
type Events = Arc<Mutex<Vec<String>>>;

fn record(events: &Events, event: String) {
    if let Ok(mut events) = events.lock() {
        events.push(event);
    }
}

/// A backend whose one subscription hands out the scripted messages (value and key), in
/// order, then nothing.
#[derive(Debug)]
struct ScriptedBackend {
    script: Vec<(&'static str, Option<&'static str>)>,
    events: Events,
    intake_stopped: Arc<Notify>,
    /// Whether its deliveries are live (`Delivery::is_live`).
    live: Arc<AtomicBool>,
    /// Deliveries no longer live, by value.
    revoked: Revoked,
}

type Revoked = Arc<Mutex<Vec<String>>>;

impl ScriptedBackend {
    fn new(script: &[(&'static str, Option<&'static str>)]) -> Self {
        ScriptedBackend {
            script: script.to_vec(),
            events: Events::default(),
            intake_stopped: Arc::new(Notify::new()),
            live: Arc::new(AtomicBool::new(true)),
            revoked: Revoked::default(),
        }
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, _message: Message) -> Completion<'a, Confirmation> {
        completion::ready(Err(Error::unsupported("this backend only delivers")))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Ok(Box::new(Scripted {
            topic: request.topic.into(),
            left: self.script.iter().rev().copied().collect(),
            events: self.events.clone(),
            intake_stopped: self.intake_stopped.clone(),
            live: self.live.clone(),
            revoked: self.revoked.clone(),
        }))
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

struct Scripted {
    topic: Arc<str>,
    left: Vec<(&'static str, Option<&'static str>)>,
    events: Events,
    intake_stopped: Arc<Notify>,
    live: Arc<AtomicBool>,
    revoked: Revoked,
}

impl Stream for Scripted {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some((value, key)) = self.left.pop() else {
            return Poll::Pending;
        };
        let mut metadata = Metadata::new(self.topic.clone());
        metadata.key = key.map(str::to_owned);
        // "m#2": the second delivery of message m.
        let id = value.split('#').next().unwrap_or(value);
        metadata.message_id = Some(MessageId::from(id));
        let acker = SettleOnce::boxed(Recorded {
            value,
            events: self.events.clone(),
            live: self.live.clone(),
            revoked: self.revoked.clone(),
        });
        let payload = Bytes::from_static(value.as_bytes());
        Poll::Ready(Some(Ok(Delivery::new(payload, metadata, acker))))
    }
}

impl DeliveryStream for Scripted {
    fn stop_intake(&mut self) {
        record(&self.events, "intake stopped".to_owned());
        self.intake_stopped.notify_one();
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        record(&self.events, "closed".to_owned());
        async { Ok(()) }.boxed()
    }
}

struct Recorded {
    value: &'static str,
    events: Events,
    live: Arc<AtomicBool>,
    revoked: Revoked,
}

impl Settle for Recorded {
    fn settle(&mut self, handled: bool) -> broker_api::Result<()> {
        let outcome = if handled { "acked" } else { "rejected" };
        record(&self.events, format!("{} {outcome}", self.value));
        Ok(())
    }

    fn is_live(&self) -> bool {
        let revoked = self
            .revoked
            .lock()
            .is_ok_and(|revoked| revoked.iter().any(|value| value == self.value));
        self.live.load(Ordering::SeqCst) && !revoked
    }
}

#[tokio::test]
async fn intake_stops_before_waiting_deliveries_are_dropped() {
    let backend = ScriptedBackend::new(&[("first", Some("k")), ("second", Some("k"))]);
    let (events, intake_stopped) = (backend.events.clone(), backend.intake_stopped.clone());
    let broker = Broker::new(backend);
    let topic = Topic::<String>::text("orders");
    let started = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let handler = {
        let (started, finish) = (started.clone(), finish.clone());
        move |_: Received<String>| {
            let (started, finish) = (started.clone(), finish.clone());
            async move {
                started.notify_one();
                finish.notified().await;
                HandlerResult::Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .concurrency(4)
        .at_least_once(handler)
        .await
        .expect("subscribe");
    // `first` runs; `second` waits behind it for its key.
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the first message's handler started");
    let closing = tokio::spawn(running.close());
    // `first` finishes only once the runner stopped intake (and dropped `second`). Without
    // the call, the wait times out and `first` finishes anyway: the order below tells.
    let _ = tokio::time::timeout(Duration::from_secs(2), intake_stopped.notified()).await;
    finish.notify_one();
    tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .expect("close returns")
        .expect("close task")
        .expect("close succeeds");
    let seen = events
        .lock()
        .map(|events| events.clone())
        .unwrap_or_default();
    assert_eq!(
        seen,
        ["intake stopped", "second rejected", "first acked", "closed"],
        "the stream hears that intake stopped before the waiting delivery is dropped, and the \
         running handler's message is acknowledged"
    );
}

/// A backend whose close takes a while and fails; closing it again returns at once, as the
/// backends' own closes do.
#[derive(Debug, Default)]
struct SlowFailingClose {
    closes: AtomicU32,
    finished: AtomicBool,
}

#[async_trait]
impl Backend for SlowFailingClose {
    fn kind(&self) -> &'static str {
        "slow-failing-close"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, _message: Message) -> Completion<'a, Confirmation> {
        completion::ready(Err(Error::unsupported("this backend only closes")))
    }

    async fn subscribe(&self, _request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Err(Error::unsupported("this backend only closes"))
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.closes.fetch_add(1, Ordering::SeqCst) > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.finished.store(true, Ordering::SeqCst);
        Err(Error::new(
            ErrorKind::Timeout,
            "2 pending publishes not confirmed",
        ))
    }
}

#[tokio::test]
async fn a_second_close_waits_for_the_first_and_reports_it() {
    let backend = Arc::new(SlowFailingClose::default());
    let broker = Broker::from_shared(backend.clone());
    let clone = broker.clone();
    let (first, (second, finished_before_second)) = tokio::join!(broker.close(), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = clone.close().await;
        (second, backend.finished.load(Ordering::SeqCst))
    });
    let first = first.expect_err("the first close fails");
    assert!(
        first
            .to_string()
            .contains("2 pending publishes not confirmed"),
        "{first}"
    );
    assert!(
        finished_before_second,
        "the second close returned before the first finished"
    );
    let second = second.expect_err("the second close reports the first one's failure");
    assert_eq!(second.kind(), ErrorKind::Timeout);
    assert!(
        second
            .to_string()
            .contains("2 pending publishes not confirmed"),
        "{second}"
    );
    let later = broker
        .close()
        .await
        .expect_err("a later close reports it too");
    assert_eq!(later.kind(), ErrorKind::Timeout);
    assert_eq!(
        backend.closes.load(Ordering::SeqCst),
        1,
        "the backend is closed once"
    );
}

fn seen(events: &Events) -> Vec<String> {
    events
        .lock()
        .map(|events| events.clone())
        .unwrap_or_default()
}

/// A message that fails for good with dead-lettering off stops the subscription; its delivery
/// is given back only once intake stopped, so that a handler still finishing keeps its
/// acknowledgement (Kafka rewinds the partition on a delivery dropped before).
#[tokio::test]
async fn a_fatal_failure_gives_its_message_back_after_intake_stopped() {
    let backend = ScriptedBackend::new(&[("slow", None), ("bad", None)]);
    let (events, intake_stopped) = (backend.events.clone(), backend.intake_stopped.clone());
    let broker = Broker::new(backend);
    let finish = Arc::new(Notify::new());
    let handler = {
        let finish = finish.clone();
        move |message: Received<String>| {
            let finish = finish.clone();
            async move {
                if message.value == "bad" {
                    return Err(HandlerError::permanent("broken for good"));
                }
                finish.notified().await;
                HandlerResult::Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .concurrency(2)
        .retry(RetryPolicy {
            dead_letter: false,
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    let _ = tokio::time::timeout(Duration::from_secs(2), intake_stopped.notified()).await;
    finish.notify_one();
    let error = tokio::time::timeout(Duration::from_secs(5), running.join())
        .await
        .expect("the subscription ends")
        .expect_err("the failure stops it");
    assert!(
        error.to_string().contains("dead-lettering is off"),
        "{error}"
    );
    assert_eq!(
        seen(&events),
        ["intake stopped", "bad rejected", "slow acked", "closed"]
    );
}

/// Closing while a message waits out its retry backoff gives it back unsettled, and the next
/// message of its key does not start, also when the close comes while the runner is
/// collecting finished handlers (here: another handler closes the broker).
#[tokio::test]
async fn an_abandoned_retry_does_not_start_the_next_message_of_its_key() {
    let backend = ScriptedBackend::new(&[
        ("first", Some("k")),
        ("second", Some("k")),
        ("closer", Some("c")),
    ]);
    let events = backend.events.clone();
    let broker = Broker::new(backend);
    let (failed, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (broker, failed, go) = (broker.clone(), failed.clone(), go.clone());
        move |message: Received<String>| {
            let (broker, failed, go) = (broker.clone(), failed.clone(), go.clone());
            async move {
                match message.value.as_str() {
                    "first" => {
                        failed.notify_one();
                        Err(HandlerError::from("try again later"))
                    }
                    "closer" => {
                        go.notified().await;
                        // Requests the stop within this poll, then stays busy.
                        let _ = broker.close().now_or_never();
                        std::future::pending::<HandlerResult>().await
                    }
                    _ => HandlerResult::Ok(()),
                }
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .concurrency(4)
        .shutdown_timeout(Duration::from_millis(200))
        .retry(RetryPolicy {
            min_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(5), failed.notified())
        .await
        .expect("the first message failed once");
    go.notify_one();
    tokio::time::timeout(Duration::from_secs(5), running.join())
        .await
        .expect("the subscription ends")
        .expect("closed without error");
    assert_eq!(
        seen(&events),
        [
            "intake stopped",
            "second rejected",
            "first rejected",
            "closer rejected",
            "closed"
        ]
    );
}

/// A message whose delivery stops being live while it fails (its Kafka partition revoked, its
/// RabbitMQ channel closed) is neither retried further nor dead-lettered — the broker delivers
/// it again to whoever handles it — and the subscription goes on with the next message.
#[tokio::test]
async fn a_failed_message_no_longer_live_is_neither_retried_nor_dead_lettered() {
    let backend = ScriptedBackend::new(&[("failing", None), ("next", None)]);
    let (events, live) = (backend.events.clone(), backend.live.clone());
    let broker = Broker::new(backend);
    let calls = Arc::new(AtomicU32::new(0));
    let handled_next = Arc::new(Notify::new());
    let handler = {
        let (calls, handled_next) = (calls.clone(), handled_next.clone());
        move |message: Received<String>| {
            let (calls, handled_next, live) = (calls.clone(), handled_next.clone(), live.clone());
            async move {
                if message.value == "next" {
                    handled_next.notify_one();
                    return HandlerResult::Ok(());
                }
                if calls.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                    // Revoked while its second attempt runs.
                    live.store(false, Ordering::SeqCst);
                }
                Err(HandlerError::from("the database is down"))
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_attempts: 10,
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(5), handled_next.notified())
        .await
        .expect("the next message was handled: the subscription went on");
    running.close().await.expect("close succeeds");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no retry after it was revoked"
    );
    assert_eq!(
        seen(&events),
        ["failing rejected", "next acked", "closed"],
        "dropped, not dead-lettered (this backend refuses every publish)"
    );
}

/// What the handler does at its `n`th call (from 1): whether it revokes the delivery it was
/// given (no longer live), and whether it succeeds.
type Plan = fn(u32) -> (bool, bool);

/// Runs `script` with a handler that follows `plan`, 3 attempts 1 ms apart, sequentially and
/// then concurrently (`concurrency` 2, every message with one key, so still in order), until
/// each subscription ends (this backend refuses dead letters: giving a message up ends it).
/// Returns the calls made and the outcome of each run.
async fn calls_until_given_up(script: &[&'static str], plan: Plan) -> Vec<(u32, Result<()>)> {
    let mut runs = Vec::new();
    for (concurrency, key) in [(1, None), (2, Some("k"))] {
        let script: Vec<_> = script.iter().map(|&value| (value, key)).collect();
        let backend = ScriptedBackend::new(&script);
        let revoked = backend.revoked.clone();
        let broker = Broker::new(backend);
        let calls = Arc::new(AtomicU32::new(0));
        let handler = {
            let calls = calls.clone();
            move |message: Received<String>| {
                let (calls, revoked) = (calls.clone(), revoked.clone());
                async move {
                    let (revokes, succeeds) = plan(calls.fetch_add(1, Ordering::SeqCst) + 1);
                    if revokes {
                        if let Ok(mut revoked) = revoked.lock() {
                            revoked.push(message.value);
                        }
                    }
                    if succeeds {
                        return HandlerResult::Ok(());
                    }
                    Err(HandlerError::from("the database is down"))
                }
            }
        };
        let running = broker
            .subscriber(&Topic::<String>::text("orders"), "g")
            .concurrency(concurrency)
            .retry(RetryPolicy {
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                max_attempts: 3,
                ..RetryPolicy::default()
            })
            .at_least_once(handler)
            .await
            .expect("subscribe");
        let ended = tokio::time::timeout(Duration::from_secs(5), running.join())
            .await
            .expect("the subscription ends: a message given up cannot be dead-lettered");
        runs.push((calls.load(Ordering::SeqCst), ended));
    }
    runs
}

/// A message that comes back after its delivery stopped being live while it failed is retried
/// from where its retries stopped: with rebalances more frequent than a full retry cycle, it
/// would otherwise never be dead-lettered.
#[tokio::test]
async fn a_message_that_comes_back_goes_on_with_its_attempts() {
    // Delivered again after its first delivery was revoked during its second attempt.
    let runs = calls_until_given_up(&["failing#1", "failing#2"], |call| (call == 2, false)).await;
    for (calls, ended) in runs {
        let error = ended.expect_err("this backend refuses the dead letter");
        assert!(
            error.to_string().contains("could not be dead-lettered"),
            "{error}"
        );
        assert_eq!(calls, 3, "given up after 3 calls in all");
    }
}

/// A message that came back and was handled is forgotten: a later message with its id (a
/// producer's retry, a replay) gets every attempt.
#[tokio::test]
async fn a_message_handled_when_it_came_back_is_forgotten() {
    // Revoked during its second attempt, handled when it came back, then sent again.
    let script = ["again#1", "again#2", "again#3"];
    let runs = calls_until_given_up(&script, |call| (call == 2, call == 3)).await;
    for (calls, ended) in runs {
        assert!(ended.is_err());
        assert_eq!(calls, 6, "3 calls on the third delivery");
    }
}

/// How the first message of a key ends while the next one waits behind it.
#[derive(Clone, Copy)]
enum FirstOfKey {
    /// Fails, every delivery no longer live (the subscription's partitions revoked).
    FailsRevoked,
    /// Succeeds, the delivery waiting behind it no longer live (its partition went to
    /// another member).
    SucceedsNextRevoked,
}

/// Runs "first" and "second" with key "k", then "other" with key "j", four at a time: once
/// "other" runs ("second" then waits behind "first"), "first" ends as `how` says. Returns the
/// handler calls and the backend's events.
async fn run_key_after_a_revocation(how: FirstOfKey) -> (Vec<String>, Vec<String>) {
    let backend = ScriptedBackend::new(&[
        ("first", Some("k")),
        ("second", Some("k")),
        ("other", Some("j")),
    ]);
    let (events, live, revoked) = (
        backend.events.clone(),
        backend.live.clone(),
        backend.revoked.clone(),
    );
    let broker = Broker::new(backend);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let other_started = Arc::new(Notify::new());
    let handler = {
        let (calls, other_started) = (calls.clone(), other_started.clone());
        move |message: Received<String>| {
            let (calls, other_started) = (calls.clone(), other_started.clone());
            let (live, revoked) = (live.clone(), revoked.clone());
            async move {
                if let Ok(mut calls) = calls.lock() {
                    calls.push(message.value.clone());
                }
                match (message.value.as_str(), how) {
                    ("first", FirstOfKey::FailsRevoked) => {
                        other_started.notified().await;
                        live.store(false, Ordering::SeqCst);
                        Err(HandlerError::from("the database is down"))
                    }
                    ("first", FirstOfKey::SucceedsNextRevoked) => {
                        other_started.notified().await;
                        if let Ok(mut revoked) = revoked.lock() {
                            revoked.push("second".to_owned());
                        }
                        HandlerResult::Ok(())
                    }
                    ("other", _) => {
                        other_started.notify_one();
                        HandlerResult::Ok(())
                    }
                    _ => HandlerResult::Ok(()),
                }
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .concurrency(4)
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    // Let "first" end (and a failed one's retry loop see that it is no longer live).
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.close().await.expect("close succeeds");
    let called = calls.lock().map(|c| c.clone()).unwrap_or_default();
    (called, seen(&events))
}

/// With messages handled concurrently, the next message of a key that failed and is no longer
/// live is not started while it is not live either: it would be handled before the failed one
/// comes back.
#[tokio::test]
async fn the_next_message_of_a_key_no_longer_live_is_not_started() {
    let (called, seen) = run_key_after_a_revocation(FirstOfKey::FailsRevoked).await;
    assert_eq!(called, ["first", "other"], "{seen:?}");
    assert!(seen.contains(&"first rejected".to_owned()), "{seen:?}");
    assert!(seen.contains(&"second rejected".to_owned()), "{seen:?}");
}

/// With messages handled concurrently, a message waiting behind its key that stopped being
/// live meanwhile (its partition went to another member) is not started when the one before it
/// succeeds: the member that holds it now handles it, after which it would be handled here a
/// second time, after later messages of its key.
#[tokio::test]
async fn a_waiting_message_no_longer_live_is_not_started_after_its_key_succeeded() {
    let (called, seen) = run_key_after_a_revocation(FirstOfKey::SucceedsNextRevoked).await;
    assert_eq!(called, ["first", "other"], "{seen:?}");
    assert!(seen.contains(&"first acked".to_owned()), "{seen:?}");
    assert!(seen.contains(&"second rejected".to_owned()), "{seen:?}");
}
