//! The adapter against librdkafka's built-in mock cluster: no Kafka needed.
//!
//! The mock cluster has no CreateTopics API, so topics are created on the mock itself and the
//! backend runs with auto-provisioning off.

mod consuming;
mod publishing;
mod refusals;

use std::time::{Duration, Instant};

use broker_api::{
    Backend, Broker, ConnectOptions, Delivery, ErrorKind, Message, Position, StartFrom,
    SubscribeRequest,
};
use broker_kafka::{KafkaBackend, KafkaConfig};
use broker_testkit::support::next_within;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PATIENCE: Duration = Duration::from_secs(30);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(cluster: &MockCluster<'_, impl rdkafka::client::ClientContext>) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        ..KafkaConfig::default()
    }
}

async fn connect(cluster: &MockCluster<'_, impl rdkafka::client::ClientContext>) -> KafkaBackend {
    connect_with(config(cluster)).await
}

/// Connects with `config` (made from [`config`]), auto-provisioning off.
async fn connect_with(config: KafkaConfig) -> KafkaBackend {
    init_logs();
    KafkaBackend::connect(config, ConnectOptions::default().auto_provision(false))
        .await
        .expect("connect to the mock cluster")
}

fn offset(delivery: &Delivery) -> i64 {
    match delivery.metadata.position {
        Position::Kafka { offset, .. } => offset,
        ref other => panic!("not a Kafka position: {other:?}"),
    }
}

fn receipt_offsets(receipts: &[broker_api::Receipt]) -> Vec<i64> {
    receipts
        .iter()
        .map(|r| match r.position {
            Position::Kafka { offset, .. } => offset,
            ref other => panic!("not a Kafka position: {other:?}"),
        })
        .collect()
}

/// Queues messages `m1` to `m<count>` for `topic`; returns their confirmations, not awaited.
async fn send_unconfirmed(
    backend: &KafkaBackend,
    topic: &str,
    count: usize,
) -> Vec<broker_api::Confirmation> {
    let mut confirmations = Vec::new();
    for i in 1..=count {
        let message = Message::new(format!("m{i}"));
        confirmations.push(backend.send(topic, message).await.expect("queued"));
    }
    confirmations
}

async fn publish(backend: &KafkaBackend, topic: &str, message: Message) -> broker_api::Receipt {
    backend
        .send(topic, message)
        .await
        .expect("queued")
        .await
        .expect("confirmed")
}
