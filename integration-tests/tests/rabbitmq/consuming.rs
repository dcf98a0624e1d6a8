//! Consuming: prefetch, the in-flight bound, foreign messages, redeliveries and key order.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use broker_api::{Broker, SubscribeRequest};
use broker_rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use broker_rabbitmq::lapin::{BasicProperties, Connection, ConnectionProperties};
use broker_testkit::support::{fresh_topic, next_within, run_case, Inbox};
use broker_testkit::Harness;
use futures::StreamExt;

use crate::support::{backend_with, close_all_connections, unacknowledged};
use crate::{exclusive, shared, RabbitMq};

/// Connects with `rabbitmq.prefetch` far above the `max_in_flight` of the cases it runs.
struct LargePrefetch(RabbitMq);

#[async_trait]
impl Harness for LargePrefetch {
    async fn connect(&self) -> broker_api::Result<Broker> {
        let backend = backend_with(&self.0.live.address, true, |config| {
            config.prefetch = Some(1000);
        })
        .await?;
        Ok(Broker::new(backend))
    }

    fn patience(&self) -> Duration {
        self.0.patience()
    }
}

/// `rabbitmq.prefetch` above a subscription's `max_in_flight` does not lift the bound: RabbitMQ
/// would send that many ahead, each an unsettled delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_above_max_in_flight_keeps_the_bound() {
    let Some(harness) = shared().await else {
        return;
    };
    let harness = LargePrefetch(harness);
    run_case(
        "prefetch_above_max_in_flight_keeps_the_bound",
        broker_testkit::cases::bounded_in_flight(&harness),
    )
    .await;
}

/// Deliveries the client received before the connection dropped are not handed out once it
/// is gone: RabbitMQ gives them back, and an at-most-once stream would yield them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_yields_nothing_twice_across_a_dropped_connection() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("at_most_once_across_a_dropped_connection", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "amo-dropped", &["g"]).await);
        let publisher = broker.publisher(&topic);
        let values: Vec<String> = (0..300).map(|i| format!("a-{i}")).collect();
        publisher.publish_batch(&values).await.expect("published");
        let mut stream = broker
            .subscriber(&topic, "g")
            .max_in_flight(256)
            .at_most_once()
            .await
            .expect("subscribe");
        let mut seen = std::collections::HashMap::<String, u32>::new();
        for _ in 0..10 {
            let value = next_within(&mut stream, harness.patience()).await.value;
            *seen.entry(value).or_default() += 1;
        }
        // Let the client buffer what the prefetch allows, then drop the connection under it.
        // RabbitMQ's queue statistics lag (every 5 s by default): wait for them to show it.
        let queue = format!("{}.g", topic.name());
        let looking = Instant::now();
        while unacknowledged(&queue).await == 0 {
            assert!(
                looking.elapsed() < Duration::from_secs(20),
                "nothing was sent ahead to the client: the case tests nothing"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        close_all_connections().await;
        let deadline = Instant::now() + harness.patience() * 2;
        while seen.len() < values.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} values seen",
                seen.len(),
                values.len()
            );
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Ok(received))) => *seen.entry(received.value).or_default() += 1,
                Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
                Ok(None) => panic!("the stream ended"),
                Err(_) => {}
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "yielded twice: {twice:?}");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// After a dropped connection the stream still holds at most `max_in_flight` unsettled
/// deliveries: those of the old channel count until they are settled (an ack fails, saying
/// that RabbitMQ delivers the message again), although the new channel's prefetch would let as many more in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bound_holds_across_a_dropped_connection() {
    const LIMIT: usize = 5;
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("in_flight_bound_across_a_dropped_connection", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "bound-dropped", &["g"]).await;
        let values: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
        broker
            .publisher(&broker_api::Topic::text(name.as_str()))
            .publish_batch(&values)
            .await
            .expect("published");
        let mut stream = broker
            .backend()
            .subscribe(SubscribeRequest::new(&name, "g").max_in_flight(LIMIT))
            .await
            .expect("subscribe");
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            held.push(next_within(&mut stream, harness.patience()).await);
        }
        close_all_connections().await;
        let extra = tokio::time::timeout(harness.quiet_period() * 2, stream.next()).await;
        assert!(
            extra.is_err(),
            "a delivery beyond max_in_flight = {LIMIT} arrived after the reconnect"
        );
        // Acknowledging them on the dead channel cannot count; it frees their slots.
        for delivery in held {
            assert!(!delivery.is_live());
            let refused = delivery
                .ack()
                .await
                .expect_err("an ack on a closed channel");
            assert_eq!(
                refused.kind(),
                broker_api::ErrorKind::Connection,
                "{refused}"
            );
            assert!(
                refused.to_string().contains("delivers it again"),
                "{refused}"
            );
        }
        let mut redelivered = Vec::new();
        for _ in 0..LIMIT {
            redelivered.push(next_within(&mut stream, harness.patience()).await);
        }
        for delivery in redelivered {
            delivery.ack().await.expect("ack");
        }
        stream.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// A message published by another AMQP program, without `message_id` or any property, is
/// delivered with `message_id: None`, its routing key as key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_message_without_id_is_delivered() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("foreign_message_without_id_is_delivered", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "foreign", &["g"]).await;

        let raw = Connection::connect(&harness.live.address, ConnectionProperties::default())
            .await
            .expect("raw lapin connection");
        let channel = raw.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = channel
            .basic_publish(
                name.as_str().into(),
                "order-42".into(),
                BasicPublishOptions::default(),
                b"from elsewhere",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        raw.close(200, "done".into()).await.expect("close raw");

        let mut stream = broker
            .subscriber(&broker_api::Topic::text(name.as_str()), "g")
            .manual()
            .await
            .expect("subscribe");
        let incoming = tokio::time::timeout(harness.patience(), stream.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("a delivery");
        assert_eq!(incoming.value().expect("text"), "from elsewhere");
        let meta = incoming.metadata();
        assert_eq!(meta.message_id, None);
        assert_eq!(meta.key.as_deref(), Some("order-42"));
        assert_eq!(meta.content_type, None);
        assert_eq!(meta.publish_time, None);
        assert_eq!(meta.attempt, Some(1));
        assert_eq!(&*meta.topic, name.as_str());
        match &meta.position {
            broker_api::Position::Amqp(amqp) => {
                assert_eq!(amqp.exchange, name);
                assert_eq!(amqp.routing_key, "order-42");
                assert!(!amqp.redelivered);
            }
            other => panic!("expected an AMQP position, got {other:?}"),
        }
        incoming.ack().await.expect("ack");
        stream.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// Closing a concurrent subscription whose handler outlives the shutdown timeout gives its
/// messages back to the queue in their order: the one running first, then those waiting
/// behind it for their key, so that the next consumer handles the key in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_gives_a_key_back_in_order() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("closing_gives_a_key_back_in_order", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "keyback", &["g"]).await);
        let publisher = broker.publisher(&topic);
        for value in ["a", "b", "c"] {
            let message = publisher
                .message(&value.to_owned())
                .expect("encode")
                .with_key("k");
            publisher.publish_message(message).await.expect("publish");
        }
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let running = broker
            .subscriber(&topic, "g")
            .concurrency(4)
            .shutdown_timeout(Duration::from_millis(200))
            .at_least_once({
                let started = started.clone();
                move |message: broker_api::Received<String>| {
                    let started = started.clone();
                    async move {
                        if message.value == "a" {
                            started.notify_one();
                            // Longer than the shutdown timeout: abandoned at close.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        broker_api::HandlerResult::Ok(())
                    }
                }
            })
            .await
            .expect("subscribe");
        tokio::time::timeout(harness.patience(), started.notified())
            .await
            .expect("the first message's handler started");
        running.close().await.expect("close");

        let inbox = Inbox::new();
        let next = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe again");
        let received = inbox.wait_for(3, harness.patience()).await;
        let order: Vec<&str> = received.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(
            order[..3],
            ["a", "b", "c"],
            "the key came back out of order"
        );
        next.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// A stream dropped without `close` while the application still holds one of its deliveries
/// gives the key back in order: its channel closes (every unacknowledged message back to the
/// queue) before its consumer goes, whose cancel would otherwise make the next member of the
/// group (single active consumer) receive later messages first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_gives_a_key_back_in_order() {
    const MESSAGES: usize = 12;
    let Some(harness) = shared().await else {
        return;
    };
    run_case("a_dropped_stream_gives_a_key_back_in_order", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "dropped", &["g"]).await);
        let publisher = broker.publisher(&topic);
        for value in 0..MESSAGES {
            let message = publisher
                .message(&value.to_string())
                .expect("encode")
                .with_key("k");
            publisher.publish_message(message).await.expect("publish");
        }
        let backend = broker.backend();
        let mut first = backend
            .subscribe(SubscribeRequest::new(topic.name(), "g").max_in_flight(4))
            .await
            .expect("subscribe");
        let held = next_within(&mut first, harness.patience()).await;
        assert_eq!(&held.payload[..], b"0");
        drop(first);
        // Let the dropped consumer's channel close, or its cancel reach RabbitMQ.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut next = backend
            .subscribe(SubscribeRequest::new(topic.name(), "g").max_in_flight(4))
            .await
            .expect("subscribe again");
        let after = next_within(&mut next, harness.patience()).await;
        drop(held);
        assert_eq!(
            String::from_utf8_lossy(&after.payload),
            "0",
            "the next member received a later message of the key first"
        );
        after.ack().await.expect("ack");
        next.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}
