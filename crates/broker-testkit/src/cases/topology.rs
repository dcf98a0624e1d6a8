//! Topology: topics that do not exist are refused, not created behind the user's back;
//! deleted topics are gone.

use std::time::{Duration, Instant};

use broker_api::{ErrorKind, Message, SubscribeRequest};

use super::{connect, publish_texts, text_topic};
use crate::support::{fresh_topic, next_within, send_confirmed, skip, unique};
use crate::Harness;

/// How soon a publish to a missing topic must fail: well before any broker's delivery
/// timeout, which is what a publish that waited for the topic to appear would take.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// With auto-provisioning off, a topic nobody created is a `NotFound` error naming it, for
/// publish (within seconds, not after a delivery timeout) and subscribe alike, and the attempt
/// does not create it; topics that exist still work through the same connection.
pub async fn missing_topic_is_not_found(harness: &dyn Harness) {
    let Some(strict) = harness.connect_without_provisioning().await else {
        skip(
            "missing_topic_is_not_found",
            "the harness cannot connect without auto-provisioning",
        );
        return;
    };
    let strict = strict.unwrap_or_else(|e| panic!("cannot connect without auto-provisioning: {e}"));
    let backend = strict.backend();
    let missing = unique("missing");

    let started = Instant::now();
    // With a key, so that backends that publish keyed messages apart (Pub/Sub's ordering
    // keys) are refused on that path too.
    let err = send_confirmed(backend.as_ref(), &missing, Message::new("x").with_key("k"))
        .await
        .expect_err("publishing to a missing topic");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&missing),
        "{err} does not name {missing}"
    );
    assert!(
        started.elapsed() < REFUSED_WITHIN,
        "publishing to a missing topic took {:?} to fail",
        started.elapsed()
    );
    let Err(err) = backend
        .subscribe(SubscribeRequest::new(&missing, "g"))
        .await
    else {
        panic!("subscribing to a missing topic must fail");
    };
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&missing),
        "{err} does not name {missing}"
    );
    if strict.capabilities().list_topics {
        let topics = backend.list_topics().await.expect("list");
        assert!(!topics.contains(&missing), "{missing} was created");
    }

    let provisioning = connect(harness).await;
    let existing = fresh_topic(&provisioning, "existing", &["g"]).await;
    send_confirmed(backend.as_ref(), &existing, Message::new("still works"))
        .await
        .expect("publishing to an existing topic");
    let mut stream = backend
        .subscribe(SubscribeRequest::new(&existing, "g"))
        .await
        .expect("subscribing to an existing topic's declared group");
    let delivery = next_within(&mut stream, harness.patience()).await;
    assert_eq!(&delivery.payload[..], b"still works");
    delivery.ack().await.expect("ack");
    stream.close().await.expect("close stream");
    strict.close().await.expect("close strict broker");
    provisioning.close().await.expect("close broker");
}

/// Deleting a topic removes it (and its groups); deleting one that does not exist is a
/// `NotFound` error naming it, on every broker alike.
pub async fn delete_topic_removes_it(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let capabilities = broker.capabilities();
    if !capabilities.delete_topic {
        skip(
            "delete_topic_removes_it",
            "the backend cannot delete topics",
        );
        return;
    }
    let backend = broker.backend();
    let missing = unique("missing");
    let err = backend
        .delete_topic(&missing)
        .await
        .expect_err("deleting a topic that does not exist");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&missing),
        "{err} does not name {missing}"
    );

    let name = fresh_topic(&broker, "deleted", &["g"]).await;
    publish_texts(&broker.publisher(&text_topic(&name)), "m", 3).await;
    backend.delete_topic(&name).await.expect("delete");
    if capabilities.list_topics {
        let deadline = tokio::time::Instant::now() + harness.patience();
        while backend.list_topics().await.expect("list").contains(&name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} still listed after its deletion"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    broker.close().await.expect("close broker");
}
