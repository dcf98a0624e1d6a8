//! Closing a subscription: intake stops before deliveries are given back, a second close waits
//! for the first, and a message abandoned or failed for good is given back after intake stopped.

use super::*;

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
