//! Topics: created, listed and deleted; provisioned again after someone deleted them. (A
//! missing topic without auto-provisioning is the conformance suite's
//! `missing_topic_is_not_found`.)

use std::time::{Duration, Instant};

use broker_api::{Backend, ConnectOptions, Message, Position, TopicSpec};
use broker_kafka::{KafkaBackend, KafkaConfig};
use broker_testkit::support::{run_case, unique};

use super::{backend, shared};

/// Topics are created with the requested partitions, listed and deleted; keys spread over the
/// partitions and the receipt says where each message went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_listed_and_deleted_with_partitions() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("topics_with_partitions", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("parts");
        backend
            .ensure_topic(&TopicSpec::new(&topic).partitions(4))
            .await
            .unwrap();
        // Idempotent.
        backend
            .ensure_topic(&TopicSpec::new(&topic).partitions(4))
            .await
            .unwrap();
        assert!(backend.list_topics().await.unwrap().contains(&topic));
        let mut partitions = std::collections::BTreeSet::new();
        for i in 0..40 {
            let receipt = backend
                .send(&topic, Message::new("x").with_key(format!("key-{i}")))
                .await
                .unwrap()
                .await
                .unwrap();
            match receipt.position {
                Position::Kafka { partition, offset } => {
                    assert!((0..4).contains(&partition) && offset >= 0);
                    partitions.insert(partition);
                }
                other => panic!("not a Kafka position: {other:?}"),
            }
        }
        assert!(partitions.len() > 1, "40 keys all went to {partitions:?}");
        backend.delete_topic(&topic).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while backend.list_topics().await.unwrap().contains(&topic) {
            assert!(Instant::now() < deadline, "topic {topic} still listed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        backend.close().await.unwrap();
    })
    .await;
}

/// Publishing to a topic deleted behind the backend's back resumes by itself (auto-provisioning
/// on): a message the broker answers "unknown topic", or that librdkafka refuses to queue once
/// its metadata says so, makes the backend forget the topic, and a later publish creates it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_behind_the_back_is_provisioned_again() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "a_topic_deleted_behind_the_back_is_provisioned_again",
        async {
            let config = KafkaConfig {
                bootstrap_servers: harness.live.address.clone(),
                // A topic the cluster no longer reports is taken as gone within a second.
                properties: [
                    ("topic.metadata.refresh.interval.ms", "500"),
                    ("topic.metadata.propagation.max.ms", "1000"),
                ]
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
                ..KafkaConfig::default()
            };
            let publishing = KafkaBackend::connect(config, ConnectOptions::default())
                .await
                .unwrap();
            let topic = unique("redeleted");
            publishing
                .send(&topic, Message::new("before"))
                .await
                .unwrap()
                .await
                .expect("published before the deletion");
            let deleting = backend(&harness.live.address, true).await.unwrap();
            deleting.delete_topic(&topic).await.unwrap();
            // A pause between publishes, as a service has (on this broker librdkafka had not
            // marked the topic unknown by then: the first publish is answered by the broker).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut refused = Vec::new();
            loop {
                let published = match publishing.send(&topic, Message::new("after")).await {
                    Ok(confirmation) => confirmation.await,
                    Err(e) => Err(e),
                };
                match published {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => refused.push(e.to_string()),
                    Err(e) => panic!("still refused after 30 s: {e} (before: {refused:?})"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(!refused.is_empty(), "the deletion went unnoticed");
            deleting.delete_topic(&topic).await.unwrap();
            publishing.close().await.unwrap();
            deleting.close().await.unwrap();
        },
    )
    .await;
}
