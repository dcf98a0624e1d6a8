//! With auto-provisioning off, a dead-letter topic is not created behind the operator's back:
//! dead-lettering to one that was not declared fails, the message stays unacknowledged and the
//! subscription stops with an error naming the topic; once declared, dead letters land in it.

use std::time::Duration;

use broker_api::{Broker, ConnectOptions, ErrorKind, HandlerError, Received, Topic, TopicSpec};
use broker_memory::{MemoryBackend, MemoryConfig, MemoryInstance};

const PATIENCE: Duration = Duration::from_secs(10);

async fn poison_once(broker: &Broker, topic: &Topic<String>) -> broker_api::Result<()> {
    let running = broker
        .subscriber(topic, "g")
        .at_least_once(|_: Received<String>| async {
            Err::<(), _>(HandlerError::permanent("cannot be handled"))
        })
        .await?;
    broker
        .publisher(topic)
        .publish(&"poison".to_owned())
        .await?;
    tokio::time::timeout(PATIENCE, running.join())
        .await
        .expect("the subscription stops")
}

#[tokio::test]
async fn dead_letter_topics_are_not_created_without_auto_provisioning() {
    let instance = std::sync::Arc::new(MemoryInstance::new());
    let backend = MemoryBackend::with_instance(
        instance,
        &MemoryConfig::default(),
        ConnectOptions::default().auto_provision(false),
    );
    let broker = Broker::new(backend);
    broker
        .ensure_topic(&TopicSpec::new("orders").group("g"))
        .await
        .expect("declare the topic");
    let orders = Topic::<String>::text("orders");

    let err = poison_once(&broker, &orders)
        .await
        .expect_err("no dead-letter topic was declared");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    assert!(err.to_string().contains("orders.g.dlq"), "{err}");
    let topics = broker.backend().list_topics().await.expect("topics");
    assert!(
        !topics.iter().any(|name| name.ends_with(".dlq")),
        "{topics:?}"
    );

    // Declared, it takes the dead letter (the message was left unacknowledged: it comes back).
    broker
        .ensure_topic(&TopicSpec::new("orders.g.dlq").group("audit"))
        .await
        .expect("declare the dead-letter topic");
    let running = broker
        .subscriber(&orders, "g")
        .at_least_once(|_: Received<String>| async {
            Err::<(), _>(HandlerError::permanent("cannot be handled"))
        })
        .await
        .expect("subscribe again");
    let mut dead = broker
        .subscriber(&Topic::<String>::text("orders.g.dlq"), "audit")
        .at_most_once()
        .await
        .expect("read the dead letters");
    let letter = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut dead))
        .await
        .expect("a dead letter")
        .expect("the stream goes on")
        .expect("decoded");
    assert_eq!(letter.value, "poison");
    running.close().await.expect("close");
}
