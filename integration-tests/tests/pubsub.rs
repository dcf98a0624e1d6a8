//! The conformance suite and Pub/Sub's own cases against the Pub/Sub emulator
//! (`scripts/brokers.sh start pubsub`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_PUBSUB` (e.g. `http://127.0.0.1:8085`). Skipped when it is unset, failed with
//! `BROKER_REQUIRE_LIVE=1`.
//!
//! `BROKER_TEST_PUBSUB_WORKAROUNDS=off` runs them with the emulator workarounds off, i.e. with
//! the code path used against Google Cloud (cases that close and reopen a group's
//! subscription then suffer from the emulator keeping cancelled streaming pulls).
//!
//! The restart case takes the emulator for itself: it waits until the running cases finish, and
//! the cases started after it wait for it. The emulator keeps nothing across a restart, so that
//! case checks that the backend recovers and that messages published after the restart flow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use broker_api::{
    Backend, Broker, ConnectOptions, ErrorKind, Message, Position, SubscribeRequest, TopicSpec,
};
use broker_pubsub::google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use broker_pubsub::google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use broker_pubsub::google_cloud_pubsub::model::Message as PubsubMessage;
use broker_pubsub::{PubSubBackend, PubSubConfig};
use broker_testkit::support::{next_within, run_case, unique};
use broker_testkit::{live, Harness, NoRestart};
use futures::StreamExt;

const ENDPOINT_VAR: &str = "BROKER_TEST_PUBSUB";
const PROJECT: &str = "broker-tests";
/// `off` turns the emulator workarounds off (the Google Cloud code path).
const WORKAROUNDS_VAR: &str = "BROKER_TEST_PUBSUB_WORKAROUNDS";

/// Connects to the emulator under test with short timeouts.
struct PubSub {
    live: live::Endpoint,
}

#[async_trait]
impl Harness for PubSub {
    async fn connect(&self) -> broker_api::Result<Broker> {
        Ok(Broker::new(backend(&self.live.address, true).await?))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::brokers_script("restart", "pubsub")
            .await
            .map(drop)
            .map_err(NoRestart::Failed)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// How long the keyed messages of a resubscribed group may take at most: well under the ack
/// deadline (60 s), after which messages stuck with a closed streaming pull come again, and
/// well above what a loaded emulator takes.
const STALL_BOUND: Duration = Duration::from_secs(30);

fn config(endpoint: &str) -> PubSubConfig {
    PubSubConfig {
        project: PROJECT.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        connect_timeout: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(30),
        admin_timeout: Duration::from_secs(10),
        emulator_workarounds: std::env::var(WORKAROUNDS_VAR)
            .ok()
            .map(|value| value != "off"),
        ..PubSubConfig::default()
    }
}

async fn backend(endpoint: &str, auto_provision: bool) -> broker_api::Result<PubSubBackend> {
    PubSubBackend::connect(
        config(endpoint),
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

/// The harness for an ordinary case (sharing the emulator), or `None` to skip.
async fn shared() -> Option<PubSub> {
    live::Endpoint::shared(ENDPOINT_VAR)
        .await
        .map(|live| PubSub { live })
}

/// The harness for a case that restarts the emulator (alone on it), or `None` to skip.
async fn exclusive() -> Option<PubSub> {
    live::Endpoint::exclusive(ENDPOINT_VAR)
        .await
        .map(|live| PubSub { live })
}

broker_testkit::conformance_suite!(shared().await);

// The emulator restarted mid-stream (it comes back empty): publishing re-creates the topic and
// its subscriptions, the running subscription reopens its streaming pull, and messages
// published after the restart flow.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);

async fn topic_admin(endpoint: &str) -> TopicAdmin {
    TopicAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("topic admin client")
}

async fn subscription_admin(endpoint: &str) -> SubscriptionAdmin {
    SubscriptionAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("subscription admin client")
}

/// A message published by another program without a `message-id` attribute is delivered, with
/// its attributes as headers; what this backend publishes carries the wire attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_attributes_and_foreign_messages() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("wire_attributes_and_foreign_messages", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("wire");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let raw = Publisher::builder(format!("projects/{PROJECT}/topics/{topic}"))
            .with_endpoint(&harness.live.address)
            .with_credentials(Anonymous::new().build())
            .build()
            .await
            .unwrap();
        let mut foreign = PubsubMessage::new().set_data("from elsewhere");
        foreign.attributes = HashMap::from([("origin".to_owned(), "gcloud".to_owned())]);
        raw.publish(foreign).await.expect("raw publish");
        let receipt = backend
            .send(
                &topic,
                Message::new("ours")
                    .with_key("k1")
                    .with_id("id-42")
                    .with_content_type("text/plain")
                    .with_header("h", "v"),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let Position::PubSub(published) = &receipt.position else {
            panic!("expected a Pub/Sub position: {receipt:?}");
        };
        assert!(!published.message_id.is_empty());
        assert_eq!(published.ordering_key.as_deref(), Some("k1"));

        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut seen = HashMap::new();
        for _ in 0..2 {
            let delivery = next_within(&mut stream, harness.patience()).await;
            let text = String::from_utf8(delivery.payload.to_vec()).unwrap();
            seen.insert(text, delivery.metadata.clone());
            delivery.ack().await.unwrap();
        }
        let foreign = &seen["from elsewhere"];
        assert_eq!(foreign.message_id, None);
        assert_eq!(foreign.key, None);
        assert_eq!(foreign.headers.get("origin"), Some("gcloud"));
        assert!(foreign.publish_time.is_some());
        let ours = &seen["ours"];
        assert_eq!(
            ours.message_id.as_ref().map(|id| id.as_str()),
            Some("id-42")
        );
        assert_eq!(ours.content_type.as_deref(), Some("text/plain"));
        assert_eq!(ours.key.as_deref(), Some("k1"));
        assert_eq!(ours.headers.get("h"), Some("v"));
        assert_eq!(ours.headers.len(), 1, "{:?}", ours.headers);
        assert_eq!(ours.position, receipt.position);
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// With auto-provisioning off, a missing topic or subscription is `NotFound` and nothing is
/// created; a failed publish with an ordering key does not wedge the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_not_found_without_auto_provisioning() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("unknown_topic_is_not_found", async {
        let backend = backend(&harness.live.address, false).await.unwrap();
        let topic = unique("missing");
        let started = Instant::now();
        let err = match backend.send(&topic, Message::new("x").with_key("k")).await {
            Ok(confirmation) => confirmation.await.expect_err("publish to a missing topic"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains(&topic), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let err = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .err()
            .expect("subscribe to a missing topic");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(!backend.list_topics().await.unwrap().contains(&topic));

        // Created by someone else: publishing with the same key now works.
        topic_admin(&harness.live.address)
            .await
            .create_topic()
            .set_name(format!("projects/{PROJECT}/topics/{topic}"))
            .send()
            .await
            .unwrap();
        backend
            .send(&topic, Message::new("y").with_key("k"))
            .await
            .unwrap()
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

async fn backend_cleanup(endpoint: &str, topic: &str) {
    let backend = backend(endpoint, true).await.expect("connect");
    backend.delete_topic(topic).await.expect("delete topic");
    backend.close().await.expect("close");
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
            let err = subscriptions
                .get_subscription()
                .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.{group}"))
                .send()
                .await
                .expect_err("the subscription was deleted with its topic");
            let code = err.status().map(|status| format!("{:?}", status.code));
            assert_eq!(code.as_deref(), Some("NotFound"), "{err}");
        }
        let err = backend
            .delete_topic(&topic)
            .await
            .expect_err("deleted twice");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        // Publishing again provisions the topic again.
        backend
            .send(&topic, Message::new("again"))
            .await
            .unwrap()
            .await
            .unwrap();
        backend.delete_topic(&topic).await.unwrap();
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
        backend
            .send(&topic, Message::new("before"))
            .await
            .unwrap()
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
            backend
                .send(&topic, Message::new("after"))
                .await
                .unwrap()
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

/// A subscription left in push delivery by another backend's reclaim of the emulator's
/// streaming pulls that never finished (the process died within its 150 ms window): the
/// emulator refuses streaming pulls on it with FAILED_PRECONDITION, so the subscriber switches
/// it back to pull delivery, and the message waiting in it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_left_in_push_delivery_is_pulled_again() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("subscription_left_in_push_delivery", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("pushed");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        // What a reclaim sets for its window: pushes to the discard port, which fail.
        subscription_admin(&harness.live.address)
            .await
            .modify_push_config()
            .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.g"))
            .set_push_config(
                broker_pubsub::google_cloud_pubsub::model::PushConfig::new()
                    .set_push_endpoint("http://127.0.0.1:9/"),
            )
            .send()
            .await
            .expect("switch the subscription to push delivery");
        backend
            .send(&topic, Message::new("waiting"))
            .await
            .unwrap()
            .await
            .expect("published");
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let delivery = next_within(&mut stream, harness.patience()).await;
        assert_eq!(&delivery.payload[..], b"waiting");
        delivery.ack().await.unwrap();
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Closing a subscription and subscribing again in the same group, with keyed messages, loses
/// nothing and delays nothing (the emulator would otherwise keep routing keys to the closed
/// streaming pull).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_with_keys_delivers_at_once() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("resubscribing_with_keys", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("rekey");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        for _ in 0..3 {
            let mut stream = backend
                .subscribe(SubscribeRequest::new(&topic, "g"))
                .await
                .unwrap();
            stream.close().await.unwrap();
        }
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g").max_in_flight(64))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..40 {
            let message = Message::new(format!("k-{i}")).with_key(format!("key-{}", i % 10));
            confirmations.push(backend.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let started = Instant::now();
        let mut got = std::collections::BTreeSet::new();
        while got.len() < 40 {
            let delivery = next_within(&mut stream, STALL_BOUND).await;
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        assert!(started.elapsed() < STALL_BOUND, "{:?}", started.elapsed());
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Two backends (two processes, say) in one group: the second one joining does not stop the
/// first, and together they receive everything; a third backend subscribing after both
/// closed still gets new messages at once (the emulator's abandoned streaming pulls of the
/// closed backends are reclaimed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_separate_backends_share_a_group() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("members_in_separate_backends", async {
        let first = backend(&harness.live.address, true).await.unwrap();
        let second = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("members");
        first
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut a = first
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut b = second
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..40 {
            let message = Message::new(format!("m-{i}")).with_key(format!("key-{}", i % 8));
            confirmations.push(first.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let mut got = std::collections::BTreeSet::new();
        let deadline = Instant::now() + harness.patience();
        while got.len() < 40 {
            assert!(Instant::now() < deadline, "got {} of 40", got.len());
            let next = tokio::select! {
                next = a.next() => next,
                next = b.next() => next,
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let delivery = next.expect("open").expect("a delivery");
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
        first.close().await.unwrap();
        second.close().await.unwrap();

        let third = backend(&harness.live.address, true).await.unwrap();
        let mut c = third
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..20 {
            let message = Message::new(format!("n-{i}")).with_key(format!("key-{i}"));
            confirmations.push(third.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let started = Instant::now();
        for _ in 0..20 {
            let delivery = next_within(&mut c, STALL_BOUND).await;
            delivery.ack().await.unwrap();
        }
        assert!(started.elapsed() < STALL_BOUND, "{:?}", started.elapsed());
        c.close().await.unwrap();
        third.delete_topic(&topic).await.unwrap();
        third.close().await.unwrap();
    })
    .await;
}

/// A delivery whose streaming pull ended (here: another backend joining the group makes the
/// emulator end it, and this backend reopens it) is no longer live — its acknowledgement would
/// be dropped — and its message is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_of_an_ended_pull_is_no_longer_live() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("ended_pull_not_live", async {
        let first = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("live");
        first
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut a = first
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        first
            .send(&topic, Message::new("held"))
            .await
            .unwrap()
            .await
            .unwrap();
        let held = next_within(&mut a, harness.patience()).await;
        assert!(held.is_live());
        // Its first pull of a subscription it did not create ends the emulator's other pulls.
        let second = backend(&harness.live.address, true).await.unwrap();
        let mut b = second
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let deadline = Instant::now() + harness.patience();
        while held.is_live() {
            assert!(Instant::now() < deadline, "the delivery stayed live");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = tokio::time::timeout(harness.patience(), async {
            tokio::select! {
                next = a.next() => next,
                next = b.next() => next,
            }
        })
        .await
        .expect("delivered again in time")
        .expect("open")
        .expect("a delivery");
        assert_eq!(&again.payload[..], b"held");
        again.ack().await.unwrap();
        drop(held);
        a.close().await.unwrap();
        b.close().await.unwrap();
        second.close().await.unwrap();
        first.delete_topic(&topic).await.unwrap();
        first.close().await.unwrap();
    })
    .await;
}

/// An unreachable endpoint fails `connect` within the connect timeout, naming the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_connect_quickly() {
    run_case("unreachable_endpoint", async {
        let started = Instant::now();
        let config = PubSubConfig {
            connect_timeout: Duration::from_secs(2),
            ..config("http://127.0.0.1:9")
        };
        let err = PubSubBackend::connect(config, ConnectOptions::default())
            .await
            .expect_err("nothing listens on port 9");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:9"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
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

/// Log lines written while its subscriber is the thread's default.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish()
    }

    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The capabilities the conformance suite gates its cases on are the documented ones: one
/// switched off by mistake would turn its cases into skips. The emulator keeps nothing across
/// a restart.
#[tokio::test]
async fn capabilities_are_the_documented_ones() {
    let Some(harness) = shared().await else {
        return;
    };
    let expected = broker_api::Capabilities {
        new_group_reads_history: false,
        per_key_order: true,
        members_share_work: true,
        start_from_latest: true,
        survives_restart: false,
        delivery_attempt: false,
        partitions: false,
        list_topics: true,
        delete_topic: true,
        max_payload_bytes: None,
    };
    run_case(
        "capabilities_are_the_documented_ones",
        broker_testkit::cases::capabilities_are(&harness, expected),
    )
    .await;
}

/// The client's publisher starts a task for each ordering key and keeps it for as long as the
/// publisher lives: publishing with ever new keys (one per order, per user) must not grow the
/// process without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_with_ever_new_keys_stays_bounded() {
    const KEYS: usize = 6_000;
    let Some(harness) = shared().await else {
        return;
    };
    run_case("publishing_with_ever_new_keys_stays_bounded", async {
        let backend = backend(&harness.live.address, true).await.expect("connect");
        // No subscription: the emulator keeps nothing per key.
        let topic = unique("keys");
        backend
            .ensure_topic(&TopicSpec::new(topic.as_str()))
            .await
            .expect("topic");
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let mut most = 0;
        for window in 0..KEYS / 500 {
            let mut confirmations = Vec::new();
            for i in window * 500..(window + 1) * 500 {
                let message = Message::new(format!("m-{i}")).with_key(format!("key-{i}"));
                let sent = backend.send(&topic, message).await.expect("send");
                confirmations.push(sent);
            }
            for confirmation in confirmations {
                confirmation.await.expect("confirmed");
            }
            most = most.max(tasks());
        }
        let grown = most.saturating_sub(before);
        assert!(
            grown < KEYS / 3,
            "{grown} more tasks after publishing with {KEYS} keys"
        );
        backend.close().await.expect("close");
        backend_cleanup(&harness.live.address, &topic).await;
    })
    .await;
}

/// Messages with a key are published in order also when the topic's client is replaced (after
/// a thousand keys): the replaced client finishes what it holds before the new one publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_across_a_client_replacement() {
    const KEYS: usize = 1_200;
    let Some(harness) = shared().await else {
        return;
    };
    run_case("key_order_holds_across_a_client_replacement", async {
        let backend = backend(&harness.live.address, true).await.expect("connect");
        let topic = unique("replaced");
        backend
            .ensure_topic(&TopicSpec::new(topic.as_str()).group("g"))
            .await
            .expect("topic");
        let mut confirmations = Vec::new();
        for round in 0..2 {
            for key in 0..KEYS {
                let message = Message::new(format!("{round}")).with_key(format!("key-{key}"));
                confirmations.push(backend.send(&topic, message).await.expect("send"));
            }
        }
        for confirmation in confirmations {
            confirmation.await.expect("confirmed");
        }
        let mut stream = backend
            .subscribe(SubscribeRequest::new(topic.as_str(), "g").max_in_flight(4_096))
            .await
            .expect("subscribe");
        let mut rounds_seen: HashMap<String, Vec<String>> = HashMap::new();
        for _ in 0..2 * KEYS {
            let delivery = next_within(&mut stream, Duration::from_secs(30)).await;
            let key = delivery.metadata.key.clone().expect("keyed");
            let round = String::from_utf8_lossy(&delivery.payload).into_owned();
            rounds_seen.entry(key).or_default().push(round);
            delivery.ack().await.expect("ack");
        }
        let out_of_order: Vec<_> = rounds_seen
            .iter()
            .filter(|(_, rounds)| rounds.as_slice() != ["0", "1"])
            .collect();
        assert!(
            out_of_order.is_empty(),
            "{} keys out of order or incomplete, e.g. {:?}",
            out_of_order.len(),
            out_of_order.first()
        );
        stream.close().await.expect("close the stream");
        backend.close().await.expect("close");
        backend_cleanup(&harness.live.address, &topic).await;
    })
    .await;
}
