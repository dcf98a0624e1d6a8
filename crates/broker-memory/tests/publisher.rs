//! What a publisher's messages meet as its topic and connection change under it: a deleted
//! topic refuses them and a topic created again receives them, a topic created after the
//! publisher receives them, a closed connection refuses them. Whatever a backend caches per
//! publisher must keep these true.

use std::time::Duration;

use broker_api::{Broker, ConnectOptions, ErrorKind, Topic, TopicSpec};
use broker_memory::{MemoryBackend, MemoryConfig, MemoryInstance};
use broker_testkit::support::next_within;
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(5);

fn broker(auto_provision: bool) -> Broker {
    Broker::new(MemoryBackend::with_instance(
        MemoryInstance::new().into(),
        &MemoryConfig::default(),
        ConnectOptions::default().auto_provision(auto_provision),
    ))
}

/// The first value group `readers` reads from `topic` (from the earliest message kept).
async fn first_value(broker: &Broker, topic: &Topic<String>) -> String {
    let mut stream = broker
        .subscriber(topic, "readers")
        .at_most_once()
        .await
        .expect("subscribed");
    next_within(&mut stream, PATIENCE).await.value
}

#[tokio::test]
async fn a_topic_deleted_and_created_again_receives_the_next_messages() {
    let broker = broker(false);
    let topic = Topic::<String>::text("orders");
    broker
        .ensure_topic(&TopicSpec::new("orders"))
        .await
        .unwrap();
    let publisher = broker.publisher(&topic);
    publisher
        .publish(&"into the old topic".to_owned())
        .await
        .unwrap();

    broker.backend().delete_topic("orders").await.unwrap();
    let gone = publisher.publish(&"nowhere".to_owned()).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");

    broker
        .ensure_topic(&TopicSpec::new("orders"))
        .await
        .unwrap();
    publisher
        .publish(&"into the new topic".to_owned())
        .await
        .unwrap();
    assert_eq!(first_value(&broker, &topic).await, "into the new topic");
}

#[tokio::test]
async fn a_publisher_made_before_its_topic_exists_publishes_once_it_does() {
    let broker = broker(false);
    let topic = Topic::<String>::text("late");
    let publisher = broker.publisher(&topic);
    let missing = publisher
        .publish(&"too early".to_owned())
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");

    broker
        .ensure_topic(&TopicSpec::new("late").group("readers"))
        .await
        .unwrap();
    publisher.publish(&"in time".to_owned()).await.unwrap();
    assert_eq!(first_value(&broker, &topic).await, "in time");
}

#[tokio::test]
async fn a_closed_connection_refuses_what_its_publishers_send() {
    let broker = broker(true);
    let topic = Topic::<String>::text("closing");
    let publisher = broker.publisher(&topic);
    publisher.publish(&"before".to_owned()).await.unwrap();
    broker.close().await.unwrap();
    let closed = publisher.publish(&"after".to_owned()).await.unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::Closed, "{closed}");
}

#[tokio::test]
async fn clones_of_a_publisher_share_its_topic() {
    let broker = broker(true);
    let topic = Topic::<String>::text("shared");
    let mut stream = broker
        .subscriber(&topic, "readers")
        .at_most_once()
        .await
        .unwrap();
    let publisher = broker.publisher(&topic);
    let clone = publisher.clone();
    publisher.publish(&"one".to_owned()).await.unwrap();
    clone.publish(&"two".to_owned()).await.unwrap();
    let values: Vec<_> = (&mut stream)
        .take(2)
        .map(|received| received.unwrap().value)
        .collect()
        .await;
    assert_eq!(values, ["one", "two"]);
}

/// A payload over `memory.max_payload_bytes` is refused with an error naming its topic and the
/// setting; the next one goes through.
#[tokio::test]
async fn an_oversized_payload_is_refused_naming_topic_and_setting() {
    let config = MemoryConfig {
        max_payload_bytes: 8,
        ..MemoryConfig::default()
    };
    let broker = Broker::new(MemoryBackend::with_instance(
        MemoryInstance::new().into(),
        &config,
        ConnectOptions::default(),
    ));
    let topic = Topic::<String>::text("orders");
    let err = broker
        .publisher(&topic)
        .publish(&"nine bytes".to_owned())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let text = err.to_string();
    assert!(text.contains("orders"), "{text}");
    assert!(text.contains("memory.max_payload_bytes"), "{text}");
    broker
        .publisher(&topic)
        .publish(&"ok".to_owned())
        .await
        .unwrap();
    assert_eq!(first_value(&broker, &topic).await, "ok");
}
