//! Consuming: records other programs wrote, and members joining and leaving a group mid-stream.

use std::time::{Duration, Instant};

use broker_api::{Backend, Message, SubscribeRequest, TopicSpec};
use broker_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker_kafka::rdkafka::ClientConfig;
use broker_testkit::support::{run_case, unique};
use futures::StreamExt;

use super::{backend, shared};

/// A record written by another program (no `message-id` or `content-type` header, a binary
/// header value) is delivered, with what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_other_programs_are_delivered() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("foreign_records", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("foreign");
        backend.ensure_topic(&TopicSpec::new(&topic)).await.unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &harness.live.address)
            .create()
            .unwrap();
        let headers = broker_kafka::rdkafka::message::OwnedHeaders::new().insert(
            broker_kafka::rdkafka::message::Header {
                key: "origin",
                value: Some(&b"kcat\xff"[..]),
            },
        );
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .key("k1")
                    .payload("from elsewhere")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("delivered in time")
            .unwrap()
            .unwrap();
        assert_eq!(&delivery.payload[..], b"from elsewhere");
        assert_eq!(delivery.metadata.key.as_deref(), Some("k1"));
        assert_eq!(delivery.metadata.message_id, None);
        assert_eq!(delivery.metadata.content_type, None);
        assert_eq!(
            delivery.metadata.headers.get("origin"),
            Some("kcat\u{fffd}")
        );
        assert!(delivery.metadata.publish_time.is_some());
        delivery.ack().await.unwrap();
        stream.close().await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// A member at its read limit (its one slot taken by a delivery it keeps, its stream not read)
/// still answers a rebalance: a member joining its group gets its share of the partitions
/// within seconds, not after `max.poll.interval.ms` (5 minutes) took the first one out of the
/// group; the first reads on from where it stopped once it settles; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_its_limit_lets_the_group_rebalance() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("member_at_limit", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("limit");
        backend
            .ensure_topic(&TopicSpec::new(&topic).partitions(2))
            .await
            .unwrap();
        let total = 40;
        let mut confirmations = Vec::new();
        for i in 0..total {
            let message = Message::new(format!("m{i}")).with_key(format!("k{i}"));
            confirmations.push(backend.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();

        // A group of its own: members of other cases joining or leaving one they share would
        // rebalance it too.
        let group = unique("g");
        let mut first = backend
            .subscribe(SubscribeRequest::new(&topic, &group).max_in_flight(1))
            .await
            .unwrap();
        let held = tokio::time::timeout(Duration::from_secs(60), first.next())
            .await
            .expect("delivered in time")
            .unwrap()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(String::from_utf8(held.payload.to_vec()).unwrap());
        // From here the first stream is not read for a while, then read in vain (its one slot
        // is taken) until the second member has its share.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut second = backend
            .subscribe(SubscribeRequest::new(&topic, &group))
            .await
            .unwrap();
        let joined = Instant::now();
        let delivery = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::select! {
                item = first.next() => panic!("delivered past max_in_flight: {item:?}"),
                item = second.next() => item,
            }
        })
        .await
        .expect("the joining member got nothing in 30 s: the rebalance waited for the member at its limit")
        .unwrap()
        .unwrap();
        eprintln!("the joining member got its first message after {:?}", joined.elapsed());
        seen.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
        delivery.ack().await.unwrap();
        // Should the held delivery's partition be the one that moved, its ack fails: the
        // second member reads it again.
        let held_moved = !held.is_live();
        let acked = held.ack().await;
        assert_eq!(acked.is_err(), held_moved, "{acked:?}");

        let mut read_by_first = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let (delivery, from_first) = tokio::time::timeout(left, async {
                tokio::select! {
                    Some(item) = first.next() => (item, true),
                    Some(item) = second.next() => (item, false),
                }
            })
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} messages arrived", seen.len()));
            let delivery = delivery.unwrap();
            read_by_first += usize::from(from_first);
            seen.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        assert!(
            read_by_first > 0,
            "the first member read nothing after it settled its delivery"
        );
        first.close().await.unwrap();
        second.close().await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Two members of one group on a 4-partition topic, one after the other: when the first leaves
/// mid-stream with deliveries unacknowledged, the second gets them and everything else;
/// what the first acknowledged before its first unacknowledged delivery of each partition was
/// committed and does not come again; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_mid_stream_loses_nothing() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("member_leaves", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("leave");
        backend
            .ensure_topic(&TopicSpec::new(&topic).partitions(4))
            .await
            .unwrap();
        let total = 200;
        let mut confirmations = Vec::new();
        for i in 0..total {
            let message = Message::new(format!("m{i}")).with_key(format!("k{}", i % 16));
            confirmations.push(backend.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();

        // The first member takes some messages, acknowledges half, then leaves.
        let mut first = backend
            .subscribe(SubscribeRequest::new(&topic, "g").max_in_flight(20))
            .await
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        // (partition, offset, acknowledged) of what the first member read.
        let mut first_read = Vec::new();
        for i in 0..20 {
            let delivery = tokio::time::timeout(Duration::from_secs(60), first.next())
                .await
                .expect("delivered in time")
                .unwrap()
                .unwrap();
            let (partition, offset) = kafka_position(&delivery);
            first_read.push((partition, offset, i % 2 == 0));
            if i % 2 == 0 {
                seen.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
                delivery.ack().await.unwrap();
            }
        }
        first.close().await.unwrap();
        // Each partition is read in offset order: its acknowledged deliveries before its first
        // unacknowledged one are the prefix close commits.
        first_read.sort_unstable();
        let mut committed = std::collections::BTreeSet::new();
        let mut stopped = std::collections::BTreeSet::new();
        for (partition, offset, acknowledged) in first_read {
            if !acknowledged {
                stopped.insert(partition);
            } else if !stopped.contains(&partition) {
                committed.insert((partition, offset));
            }
        }
        assert!(
            !committed.is_empty(),
            "the first member committed nothing: the case tests nothing"
        );

        // The second member gets everything that was not acknowledged.
        let mut second = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(left, second.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {total} messages arrived", seen.len()))
                .unwrap()
                .unwrap();
            let position = kafka_position(&delivery);
            assert!(
                !committed.contains(&position),
                "committed message {position:?} was delivered again"
            );
            seen.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        second.close().await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

fn kafka_position(delivery: &broker_api::Delivery) -> (i32, i64) {
    match delivery.metadata.position {
        broker_api::Position::Kafka { partition, offset } => (partition, offset),
        ref other => panic!("not a Kafka position: {other:?}"),
    }
}
