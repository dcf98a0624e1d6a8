//! Publishing: wire attributes and foreign messages, ordering keys.

use std::collections::HashMap;
use std::time::Duration;

use broker_api::{Backend, ConnectOptions, Key, Message, Position, SubscribeRequest, TopicSpec};
use broker_pubsub::google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use broker_pubsub::google_cloud_pubsub::client::Publisher;
use broker_pubsub::google_cloud_pubsub::model::Message as PubsubMessage;
use broker_pubsub::{PubSubBackend, PubSubConfig};
use broker_testkit::support::{next_within, run_case, unique};
use broker_testkit::Harness;
use futures::FutureExt;

use crate::shared;
use crate::support::{backend, backend_cleanup, config, PROJECT};

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

/// A message the client still holds (its batch waits for more messages or its delay) does not
/// hold back the confirmations of another topic's messages answered after it was sent: they
/// are confirmed as soon as the service answered them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_its_batch_holds_back_no_other_topic() {
    let (waiting, answered) = (unique("batch-waits"), unique("batch-full"));
    a_full_batch_is_confirmed_before_a_lone_message(
        "a_message_waiting_for_its_batch_holds_back_no_other_topic",
        (&waiting, None),
        (&answered, None),
    )
    .await;
}

/// The client batches each ordering key on its own: a key's lone message waiting for its batch
/// does not hold back the confirmations of another key's messages on the same topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_message_waiting_for_its_batch_holds_back_no_other_key() {
    let topic = unique("batch-keys");
    a_full_batch_is_confirmed_before_a_lone_message(
        "a_keyed_message_waiting_for_its_batch_holds_back_no_other_key",
        (&topic, Some("waits")),
        (&topic, Some("full")),
    )
    .await;
}

/// Nor those of the topic's messages without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_message_waiting_for_its_batch_holds_back_no_unkeyed_one() {
    let topic = unique("batch-keyed-unkeyed");
    a_full_batch_is_confirmed_before_a_lone_message(
        "a_keyed_message_waiting_for_its_batch_holds_back_no_unkeyed_one",
        (&topic, Some("waits")),
        (&topic, None),
    )
    .await;
}

/// And a message without a key waiting for its batch holds back no keyed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_message_waiting_for_its_batch_holds_back_no_keyed_one() {
    let topic = unique("batch-unkeyed-keyed");
    a_full_batch_is_confirmed_before_a_lone_message(
        "an_unkeyed_message_waiting_for_its_batch_holds_back_no_keyed_one",
        (&topic, None),
        (&topic, Some("full")),
    )
    .await;
}

/// Sends a lone message to `lone` (topic, ordering key), which waits for its batch, then a full
/// batch to `full`, which the client sends at once: the full batch must be confirmed within
/// half the batch delay, the lone message after it.
async fn a_full_batch_is_confirmed_before_a_lone_message(
    case: &str,
    lone: (&str, Option<&str>),
    full: (&str, Option<&str>),
) {
    const BATCH_DELAY: Duration = Duration::from_secs(6);
    let Some(harness) = shared().await else {
        return;
    };
    let message = |text: String, key: Option<&str>| match key {
        Some(key) => Message::new(text).with_key(key),
        None => Message::new(text),
    };
    run_case(case, async {
        // A batch goes out with its second message, or after `BATCH_DELAY`.
        let config = PubSubConfig {
            batch_max_messages: 2,
            batch_max_delay: BATCH_DELAY,
            ..config(&harness.live.address)
        };
        let backend = PubSubBackend::connect(config, ConnectOptions::default())
            .await
            .expect("connect");
        let mut topics = vec![lone.0, full.0];
        topics.dedup();
        for topic in &topics {
            backend
                .ensure_topic(&TopicSpec::new(*topic))
                .await
                .expect("topic");
        }
        // Alone in its batch until `BATCH_DELAY`.
        let lone = backend
            .send(lone.0, message("lone".into(), lone.1))
            .await
            .expect("send");
        // A full batch, sent at once.
        let mut confirmations = Vec::new();
        for i in 0..2 {
            let sent = backend.send(full.0, message(format!("full-{i}"), full.1));
            confirmations.push(sent.await.expect("send"));
        }
        tokio::time::timeout(
            BATCH_DELAY / 2,
            futures::future::try_join_all(confirmations),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a full batch was not confirmed within {:?}: held back behind a message \
                     sent before it that waits for its batch",
                BATCH_DELAY / 2
            )
        })
        .expect("full batch confirmed");
        // The lone message is confirmed too, once its batch goes out.
        tokio::time::timeout(2 * BATCH_DELAY, lone)
            .await
            .expect("the lone message confirmed after its batch delay")
            .expect("lone message confirmed");
        backend.close().await.expect("close");
        for topic in topics {
            backend_cleanup(&harness.live.address, topic).await;
        }
    })
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
        let mut rounds_seen: HashMap<Key, Vec<String>> = HashMap::new();
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

/// Closing waits for the messages held back while a replaced client finishes (after a thousand
/// keys): they go to its successor, and closing flushes that one too, so a service that does
/// not await its confirmations loses none of them when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_flushes_messages_held_across_a_client_replacement() {
    const KEYS: usize = 1_000;
    const HELD: usize = 50;
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "closing_flushes_messages_held_across_a_client_replacement",
        async {
            let backend = backend(&harness.live.address, true).await.expect("connect");
            let topic = unique("held");
            backend
                .ensure_topic(&TopicSpec::new(topic.as_str()))
                .await
                .expect("topic");
            let mut confirmations = Vec::new();
            for key in 0..KEYS {
                let message = Message::new("served").with_key(format!("key-{key}"));
                confirmations.push(backend.send(&topic, message).await.expect("send"));
            }
            for confirmation in confirmations {
                confirmation.await.expect("confirmed");
            }
            // New keys: the first replaces the client, and these wait for it to finish.
            let mut held = Vec::new();
            for key in KEYS..KEYS + HELD {
                let message = Message::new("held").with_key(format!("key-{key}"));
                held.push(backend.send(&topic, message).await.expect("send"));
            }
            backend.close().await.expect("close");
            // Unconstrained: tokio's task budget would answer pending after a hundred polls.
            let unanswered: Vec<_> = tokio::task::unconstrained(async move {
                held.into_iter()
                    .enumerate()
                    .filter_map(|(i, confirmation)| match confirmation.now_or_never() {
                        Some(Ok(_)) => None,
                        Some(Err(e)) => Some(format!("{i}: {e}")),
                        None => Some(format!("{i}: pending")),
                    })
                    .collect()
            })
            .await;
            assert!(
                unanswered.is_empty(),
                "messages not published when close returned: {unanswered:?}"
            );
            backend_cleanup(&harness.live.address, &topic).await;
        },
    )
    .await;
}
