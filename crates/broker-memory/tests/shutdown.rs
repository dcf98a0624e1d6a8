//! Closing a subscription, or the broker, lets running handlers finish within the shutdown
//! timeout (retries included) and acknowledges what they handled; what they did not finish is
//! delivered again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Broker, ConnectOptions, HandlerError, Received, RetryPolicy, Topic, TopicSpec};
use broker_memory::{MemoryBackend, MemoryConfig, MemoryInstance};
use tokio::sync::Notify;

/// Longer than the shutdown timeout by far: only a close that hangs reaches it.
const HANG: Duration = Duration::from_secs(20);

/// The handler fails its first call, and its retry never finishes: closing waits for the
/// retry no longer than the shutdown timeout, and the message comes again to the next
/// subscriber of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_a_stuck_retry_past_the_shutdown_timeout() {
    let broker = Broker::new(MemoryBackend::new());
    let topic = Topic::<String>::text("stuck");
    broker
        .ensure_topic(&TopicSpec::new("stuck").group("g"))
        .await
        .expect("topic");
    let calls = Arc::new(AtomicUsize::new(0));
    let retrying = Arc::new(Notify::new());
    let handler = {
        let calls = calls.clone();
        let retrying = retrying.clone();
        move |_: Received<String>| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let retrying = retrying.clone();
            async move {
                if call == 1 {
                    return Err(HandlerError::from("the first call fails"));
                }
                retrying.notify_one();
                futures::future::pending::<()>().await;
                Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .shutdown_timeout(Duration::from_millis(200))
        .at_least_once(handler)
        .await
        .expect("subscribe");
    publish_and_wait(&broker, &topic, &retrying).await;

    tokio::time::timeout(HANG, running.close())
        .await
        .expect("close returned within the shutdown timeout")
        .expect("close");

    let again = Arc::new(Notify::new());
    let resubscribed = {
        let again = again.clone();
        move |message: Received<String>| {
            assert_eq!(message.value, "m");
            again.notify_one();
            async { Ok::<(), HandlerError>(()) }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(resubscribed)
        .await
        .expect("subscribe again");
    tokio::time::timeout(HANG, again.notified())
        .await
        .expect("the abandoned message is delivered again");
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Closing the broker closes its `at_least_once` subscriptions first: a handler running then
/// finishes and its message is acknowledged before the backend goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_broker_lets_running_handlers_finish() {
    let instance = Arc::new(MemoryInstance::new());
    let connect = || {
        MemoryBackend::with_instance(
            instance.clone(),
            &MemoryConfig::default(),
            ConnectOptions::default(),
        )
    };
    let broker = Broker::new(connect());
    let topic = Topic::<String>::text("slow");
    broker
        .ensure_topic(&TopicSpec::new("slow").group("g"))
        .await
        .expect("topic");
    let started = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let started = started.clone();
        let finished = finished.clone();
        move |_: Received<String>| {
            let started = started.clone();
            let finished = finished.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let _running = broker
        .subscriber(&topic, "g")
        .at_least_once(handler)
        .await
        .expect("subscribe");
    publish_and_wait(&broker, &topic, &started).await;

    tokio::time::timeout(HANG, broker.close())
        .await
        .expect("close returned")
        .expect("close");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "close returned before the running handler finished"
    );

    // Acknowledged before the backend closed: the group does not get it again.
    let again = Broker::new(connect());
    let redelivered = Arc::new(AtomicUsize::new(0));
    let counter = redelivered.clone();
    let running = again
        .subscriber(&topic, "g")
        .at_least_once(move |_: Received<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), HandlerError>(()) }
        })
        .await
        .expect("subscribe again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        redelivered.load(Ordering::SeqCst),
        0,
        "the message came again"
    );
    running.close().await.expect("close");
    again.close().await.expect("close broker");
}

/// Publishes one message, `m`, and waits until the handler says it reached the point the test
/// is about.
async fn publish_and_wait(broker: &Broker, topic: &Topic<String>, reached: &Notify) {
    broker
        .publisher(topic)
        .publish(&"m".to_owned())
        .await
        .expect("publish");
    tokio::time::timeout(HANG, reached.notified())
        .await
        .expect("the handler got the message");
}

/// Deleting a topic ends its subscriptions' streams, also one that holds every delivery it may
/// (`max_in_flight`) and so waits for room, not for messages.
#[tokio::test]
async fn deleting_a_topic_ends_a_stream_at_its_in_flight_limit() {
    use broker_api::{Message, SubscribeRequest};
    use futures::StreamExt;

    let broker = Broker::new(MemoryBackend::new());
    let backend = broker.backend().clone();
    broker
        .ensure_topic(&TopicSpec::new("doomed").group("g"))
        .await
        .expect("topic");
    for value in ["one", "two"] {
        backend
            .send("doomed", Message::new(value))
            .await
            .expect("queued")
            .await
            .expect("published");
    }
    let mut stream = backend
        .subscribe(SubscribeRequest::new("doomed", "g").max_in_flight(1))
        .await
        .expect("subscribe");
    let held = stream.next().await;
    assert!(matches!(held, Some(Ok(_))), "the first delivery");
    let (deleted, ended) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            backend.delete_topic("doomed").await
        },
        async {
            // Not `timeout`: its deadline polls the stream once more, which then sees the
            // deletion by itself.
            tokio::select! {
                biased;
                () = tokio::time::sleep(Duration::from_secs(5)) => None,
                item = stream.next() => Some(item),
            }
        }
    );
    deleted.expect("deleted");
    let ended = ended.expect("the stream ended when its topic was deleted");
    assert!(
        ended.is_none(),
        "the stream ends: {:?}",
        ended.map(|d| d.map(drop))
    );
    drop(held);
}

/// A backend whose `topic` holds `m0` to `m9` for group `g`.
async fn backend_with_ten_messages(topic: &str) -> MemoryBackend {
    use broker_api::{Backend, Message};

    let backend = MemoryBackend::new();
    backend
        .ensure_topic(&TopicSpec::new(topic).group("g"))
        .await
        .expect("topic");
    for i in 0..10 {
        backend
            .send(topic, Message::new(format!("m{i}")))
            .await
            .expect("queued")
            .await
            .expect("published");
    }
    backend
}

/// Closing the backend ends a stream at once, although it had taken more deliveries than it
/// handed out: those go back to the group, not to the application.
#[tokio::test]
async fn a_closed_backend_hands_out_nothing_it_had_buffered() {
    use broker_api::{Backend, SubscribeRequest};
    use futures::StreamExt;

    let backend = backend_with_ten_messages("buffered").await;
    let mut stream = backend
        .subscribe(SubscribeRequest::new("buffered", "g"))
        .await
        .expect("subscribe");
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(_))), "the first delivery");
    backend.close().await.expect("close");
    let after = stream.next().await;
    assert!(
        after.is_none(),
        "handed out after close: {:?}",
        after.map(|d| d.map(drop))
    );
}

/// What a member took from its group and never handed out goes to the next member as it was:
/// in order, and as a first attempt (no handler saw it).
#[tokio::test]
async fn what_a_member_never_handed_out_comes_back_in_order_as_first_attempts() {
    use broker_api::{Backend, SubscribeRequest};
    use futures::StreamExt;

    let backend = backend_with_ten_messages("taken").await;
    let mut first_member = backend
        .subscribe(SubscribeRequest::new("taken", "g"))
        .await
        .expect("subscribe");
    let first = first_member
        .next()
        .await
        .expect("a delivery")
        .expect("delivered");
    assert_eq!(first.payload, "m0");
    first.ack().await.expect("ack");
    drop(first_member);
    let mut next_member = backend
        .subscribe(SubscribeRequest::new("taken", "g"))
        .await
        .expect("subscribe again");
    for i in 1..10 {
        let delivery = tokio::time::timeout(HANG, next_member.next())
            .await
            .expect("delivered in time")
            .expect("a delivery")
            .expect("delivered");
        let (payload, metadata, acker) = delivery.into_parts();
        assert_eq!(payload, format!("m{i}"), "out of order");
        assert_eq!(metadata.attempt, Some(1), "attempt of m{i}");
        acker.ack().await.expect("ack");
    }
}

/// A member closing while its handler runs gives back at once what it took and had not handed
/// out yet, instead of holding it (and its keys) from the rest of the group for the shutdown
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_member_gives_back_what_it_had_not_started() {
    let broker = Broker::new(MemoryBackend::new());
    let topic = Topic::<String>::text("handover").with_key(|value: &String| value.clone());
    broker
        .ensure_topic(&TopicSpec::new("handover").group("g"))
        .await
        .expect("topic");
    for key in ["k1", "k2", "k3", "k4", "k5"] {
        broker
            .publisher(&topic)
            .publish(&key.to_owned())
            .await
            .expect("publish");
    }
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let first = {
        let (started, gate) = (started.clone(), gate.clone());
        move |_: Received<String>| {
            let (started, gate) = (started.clone(), gate.clone());
            async move {
                started.notify_one();
                gate.notified().await;
                Ok::<(), HandlerError>(())
            }
        }
    };
    let closing_member = broker
        .subscriber(&topic, "g")
        .shutdown_timeout(HANG)
        .at_least_once(first)
        .await
        .expect("subscribe");
    tokio::time::timeout(HANG, started.notified())
        .await
        .expect("the first handler started");
    let closing = tokio::spawn(closing_member.close());
    let handled = Arc::new(AtomicUsize::new(0));
    let other = {
        let handled = handled.clone();
        move |_: Received<String>| {
            handled.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Ok::<(), HandlerError>(()))
        }
    };
    let other_member = broker
        .subscriber(&topic, "g")
        .at_least_once(other)
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handled.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handed_over = handled.load(Ordering::SeqCst);
    gate.notify_one();
    closing
        .await
        .expect("close task")
        .expect("the first member closes");
    assert_eq!(
        handed_over, 4,
        "the other member got the messages the closing one had not started"
    );
    other_member.close().await.expect("close");
}
