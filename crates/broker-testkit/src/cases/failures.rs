//! Failures: handler errors are retried, poison and undecodable messages are dead-lettered with
//! their reason, and nothing is ever skipped silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_api::runner::dead_letter_headers as dlq;
use broker_api::{naming, ErrorKind, HandlerError, Received, RetryPolicy, Topic};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{connect, distinct_values, publish_texts, sorted, text_topic};
use crate::support::{fast_retry, fresh_topic, next_within, Inbox};
use crate::Harness;

/// A handler that fails twice for one message is called again until it succeeds; the message
/// is handled once, nothing is dead-lettered.
pub async fn handler_error_is_retried(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "retry", &["g"]).await;
    let topic = text_topic(&name);
    let sent = publish_texts(&broker.publisher(&topic), "r", 5).await;
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let inbox = Inbox::new();
    let handler = {
        let attempts = attempts.clone();
        let inbox = inbox.clone();
        move |message: Received<String>| {
            let attempts = attempts.clone();
            let inbox = inbox.clone();
            async move {
                let attempt = {
                    let mut attempts = attempts.lock().unwrap_or_else(|e| e.into_inner());
                    let n = attempts.entry(message.value.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                if message.value == "r-2" && attempt <= 2 {
                    return Err(HandlerError::from(format!("flaky failure {attempt}")));
                }
                inbox.push(message);
                Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(fast_retry(5))
        .at_least_once(handler)
        .await
        .expect("subscribe");
    let received = inbox.wait_for(5, harness.patience()).await;
    assert_eq!(distinct_values(&received), sorted(sent));
    let attempts = attempts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(attempts.get("r-2"), Some(&3), "attempts: {attempts:?}");
    running.close().await.expect("close");
    // Had one been dead-lettered, the group would read it from the dead-letter topic.
    read_dead_letters(harness, &broker, &name, "g", 0).await;
    broker.close().await.expect("close broker");
}

/// A message that always fails ends in `<topic>.<group>.dlq` with the reason, the topic, the
/// group and the attempts, while the others flow.
pub async fn poison_message_dead_lettered(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "poison", &["g"]).await;
    let topic = text_topic(&name);
    let publisher = broker.publisher(&topic);
    publish_texts(&publisher, "before", 10).await;
    let poison = publisher
        .message(&"poison".to_owned())
        .expect("encode")
        .with_header("origin", "test");
    let poison_id = poison.id.clone();
    publisher.publish_message(poison).await.expect("publish");
    publish_texts(&publisher, "after", 10).await;

    let inbox = Inbox::new();
    let handler = {
        let inbox = inbox.clone();
        move |message: Received<String>| {
            let inbox = inbox.clone();
            async move {
                if message.value == "poison" {
                    return Err(HandlerError::from("cannot digest poison"));
                }
                inbox.push(message);
                Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(fast_retry(3))
        .at_least_once(handler)
        .await
        .expect("subscribe");
    inbox.wait_for(20, harness.patience()).await;

    let dead = read_dead_letters(harness, &broker, &name, "g", 1).await;
    let letter = &dead[0];
    assert_eq!(letter.value, Bytes::from_static(b"poison"));
    let headers = &letter.metadata.headers;
    assert!(
        headers
            .get(dlq::REASON)
            .is_some_and(|r| r.contains("cannot digest poison")),
        "reason header: {headers:?}"
    );
    assert_eq!(headers.get(dlq::TOPIC), Some(name.as_str()));
    assert_eq!(headers.get(dlq::GROUP), Some("g"));
    assert_eq!(headers.get(dlq::ATTEMPTS), Some("3"));
    assert_eq!(headers.get("origin"), Some("test"), "original headers kept");
    assert_eq!(letter.metadata.message_id.as_ref(), Some(&poison_id));
    running.close().await.expect("close");

    // Dead-lettered, the message was acknowledged: the group does not get it again (on Kafka
    // its offset was committed, so what follows it is not read again either).
    publisher
        .publish(&"last".to_owned())
        .await
        .expect("publish");
    let again = Inbox::new();
    let rerun = broker
        .subscriber(&topic, "g")
        .retry(fast_retry(3))
        .at_least_once(again.handler())
        .await
        .expect("subscribe again");
    again
        .wait_until("the message after the rerun", harness.patience(), |r| {
            r.iter().any(|m| m.value == "last")
        })
        .await;
    // Time for a message given back to come again, whatever partition it was on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let values: Vec<String> = again.snapshot().into_iter().map(|m| m.value).collect();
    assert!(
        !values.iter().any(|v| v == "poison"),
        "the dead-lettered message came back: {values:?}"
    );
    rerun.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A handler that panics, when called or while its future runs, fails its message for good:
/// the message is dead-lettered with the panic's message, the subscription goes on with the
/// next ones.
pub async fn panicking_handler_dead_lettered(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "panic", &["g"]).await;
    let topic = text_topic(&name);
    let publisher = broker.publisher(&topic);
    publish_texts(&publisher, "before", 5).await;
    publisher
        .publish(&"panic-in-call".to_owned())
        .await
        .expect("publish");
    publisher
        .publish(&"panic-in-future".to_owned())
        .await
        .expect("publish");
    publish_texts(&publisher, "after", 5).await;

    let inbox = Inbox::new();
    let handler = {
        let inbox = inbox.clone();
        move |message: Received<String>| {
            assert!(message.value != "panic-in-call", "boom in the call");
            let inbox = inbox.clone();
            async move {
                assert!(message.value != "panic-in-future", "boom in the future");
                inbox.push(message);
                Ok(())
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(fast_retry(3))
        .at_least_once(handler)
        .await
        .expect("subscribe");
    let handled = inbox.wait_for(10, harness.patience()).await;
    assert_eq!(handled.len(), 10, "every other message is handled");

    let dead = read_dead_letters(harness, &broker, &name, "g", 2).await;
    let mut reasons: Vec<(Bytes, String)> = dead
        .iter()
        .map(|letter| {
            let headers = &letter.metadata.headers;
            assert_eq!(
                headers.get(dlq::ATTEMPTS),
                Some("1"),
                "a panic is not retried"
            );
            let reason = headers.get(dlq::REASON).unwrap_or_default().to_owned();
            (letter.value.clone(), reason)
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, Bytes::from_static(b"panic-in-call"));
    assert!(
        reasons[0].1.contains("panicked") && reasons[0].1.contains("boom in the call"),
        "reason: {}",
        reasons[0].1
    );
    assert_eq!(reasons[1].0, Bytes::from_static(b"panic-in-future"));
    assert!(
        reasons[1].1.contains("boom in the future"),
        "reason: {}",
        reasons[1].1
    );
    assert!(!running.is_finished(), "the subscription goes on");
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    #[serde(deserialize_with = "order_id")]
    id: u32,
}

/// The id of an order being decoded; panics on 13, as a `Deserialize` implementation with a
/// bug would.
fn order_id<'de, D: serde::Deserializer<'de>>(decoding: D) -> Result<u32, D::Error> {
    let id = u32::deserialize(decoding)?;
    assert_ne!(id, 13, "unlucky order id");
    Ok(id)
}

/// A payload the codec cannot decode goes straight to the dead-letter topic, without calling
/// the handler, and the stream goes on; so does one whose decoding panics.
pub async fn undecodable_payload_dead_lettered(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "undecodable", &["g"]).await;
    let orders = Topic::<Order>::json(name.as_str());
    broker
        .publisher(&Topic::bytes(name.as_str()))
        .publish(&Bytes::from_static(b"{not json"))
        .await
        .expect("publish garbage");
    broker
        .publisher(&Topic::bytes(name.as_str()))
        .publish(&Bytes::from_static(b"{\"id\":13}"))
        .await
        .expect("publish an order whose decoding panics");
    broker
        .publisher(&orders)
        .publish(&Order { id: 7 })
        .await
        .expect("publish order");

    let inbox = Inbox::new();
    let running = broker
        .subscriber(&orders, "g")
        .retry(fast_retry(3))
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(1, harness.patience()).await;
    assert_eq!(received[0].value.id, 7);
    let dead = read_dead_letters(harness, &broker, &name, "g", 2).await;
    let reason_of = |payload: &'static [u8]| {
        let letter = dead
            .iter()
            .find(|letter| letter.value == Bytes::from_static(payload))
            .unwrap_or_else(|| panic!("{payload:?} was not dead-lettered"));
        assert_eq!(letter.metadata.headers.get(dlq::ATTEMPTS), Some("0"));
        letter
            .metadata
            .headers
            .get(dlq::REASON)
            .unwrap_or_default()
            .to_owned()
    };
    let reason = reason_of(b"{not json");
    assert!(reason.contains("JSON"), "reason: {reason}");
    let reason = reason_of(b"{\"id\":13}");
    assert!(reason.contains("unlucky order id"), "reason: {reason}");
    inbox.expect_no_more_than(1, harness.quiet_period()).await;
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// With dead-lettering off, a message that keeps failing stops the subscription with the
/// error, and is still there for the next subscriber.
pub async fn dead_letter_off_stops_subscription(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "nodlq", &["g"]).await);
    publish_texts(&broker.publisher(&topic), "bad", 1).await;
    let policy = RetryPolicy {
        dead_letter: false,
        ..fast_retry(2)
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(policy)
        .at_least_once(|_message: Received<String>| async {
            Err(HandlerError::from("always failing"))
        })
        .await
        .expect("subscribe");
    let outcome = tokio::time::timeout(harness.patience(), running.join())
        .await
        .expect("the subscription must stop by itself");
    let err = outcome.expect_err("the subscription must fail");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    assert!(err.to_string().contains("always failing"), "{err}");

    let inbox = Inbox::new();
    let again = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe again");
    let received = inbox.wait_for(1, harness.patience()).await;
    assert_eq!(
        received[0].value, "bad-0",
        "the failed message was not lost"
    );
    again.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A nacked delivery comes back (with a higher attempt where the broker counts).
pub async fn manual_nack_redelivers(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "nack", &["g"]).await);
    publish_texts(&broker.publisher(&topic), "n", 1).await;
    let mut stream = broker
        .subscriber(&topic, "g")
        .manual()
        .await
        .expect("subscribe");
    let first = next_within(&mut stream, harness.patience()).await;
    let first_id = first.metadata().message_id.clone();
    let first_attempt = first.metadata().attempt;
    first.nack().await.expect("nack");
    let second = next_within(&mut stream, harness.patience()).await;
    assert_eq!(second.value().expect("decode"), "n-0");
    assert_eq!(second.metadata().message_id, first_id);
    if broker.capabilities().delivery_attempt {
        assert!(
            second.metadata().attempt > first_attempt,
            "attempt {:?} after {:?}",
            second.metadata().attempt,
            first_attempt
        );
    }
    second.ack().await.expect("ack");
    stream.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// The dead letters of `group` on `topic`, as that group reads them: exactly `count`.
///
/// A marker published to the dead-letter topic once the subscription is open bounds the wait:
/// once it arrived the topic is being read, so a dead letter missing then is missing (a
/// subscription whose first read is late would otherwise see "none" for lack of looking).
async fn read_dead_letters(
    harness: &dyn Harness,
    broker: &broker_api::Broker,
    topic: &str,
    group: &str,
    count: usize,
) -> Vec<Received<Bytes>> {
    const MARKER: &[u8] = b"read-dead-letters-marker";
    let dead_topic = Topic::bytes(naming::dead_letter_topic(topic, group));
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&dead_topic, group)
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe to the dead-letter topic");
    broker
        .publisher(&dead_topic)
        .publish(&Bytes::from_static(MARKER))
        .await
        .expect("publish the marker");
    inbox.wait_for(count + 1, harness.patience()).await;
    // Exactly `count`: a message dead-lettered more than once would show here.
    inbox
        .expect_no_more_than(count + 1, harness.quiet_period())
        .await;
    running.close().await.expect("close");
    let (markers, dead_letters): (Vec<_>, Vec<_>) = inbox
        .snapshot()
        .into_iter()
        .partition(|received| received.value == MARKER);
    assert_eq!(markers.len(), 1, "the marker arrived once");
    dead_letters
}
