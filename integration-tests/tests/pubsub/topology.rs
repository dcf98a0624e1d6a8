//! Topology: missing, listed, deleted and vanished topics, subscriptions without ordering.

use std::time::{Duration, Instant};

use broker_api::{Backend, ErrorKind, Message, SubscribeRequest, TopicSpec};
use broker_testkit::support::{next_within, run_case, send_confirmed, unique, CapturedLogs};
use broker_testkit::Harness;
use futures::StreamExt;

use crate::shared;
use crate::support::{backend, backend_cleanup, subscription_admin, topic_admin, PROJECT};

/// With auto-provisioning off, a publish with an ordering key that failed because the topic
/// was missing does not wedge the key: once someone else creates the topic, the key publishes.
/// A missing subscription of an existing topic is `NotFound`. (A missing topic itself is the
/// conformance suite's `missing_topic_is_not_found`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keyed_publish_does_not_wedge_its_key() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("failed_keyed_publish_does_not_wedge_its_key", async {
        let backend = backend(&harness.live.address, false).await.unwrap();
        let topic = unique("missing");
        let err = send_confirmed(&backend, &topic, Message::new("x").with_key("k"))
            .await
            .expect_err("publish to a missing topic");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

        topic_admin(&harness.live.address)
            .await
            .create_topic()
            .set_name(format!("projects/{PROJECT}/topics/{topic}"))
            .send()
            .await
            .unwrap();
        send_confirmed(&backend, &topic, Message::new("y").with_key("k"))
            .await
            .expect("the key is not wedged by the earlier failure");
        let err = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .err()
            .expect("subscribe to a missing subscription");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        backend.close().await.unwrap();
        backend_cleanup(&harness.live.address, &topic).await;
    })
    .await;
}

/// Topics are listed and deleted together with their subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_listed_and_deleted_with_their_subscriptions() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("topics_are_listed_and_deleted", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("listed");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("a").group("b"))
            .await
            .unwrap();
        assert!(backend.list_topics().await.unwrap().contains(&topic));
        let subscriptions = subscription_admin(&harness.live.address).await;
        // A declared group keeps its messages however long no member runs: its subscription
        // never expires (unset, the service deletes it after 31 idle days).
        let declared = subscriptions
            .get_subscription()
            .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.a"))
            .send()
            .await
            .expect("the group's subscription");
        let expiry = declared.expiration_policy.expect("an expiration policy");
        assert_eq!(expiry.ttl, None, "the subscription expires: {expiry:?}");
        backend.delete_topic(&topic).await.unwrap();
        assert!(!backend.list_topics().await.unwrap().contains(&topic));
        for group in ["a", "b"] {
            assert_deleted(&subscriptions, &topic, group).await;
        }
        let err = backend
            .delete_topic(&topic)
            .await
            .expect_err("deleted twice");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        // Publishing again provisions the topic again.
        send_confirmed(&backend, &topic, Message::new("again"))
            .await
            .unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// A topic deleted under a running subscription ends it, saying so, and its subscription stays
/// deleted (the stream does not create it again as after an emulator restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_its_running_subscription() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("deleting_a_topic_ends_its_subscription", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("deleted-under");
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        send_confirmed(&backend, &topic, Message::new("before"))
            .await
            .unwrap();
        let first = next_within(&mut stream, harness.patience()).await;
        first.ack().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the stream ends after its topic was deleted");
        match ended {
            Some(Err(err)) => assert!(err.to_string().contains("deleted with its topic"), "{err}"),
            None => {}
            Some(Ok(delivery)) => panic!("a delivery after the deletion: {delivery:?}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let subscriptions = subscription_admin(&harness.live.address).await;
        assert_deleted(&subscriptions, &topic, "g").await;
        backend.close().await.unwrap();
    })
    .await;
}

/// The topic and subscription vanish under a running subscription (what an emulator restart
/// does): publishing re-creates them, the subscription reopens its streaming pull, and
/// messages published after that flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_topic_and_subscription_are_recreated() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("vanished_topic_and_subscription", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("vanish");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        send_confirmed(&backend, &topic, Message::new("before"))
            .await
            .unwrap();
        let delivery = next_within(&mut stream, harness.patience()).await;
        delivery.ack().await.unwrap();

        let subscriptions = subscription_admin(&harness.live.address).await;
        subscriptions
            .delete_subscription()
            .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.g"))
            .send()
            .await
            .unwrap();
        topic_admin(&harness.live.address)
            .await
            .delete_topic()
            .set_topic(format!("projects/{PROJECT}/topics/{topic}"))
            .send()
            .await
            .unwrap();

        // A publish that finds the topic gone re-creates it and the known subscription; the
        // subscription's own pull re-creates both too, concurrently. Pub/Sub keeps a message
        // only for subscriptions that exist when it is published, so a publish landing between
        // the two re-creations reaches nobody: publish until one gets through.
        let deadline = Instant::now() + harness.patience();
        let delivery = loop {
            send_confirmed(&backend, &topic, Message::new("after"))
                .await
                .expect("publish after the topic vanished");
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(next) => break next.expect("the stream is open").expect("a delivery"),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "no delivery after the topic and subscription were re-created"
                ),
            }
        };
        assert_eq!(&delivery.payload[..], b"after");
        delivery.ack().await.unwrap();
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// A subscription that exists without message ordering (created by another program: ordering
/// cannot be changed afterwards) is used, with a warning naming it, since same-key order is not
/// kept there; one this backend created is not warned about.
#[tokio::test]
async fn existing_subscription_without_ordering_is_warned_about() {
    let Some(harness) = shared().await else {
        return;
    };
    // Current-thread runtime: everything the case runs logs on this thread.
    let logs = CapturedLogs::default();
    let _capture = tracing::subscriber::set_default(logs.subscriber());
    run_case("existing_subscription_without_ordering", async {
        let endpoint = &harness.live.address;
        let topic = unique("unordered");
        create_unordered(endpoint, &topic, "g").await;
        let backend = backend(endpoint, true).await.unwrap();
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        stream.close().await.unwrap();
        let warned = |name: &str| {
            logs.lines()
                .iter()
                .any(|line| line.contains("without message ordering") && line.contains(name))
        };
        assert!(
            warned(&format!("{topic}.g")),
            "no warning about {topic}.g: {:?}",
            logs.lines()
        );
        let mut ordered = backend
            .subscribe(SubscribeRequest::new(&topic, "h"))
            .await
            .unwrap();
        ordered.close().await.unwrap();
        assert!(!warned(&format!("{topic}.h")), "{:?}", logs.lines());
        // Deleted with its topic, then made again elsewhere without ordering: no longer this
        // backend's own, it is warned about, also with auto-provisioning off.
        backend.delete_topic(&topic).await.unwrap();
        create_unordered(endpoint, &topic, "h").await;
        let strict = self::backend(endpoint, false).await.unwrap();
        for subscriber in [&backend, &strict] {
            let mut again = subscriber
                .subscribe(SubscribeRequest::new(&topic, "h"))
                .await
                .unwrap();
            again.close().await.unwrap();
        }
        let warnings = logs
            .lines()
            .iter()
            .filter(|line| {
                line.contains("without message ordering") && line.contains(&format!("{topic}.h"))
            })
            .count();
        assert_eq!(warnings, 2, "{:?}", logs.lines());
        strict.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Subscriptions are named `<topic>.<group>`: a pair whose name is another pair's subscription
/// (`X.a` with group `b`, `X` with group `a.b`) is refused, by the backend that opened the
/// first and by another one, instead of reading the other topic's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_and_group_colliding_with_another_pair_are_refused() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("colliding_subscription_names", async {
        let endpoint = &harness.live.address;
        let base = unique("collide");
        let dotted = format!("{base}.a");
        let backend = backend(endpoint, true).await.unwrap();
        let mut first = backend
            .subscribe(SubscribeRequest::new(&dotted, "b"))
            .await
            .unwrap();
        let other = self::backend(endpoint, true).await.unwrap();
        for subscriber in [&backend, &other] {
            let err = subscriber
                .subscribe(SubscribeRequest::new(&base, "a.b"))
                .await
                .err()
                .expect("the subscription belongs to another topic");
            assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("exists bound to topic {dotted}")),
                "{text}"
            );
        }
        first.close().await.unwrap();
        other.close().await.unwrap();
        for topic in [&base, &dotted] {
            backend.delete_topic(topic).await.unwrap();
        }
        backend.close().await.unwrap();
    })
    .await;
}

/// Asserts that the service does not have the subscription of `group` on `topic`.
async fn assert_deleted(
    subscriptions: &broker_pubsub::google_cloud_pubsub::client::SubscriptionAdmin,
    topic: &str,
    group: &str,
) {
    let err = subscriptions
        .get_subscription()
        .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.{group}"))
        .send()
        .await
        .expect_err("the subscription is deleted");
    let code = err.status().map(|status| format!("{:?}", status.code));
    assert_eq!(code.as_deref(), Some("NotFound"), "{err}");
}

/// Creates `topic` and the subscription of `group` on it, without message ordering, as
/// another program would.
async fn create_unordered(endpoint: &str, topic: &str, group: &str) {
    topic_admin(endpoint)
        .await
        .create_topic()
        .set_name(format!("projects/{PROJECT}/topics/{topic}"))
        .send()
        .await
        .expect("create the topic");
    subscription_admin(endpoint)
        .await
        .create_subscription()
        .set_name(format!("projects/{PROJECT}/subscriptions/{topic}.{group}"))
        .set_topic(format!("projects/{PROJECT}/topics/{topic}"))
        .send()
        .await
        .expect("create a subscription without message ordering");
}
