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

#[tokio::test]
async fn a_topic_name_that_a_subscriber_would_refuse_is_refused_on_publish() {
    let broker = broker(true);
    for name in ["ab", "goog-events", "1orders"] {
        let topic = Topic::<String>::text(name);
        let err = broker
            .publisher(&topic)
            .publish(&"lost".to_owned())
            .await
            .expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Config, "{name}: {err}");
        assert!(err.to_string().contains("invalid topic name"), "{err}");
    }
}

/// A value that serde refuses to encode when it says "unencodable".
#[derive(Debug, PartialEq)]
struct Sample(String);

impl serde::Serialize for Sample {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == "unencodable" {
            return Err(serde::ser::Error::custom("refused on purpose"));
        }
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Sample {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Sample)
    }
}

#[tokio::test]
async fn a_batch_with_a_value_that_cannot_be_encoded_publishes_none_of_it() {
    let broker = broker(true);
    let topic = Topic::<Sample>::json("samples");
    let publisher = broker.publisher(&topic);
    let batch = ["first", "unencodable", "last"].map(|s| Sample(s.to_owned()));
    let err = publisher.publish_batch(&batch).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("Sample"), "{err}");

    publisher
        .publish(&Sample("after".to_owned()))
        .await
        .expect("published");
    let mut stream = broker
        .subscriber(&topic, "readers")
        .at_most_once()
        .await
        .expect("subscribed");
    let first = next_within(&mut stream, PATIENCE).await;
    assert_eq!(first.value, Sample("after".to_owned()));
}
