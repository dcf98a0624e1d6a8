//! Retention: a topic drops old messages only once every group acknowledged them, and keeps
//! the latest `retained_messages` for groups that join later.

use std::time::Duration;

use broker_api::{Backend, Delivery, Message, Position, SubscribeRequest, TopicSpec};
use broker_memory::{MemoryBackend, MemoryConfig, MemoryInstance};
use broker_testkit::support::next_within;

/// More than two of the log's segments (4 096 records each), so that one can be dropped.
const PUBLISHED: u64 = 3 * 4096 + 100;
const RETAINED: usize = 10;
const PATIENCE: Duration = Duration::from_secs(5);

/// A backend retaining [`RETAINED`] messages, with topic `events` declared for `groups`.
async fn backend(groups: &[&str]) -> MemoryBackend {
    let config = MemoryConfig {
        retained_messages: RETAINED,
        ..MemoryConfig::default()
    };
    let backend =
        MemoryBackend::with_instance(MemoryInstance::new().into(), &config, Default::default());
    let spec = groups
        .iter()
        .fold(TopicSpec::new("events"), |spec, group| spec.group(*group));
    backend.ensure_topic(&spec).await.expect("topic");
    backend
}

/// Publishes the `round`th batch of [`PUBLISHED`] messages, each payload its offset.
async fn publish_all(backend: &MemoryBackend, round: u64) {
    for i in round * PUBLISHED..(round + 1) * PUBLISHED {
        let confirmation = backend
            .send("events", Message::new(i.to_string()))
            .await
            .expect("send");
        confirmation.await.expect("confirmed");
    }
}

fn offset(delivery: &Delivery) -> u64 {
    match delivery.metadata.position {
        Position::Memory { offset } => offset,
        ref other => panic!("expected a memory position, got {other:?}"),
    }
}

/// Reads `count` messages of `group` in order, acknowledging each; returns the first offset.
async fn drain(backend: &MemoryBackend, group: &str, count: u64) -> u64 {
    let mut stream = backend
        .subscribe(SubscribeRequest::new("events", group))
        .await
        .expect("subscribe");
    let first = next_within(&mut stream, PATIENCE).await;
    let start = offset(&first);
    first.ack().await.expect("ack");
    for expected in start + 1..start + count {
        let delivery = next_within(&mut stream, PATIENCE).await;
        assert_eq!(offset(&delivery), expected);
        assert_eq!(delivery.payload, expected.to_string());
        delivery.ack().await.expect("ack");
    }
    stream.close().await.expect("close");
    start
}

#[tokio::test]
async fn a_group_that_has_not_read_keeps_every_message() {
    let backend = backend(&["fast", "slow"]).await;
    publish_all(&backend, 0).await;
    drain(&backend, "fast", PUBLISHED).await;
    // More appends after "fast" acknowledged everything: retention looks again, and must
    // still keep what "slow" has not read.
    publish_all(&backend, 1).await;
    assert_eq!(drain(&backend, "slow", 2 * PUBLISHED).await, 0);
}

#[tokio::test]
async fn acknowledged_messages_are_dropped_and_a_late_group_starts_at_the_earliest_kept() {
    let backend = backend(&["fast"]).await;
    publish_all(&backend, 0).await;
    drain(&backend, "fast", PUBLISHED).await;
    publish_all(&backend, 1).await;
    let total = 2 * PUBLISHED;
    let mut late = backend
        .subscribe(SubscribeRequest::new("events", "late"))
        .await
        .expect("subscribe");
    let first = offset(&next_within(&mut late, PATIENCE).await);
    assert!(first > 0, "acknowledged segments were dropped");
    assert!(
        total - first >= RETAINED as u64,
        "at least the retained messages are kept (first kept {first} of {total})"
    );
    late.close().await.expect("close");
}

#[tokio::test]
async fn an_unacknowledged_delivery_keeps_its_segment() {
    let backend = backend(&["g"]).await;
    publish_all(&backend, 0).await;
    let mut stream = backend
        .subscribe(SubscribeRequest::new("events", "g").max_in_flight(PUBLISHED as usize))
        .await
        .expect("subscribe");
    // The first message is held unsettled while every later one is acknowledged.
    let held = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&held), 0);
    for _ in 1..PUBLISHED {
        next_within(&mut stream, PATIENCE)
            .await
            .ack()
            .await
            .expect("ack");
    }
    publish_all(&backend, 1).await;
    // Rejected now: it must be delivered again, so its segment was kept.
    held.nack().await.expect("nack");
    let again = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&again), 0);
    assert_eq!(again.payload, "0");
    again.ack().await.expect("ack");
    stream.close().await.expect("close");
}

#[tokio::test]
async fn a_subscription_that_keeps_running_lets_acknowledged_segments_go() {
    use futures::StreamExt;

    let backend = backend(&["fast"]).await;
    publish_all(&backend, 0).await;
    let mut stream = backend
        .subscribe(SubscribeRequest::new("events", "fast"))
        .await
        .expect("subscribe");
    for expected in 0..PUBLISHED {
        let delivery = next_within(&mut stream, PATIENCE).await;
        assert_eq!(offset(&delivery), expected);
        delivery.ack().await.expect("ack");
    }
    // Nothing more to read: the stream waits, open, with everything acknowledged.
    let idle = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(idle.is_err(), "no message is left to deliver");
    publish_all(&backend, 1).await;
    let mut late = backend
        .subscribe(SubscribeRequest::new("events", "late"))
        .await
        .expect("subscribe");
    let first = offset(&next_within(&mut late, PATIENCE).await);
    assert!(
        first > 0,
        "acknowledged segments were dropped while the subscription ran"
    );
    late.close().await.expect("close");
    stream.close().await.expect("close");
}

#[tokio::test]
async fn a_member_that_stops_reading_after_an_ack_holds_no_segment() {
    let backend = backend(&["g"]).await;
    publish_all(&backend, 0).await;
    // One message taken and acknowledged, then the member stays without reading on.
    let mut idle = backend
        .subscribe(SubscribeRequest::new("events", "g").max_in_flight(1))
        .await
        .expect("subscribe");
    let first = next_within(&mut idle, PATIENCE).await;
    assert_eq!(offset(&first), 0);
    first.ack().await.expect("ack");
    // Another member of the group reads and acknowledges the rest.
    assert_eq!(drain(&backend, "g", PUBLISHED - 1).await, 1);
    publish_all(&backend, 1).await;
    let mut late = backend
        .subscribe(SubscribeRequest::new("events", "late"))
        .await
        .expect("subscribe");
    let first_kept = offset(&next_within(&mut late, PATIENCE).await);
    assert!(
        first_kept > 0,
        "the idle member's acknowledgement kept every segment"
    );
    late.close().await.expect("close");
    idle.close().await.expect("close");
}
