//! Lifecycle: closing, cancelling and resubscribing lose nothing; closed handles refuse work;
//! in-flight limits hold; a broker restart is survived.

use std::sync::Arc;
use std::time::Duration;

use broker_api::{Capabilities, ErrorKind, Received, SubscribeRequest};
use futures::StreamExt;
use tokio::sync::Notify;

use super::{connect, distinct_values, publish_texts, sorted, text_topic};
use crate::support::{fresh_topic, next_within, skip, Inbox};
use crate::{Harness, NoRestart};

/// A subscriber closed mid-stream, then a new one in the same group: every message is handled
/// by one or the other.
pub async fn resubscribe_after_close_loses_nothing(harness: &dyn Harness) {
    const IN_FLIGHT: usize = 10;
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "resubscribe", &["g"]).await);
    let sent = publish_texts(&broker.publisher(&topic), "m", 100).await;
    let handled = Inbox::new();
    let slow = {
        let handled = handled.clone();
        move |message: Received<String>| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                handled.push(message);
                Ok(())
            }
        }
    };
    let first = broker
        .subscriber(&topic, "g")
        .max_in_flight(IN_FLIGHT)
        .at_least_once(slow)
        .await
        .expect("subscribe");
    handled.wait_for(30, harness.patience()).await;
    first.close().await.expect("close mid-stream");
    let after_close = handled.len();
    assert!(
        after_close < 100,
        "the first subscriber should not have finished"
    );

    let second = broker
        .subscriber(&topic, "g")
        .at_least_once(handled.handler())
        .await
        .expect("subscribe again");
    let received = handled
        .wait_until(
            "every message across both subscribers",
            harness.patience(),
            |r| distinct_values(r).len() >= 100,
        )
        .await;
    assert_eq!(distinct_values(&received), sorted(sent));
    // Closing committed what the first subscriber handled: only what it held unsettled (at
    // most its `max_in_flight`) may come again.
    assert!(
        received.len() <= 100 + IN_FLIGHT,
        "{} deliveries for 100 messages: closing did not settle what was handled",
        received.len()
    );
    second.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A handler still running when its subscription's shutdown timeout runs out is abandoned,
/// not acknowledged: closing returns, and the message comes again to the group's next
/// subscriber.
pub async fn abandoned_handler_is_redelivered(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "abandoned", &["g"]).await);
    let sent = publish_texts(&broker.publisher(&topic), "stuck", 1).await;
    let started = Arc::new(Notify::new());
    let stuck = {
        let started = started.clone();
        move |_: Received<String>| {
            started.notify_one();
            futures::future::pending::<broker_api::HandlerResult>()
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .shutdown_timeout(Duration::from_millis(500))
        .at_least_once(stuck)
        .await
        .expect("subscribe");
    tokio::time::timeout(harness.patience(), started.notified())
        .await
        .expect("the handler was called");
    tokio::time::timeout(harness.patience(), running.close())
        .await
        .expect("closing gives up on the handler after the shutdown timeout")
        .expect("close");

    let handled = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(handled.handler())
        .await
        .expect("subscribe again");
    let received = handled.wait_for(1, harness.patience()).await;
    assert_eq!(distinct_values(&received), sent);
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Closing the broker flushes what was sent and not yet confirmed: every kept confirmation
/// answers, and every message — those whose confirmation was dropped too — is delivered.
pub async fn close_flushes_sent_messages(harness: &dyn Harness) {
    const COUNT: usize = 200;
    let reader = connect(harness).await;
    let topic = text_topic(&fresh_topic(&reader, "closeflush", &["g"]).await);
    let writer = connect(harness).await;
    let publisher = writer.publisher(&topic);
    let mut kept = Vec::new();
    let mut sent = Vec::new();
    for i in 0..COUNT {
        let value = format!("m-{i}");
        let confirmation = publisher.send(&value).await.expect("send");
        if i % 2 == 0 {
            kept.push(confirmation);
        }
        sent.push(value);
    }
    writer.close().await.expect("close with messages in flight");
    for confirmation in kept {
        confirmation
            .await
            .expect("a message sent before close is confirmed");
    }

    let handled = Inbox::new();
    let subscription = reader
        .subscriber(&topic, "g")
        .at_least_once(handled.handler())
        .await
        .expect("subscribe");
    let received = handled
        .wait_until("every message sent before close", harness.patience(), |r| {
            distinct_values(r).len() >= COUNT
        })
        .await;
    assert_eq!(distinct_values(&received), sorted(sent));
    subscription.close().await.expect("close");
    reader.close().await.expect("close broker");
}

/// At most once: messages already received are not delivered again to the group.
pub async fn at_most_once_does_not_redeliver(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "atmost", &["g"]).await);
    let publisher = broker.publisher(&topic);
    publish_texts(&publisher, "first", 10).await;
    let mut stream = broker
        .subscriber(&topic, "g")
        .max_in_flight(10)
        .at_most_once()
        .await
        .expect("subscribe");
    for _ in 0..10 {
        let received = next_within(&mut stream, harness.patience()).await;
        assert!(received.value.starts_with("first-"));
    }
    stream.close().await.expect("close");
    drop(stream);

    let mut again = broker
        .subscriber(&topic, "g")
        .at_most_once()
        .await
        .expect("subscribe again");
    tokio::time::sleep(harness.quiet_period()).await;
    publish_texts(&publisher, "second", 1).await;
    let next = next_within(&mut again, harness.patience()).await;
    assert_eq!(next.value, "second-0", "an acknowledged message came back");
    // Nor after it (a broker that does not keep order could redeliver one later).
    match tokio::time::timeout(harness.quiet_period(), again.next()).await {
        Err(_) => {}
        Ok(Some(late)) => panic!(
            "an acknowledged message came back after the next one: {:?}",
            late.map(|r| r.value)
        ),
        Ok(None) => panic!("the subscription ended by itself"),
    }
    again.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Subscribing and closing at once, three times, then subscribing for real: the group works.
pub async fn cancel_and_resubscribe(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "cancel", &["g"]).await);
    for _ in 0..3 {
        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe");
        running.close().await.expect("close at once");
    }
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let sent = publish_texts(&broker.publisher(&topic), "c", 5).await;
    let received = inbox.wait_for(5, harness.patience()).await;
    assert_eq!(distinct_values(&received), sorted(sent));
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Closing subscriptions and the broker from many tasks at once, while messages flow, finishes
/// (the case guard fails it otherwise).
pub async fn concurrent_close_does_not_deadlock(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "closing", &["a", "b", "c"]).await);
    let mut running = Vec::new();
    for group in ["a", "b", "c"] {
        let inbox = Inbox::new();
        running.push(
            broker
                .subscriber(&topic, group)
                .at_least_once(inbox.handler())
                .await
                .expect("subscribe"),
        );
    }
    let publisher = broker.publisher(&topic);
    let flow = tokio::spawn(async move {
        for i in 0..200 {
            if publisher.publish(&format!("x-{i}")).await.is_err() {
                break; // the broker was closed under us: expected
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut closing: Vec<tokio::task::JoinHandle<()>> = running
        .into_iter()
        .map(|r| {
            tokio::spawn(async move {
                let _ = r.close().await;
            })
        })
        .collect();
    for _ in 0..2 {
        let broker = broker.clone();
        closing.push(tokio::spawn(async move {
            broker.close().await.expect("close broker");
        }));
    }
    let all = futures::future::join_all(closing);
    tokio::time::timeout(harness.patience(), all)
        .await
        .expect("closing from many tasks at once must finish");
    tokio::time::timeout(harness.patience(), flow)
        .await
        .expect("the publisher must stop")
        .expect("publisher task");
}

/// After close, publishing and subscribing fail with a `Closed` error.
pub async fn publish_after_close_fails(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "afterclose", &["g"]).await);
    broker.close().await.expect("close");
    broker.close().await.expect("closing twice is fine");
    let err = broker
        .publisher(&topic)
        .publish(&"late".to_owned())
        .await
        .expect_err("publish after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = broker
        .subscriber(&topic, "g")
        .manual()
        .await
        .expect_err("subscribe after close");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// A subscription never holds more unsettled deliveries than `max_in_flight`.
pub async fn bounded_in_flight(harness: &dyn Harness) {
    const LIMIT: usize = 5;
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "bounded", &["g"]).await;
    publish_texts(&broker.publisher(&text_topic(&name)), "b", 50).await;
    let mut stream = broker
        .backend()
        .subscribe(SubscribeRequest::new(&name, "g").max_in_flight(LIMIT))
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let delivery = next_within(&mut stream, harness.patience()).await;
        held.push(delivery);
    }
    let extra = tokio::time::timeout(harness.quiet_period(), stream.next()).await;
    assert!(
        extra.is_err(),
        "a delivery beyond max_in_flight = {LIMIT} arrived"
    );
    let first = held.remove(0);
    first.ack().await.expect("ack");
    let next = tokio::time::timeout(harness.patience(), stream.next())
        .await
        .expect("room was made: a delivery must follow")
        .expect("stream open")
        .expect("a delivery");
    held.push(next);
    for delivery in held {
        delivery.ack().await.expect("ack");
    }
    stream.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A broker restarted mid-stream: publishing and the running subscription resume by
/// themselves, and a declared group nobody reads meanwhile keeps its messages. Where the broker
/// keeps messages across restarts, every confirmed message is delivered; where it does not (an
/// emulator), once messages flow again, every message confirmed from then on is delivered.
///
/// Not part of [`conformance_suite!`](crate::conformance_suite): it stops the broker under
/// every other test, so run it from a test binary of its own.
pub async fn broker_restart_loses_nothing(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let durable = broker.capabilities().survives_restart;
    // `h` is declared and read only after the restart.
    let topic = text_topic(&fresh_topic(&broker, "restart", &["g", "h"]).await);
    let publisher = broker.publisher(&topic);
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let before = publish_texts(&publisher, "before", 50).await;
    inbox
        .wait_until("the first messages", harness.patience(), |r| {
            distinct_values(r).len() >= 10
        })
        .await;

    match harness.restart().await {
        Ok(()) => {}
        Err(NoRestart::Unsupported) => {
            skip(
                "broker_restart_loses_nothing",
                "this harness has no broker process to restart",
            );
            running.close().await.expect("close");
            return;
        }
        Err(NoRestart::Failed(reason)) => panic!("the broker could not be restarted: {reason}"),
    }

    // Publishing resumes by itself; retry while the client reconnects, within the patience.
    let deadline = tokio::time::Instant::now() + harness.patience() * 2;
    if !durable {
        // The broker lost the topic and its groups: the publisher and the subscription each
        // re-create them, and a message published between the topic's and the group's
        // re-creation reaches nobody. Let the running subscription find its group gone
        // first: it must bring back `h` as well, or nothing would before `h` is read (a
        // publish finds the topic there and succeeds). Then wait until messages flow again.
        tokio::time::sleep(harness.quiet_period() * 3).await;
        let mut probes = 0;
        while !inbox
            .snapshot()
            .iter()
            .any(|r| r.value.starts_with("probe-"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message flowed after the restart ({probes} probes published)"
            );
            if publisher.publish(&format!("probe-{probes}")).await.is_ok() {
                probes += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut after = Vec::new();
    for i in 0..50 {
        let value = format!("after-{i}");
        loop {
            match publisher.publish(&value).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publishing did not resume after the restart: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        after.push(value);
    }
    let mut expected = after.clone();
    if durable {
        expected.extend(before);
    }
    let expected = sorted(expected);
    let received = inbox
        .wait_until(
            "every confirmed message after the restart",
            harness.patience() * 2,
            |r| {
                let got = distinct_values(r);
                expected.iter().all(|v| got.binary_search(v).is_ok())
            },
        )
        .await;
    assert!(distinct_values(&received).len() >= expected.len());
    running.close().await.expect("close");

    let later = Inbox::new();
    let reading_later = broker
        .subscriber(&topic, "h")
        .at_least_once(later.handler())
        .await
        .expect("subscribe the declared group");
    let received = later
        .wait_until(
            "every confirmed message after the restart, in the group read later",
            harness.patience(),
            |r| {
                let got = distinct_values(r);
                expected.iter().all(|v| got.binary_search(v).is_ok())
            },
        )
        .await;
    assert!(distinct_values(&received).len() >= expected.len());
    reading_later.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// The backend's capabilities are `expected`, its largest payload aside (which must be
/// known): a guarantee switched off by mistake would turn the cases it gates into skips. Not
/// in the suite: each backend's test file states what it promises.
pub async fn capabilities_are(harness: &dyn Harness, expected: Capabilities) {
    let broker = connect(harness).await;
    let capabilities = broker.capabilities();
    assert!(capabilities.max_payload_bytes.is_some(), "{capabilities:?}");
    let known = |capabilities: Capabilities| Capabilities {
        max_payload_bytes: None,
        ..capabilities
    };
    assert_eq!(known(capabilities), known(expected));
    broker.close().await.expect("close broker");
}
