//! Publishing and receiving: what goes in comes out, intact, nowhere else, nothing lost.

use std::time::{Duration, SystemTime};

use broker_api::{ErrorKind, Message, Position, Topic};
use bytes::Bytes;

use super::{connect, distinct_values, publish_texts, sorted, text_topic};
use crate::support::{fresh_topic, skip, Inbox};
use crate::Harness;

/// Payload, key, headers, message id, content type and topic arrive as published, and the
/// delivery says where the message sits (where the receipt says, when it does); a header under
/// a wire name is refused.
pub async fn roundtrip_payload_key_headers(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "roundtrip", &["reader"]).await;
    let topic = text_topic(&name);
    let publisher = broker.publisher(&topic);
    let message = publisher
        .message(&"hello, wörld".to_owned())
        .expect("encode")
        .with_key("user-1")
        .with_header("trace-id", "abc-123")
        .with_header("x-empty", "");
    let sent_id = message.id.clone();
    let spoofing = publisher
        .message(&"spoofed".to_owned())
        .expect("encode")
        .with_header("content-type", "application/evil");
    let refused = publisher
        .publish_message(spoofing)
        .await
        .expect_err("a header under a wire name");
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    let receipt = publisher.publish_message(message).await.expect("publish");
    assert_eq!(receipt.message_id, sent_id, "receipt names the message");

    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "reader")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(1, harness.patience()).await;
    let got = &received[0];
    assert_eq!(got.value, "hello, wörld");
    let meta = &got.metadata;
    assert_eq!(&*meta.topic, name.as_str());
    assert_eq!(meta.key.as_deref(), Some("user-1"));
    assert_eq!(meta.headers.get("trace-id"), Some("abc-123"));
    assert_eq!(meta.headers.get("x-empty"), Some(""));
    assert_eq!(meta.message_id.as_ref(), Some(&sent_id));
    assert_eq!(
        meta.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        meta.headers.get("message-id").is_none() && meta.headers.get("content-type").is_none(),
        "wire headers are moved to their fields: {:?}",
        meta.headers
    );
    assert_ne!(
        meta.position,
        Position::Unknown,
        "a delivery says where it sits"
    );
    if receipt.position != Position::Unknown {
        assert!(
            names_same_message(&receipt.position, &meta.position),
            "the receipt's position {:?} and the delivery's {:?} name different messages",
            receipt.position,
            meta.position
        );
    }
    // Every backend knows when a message was published (README, Metadata).
    let published = meta
        .publish_time
        .expect("a delivery carries its publish time");
    let age = SystemTime::now()
        .duration_since(published)
        .unwrap_or(Duration::ZERO);
    assert!(
        age < Duration::from_secs(300),
        "publish time {published:?} is off"
    );
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Whether a receipt's position and a delivery's name the same stored message (a Pub/Sub
/// delivery's ordering key depends on the subscription, its message id does not).
fn names_same_message(receipt: &Position, delivered: &Position) -> bool {
    match (receipt, delivered) {
        (Position::PubSub(receipt), Position::PubSub(delivered)) => {
            receipt.message_id == delivered.message_id
        }
        _ => receipt == delivered,
    }
}

/// Many tasks publishing at once, with many confirmations pending: every message arrives.
pub async fn concurrent_publishers_lose_nothing(harness: &dyn Harness) {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 250;
    let broker = connect(harness).await;
    let name = fresh_topic(&broker, "concurrent", &["all"]).await;
    let topic = text_topic(&name);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let publisher = broker.publisher(&topic);
        tasks.push(tokio::spawn(async move {
            let mut confirmations = Vec::new();
            for i in 0..EACH {
                let value = format!("p{p}-{i}");
                confirmations.push(publisher.send(&value).await.expect("send"));
            }
            futures::future::try_join_all(confirmations)
                .await
                .expect("confirm");
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }

    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "all")
        .max_in_flight(512)
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox
        .wait_until("every message", harness.patience(), |r| {
            r.len() >= PUBLISHERS * EACH && distinct_values(r).len() >= PUBLISHERS * EACH
        })
        .await;
    let expected: Vec<String> = sorted(
        (0..PUBLISHERS)
            .flat_map(|p| (0..EACH).map(move |i| format!("p{p}-{i}")))
            .collect(),
    );
    assert_eq!(distinct_values(&received), expected);
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A subscriber of one topic never sees another topic's messages.
pub async fn topics_are_isolated(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let a = text_topic(&fresh_topic(&broker, "isolated-a", &["g"]).await);
    let b = text_topic(&fresh_topic(&broker, "isolated-b", &["g"]).await);
    publish_texts(&broker.publisher(&a), "a", 5).await;
    publish_texts(&broker.publisher(&b), "b", 5).await;

    let inbox_a = Inbox::new();
    let running = broker
        .subscriber(&a, "g")
        .at_least_once(inbox_a.handler())
        .await
        .expect("subscribe");
    let received = inbox_a.wait_for(5, harness.patience()).await;
    inbox_a.expect_no_more_than(5, harness.quiet_period()).await;
    assert!(
        received
            .iter()
            .all(|r| r.value.starts_with("a-") && &*r.metadata.topic == a.name()),
        "topic a received: {:?}",
        received.iter().map(|r| &r.value).collect::<Vec<_>>()
    );
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// `publish_batch` confirms every message, in order, with distinct ids, and all arrive — also a
/// batch larger than a client's window of unconfirmed publishes.
pub async fn batch_publish(harness: &dyn Harness) {
    const BATCH: usize = 3000;
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "batch", &["g"]).await);
    let values: Vec<String> = (0..BATCH).map(|i| format!("batch-{i}")).collect();
    let receipts = broker
        .publisher(&topic)
        .publish_batch(&values)
        .await
        .expect("batch publish");
    assert_eq!(receipts.len(), values.len());
    let mut ids: Vec<_> = receipts.iter().map(|r| r.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), values.len(), "receipts carry distinct ids");

    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox
        .wait_until("the batch", harness.patience(), |r| {
            r.len() >= BATCH && distinct_values(r).len() >= BATCH
        })
        .await;
    assert_eq!(distinct_values(&received), sorted(values));
    // Receipts come in input order: each value arrived with its receipt's id.
    for message in &received {
        let index: usize = message
            .value
            .strip_prefix("batch-")
            .and_then(|i| i.parse().ok())
            .expect("a batch value");
        assert_eq!(
            message.metadata.message_id.as_ref(),
            Some(&receipts[index].message_id),
            "{} arrived with another receipt's id",
            message.value
        );
    }
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Empty, binary and large payloads arrive byte for byte.
pub async fn empty_binary_and_large_payloads(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = Topic::bytes(fresh_topic(&broker, "payloads", &["g"]).await);
    let limit = broker.capabilities().max_payload_bytes.unwrap_or(1 << 20);
    let large_len = (limit / 2).min(512 * 1024);
    let payloads = [
        Bytes::new(),
        Bytes::from((0..=255u8).collect::<Vec<_>>()),
        Bytes::from((0..large_len).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
    ];
    let publisher = broker.publisher(&topic);
    for (i, payload) in payloads.iter().enumerate() {
        let message = Message::new(payload.clone()).with_key(format!("k{i}"));
        publisher.publish_message(message).await.expect("publish");
    }
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(3, harness.patience()).await;
    for (i, payload) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        let got = received
            .iter()
            .find(|r| r.metadata.key.as_deref() == Some(key.as_str()))
            .unwrap_or_else(|| panic!("payload {i} missing"));
        assert_eq!(got.value.len(), payload.len(), "payload {i} length");
        assert!(got.value == *payload, "payload {i} differs");
    }
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A payload over the broker's limit is refused with a clear error, and nothing is wedged:
/// the next message still goes through.
pub async fn oversized_payload_rejected(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let Some(limit) = broker.capabilities().max_payload_bytes else {
        skip(
            "oversized_payload_rejected",
            "the backend states no payload limit",
        );
        return;
    };
    let topic = Topic::bytes(fresh_topic(&broker, "oversized", &["g"]).await);
    let publisher = broker.publisher(&topic);
    let too_big = Bytes::from(vec![7u8; limit + 1]);
    let err = publisher
        .publish(&too_big)
        .await
        .expect_err("an over-limit payload must be refused");
    assert_eq!(err.kind(), ErrorKind::Rejected, "error: {err}");
    let text = err.to_string();
    assert!(
        text.contains(&(limit + 1).to_string()) && text.contains(&limit.to_string()),
        "the error names the size and the limit: {text}"
    );

    publisher
        .publish(&Bytes::from_static(b"small"))
        .await
        .expect("a normal publish after the refusal");
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(1, harness.patience()).await;
    assert_eq!(received[0].value, Bytes::from_static(b"small"));
    inbox.expect_no_more_than(1, harness.quiet_period()).await;
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}
