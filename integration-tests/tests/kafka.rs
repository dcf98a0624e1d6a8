//! The conformance suite and Kafka's own cases against a real Kafka
//! (`scripts/brokers.sh start kafka`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_KAFKA`. Skipped when it is unset, failed with `BROKER_REQUIRE_LIVE=1`.
//!
//! The restart case takes the broker for itself: it waits until the running cases finish, and
//! the cases started after it wait for it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use broker_api::{
    Backend, Broker, ConnectOptions, ErrorKind, Message, Position, SubscribeRequest, TopicSpec,
};
use broker_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker_kafka::rdkafka::ClientConfig;
use broker_kafka::{KafkaBackend, KafkaConfig};
use broker_testkit::support::{run_case, unique};
use broker_testkit::{live, Harness, NoRestart};
use futures::StreamExt;

const ENDPOINT_VAR: &str = "BROKER_TEST_KAFKA";

/// Connects to the Kafka under test with default settings.
struct Kafka {
    live: live::Endpoint,
}

#[async_trait]
impl Harness for Kafka {
    async fn connect(&self) -> broker_api::Result<Broker> {
        Ok(Broker::new(backend(&self.live.address, true).await?))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::restart_managed("kafka", ENDPOINT_VAR, &self.live.address).await
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn backend(
    bootstrap_servers: &str,
    auto_provision: bool,
) -> broker_api::Result<KafkaBackend> {
    let config = KafkaConfig {
        bootstrap_servers: bootstrap_servers.to_owned(),
        ..KafkaConfig::default()
    };
    KafkaBackend::connect(
        config,
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

/// The harness for an ordinary case (sharing the broker), or `None` to skip.
async fn shared() -> Option<Kafka> {
    live::Endpoint::shared(ENDPOINT_VAR)
        .await
        .map(|live| Kafka { live })
}

/// The harness for a case that disturbs the broker (alone on it), or `None` to skip.
async fn exclusive() -> Option<Kafka> {
    live::Endpoint::exclusive(ENDPOINT_VAR)
        .await
        .map(|live| Kafka { live })
}

broker_testkit::conformance_suite!(shared().await);

// Kafka restarted mid-stream (down for the time `brokers.sh restart` takes): publishing and the
// subscription resume by themselves, nothing confirmed is lost.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);

/// With auto-provisioning off, a missing topic is `NotFound` at once, for publish and
/// subscribe, and is not created behind the user's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_not_found_quickly_without_auto_provisioning() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("unknown_topic_is_not_found", async {
        let backend = backend(&harness.live.address, false).await.unwrap();
        let topic = unique("missing");
        let started = Instant::now();
        let err = match backend.send(&topic, Message::new("x")).await {
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
        backend.close().await.unwrap();
    })
    .await;
}

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

/// A message the broker refuses for its size (the topic's `max.message.bytes` is below the
/// client's limit) is `Rejected`, quickly, and the next message goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_side_size_limit_is_rejected() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("broker_side_size_limit", async {
        use broker_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use broker_kafka::rdkafka::client::DefaultClientContext;

        let topic = unique("small");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &harness.live.address)
            .create()
            .unwrap();
        let spec =
            NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2000");
        for result in admin
            .create_topics([&spec], &AdminOptions::new())
            .await
            .unwrap()
        {
            result.unwrap();
        }
        let backend = backend(&harness.live.address, true).await.unwrap();
        let started = Instant::now();
        let err = match backend.send(&topic, Message::new(vec![7u8; 10_000])).await {
            Ok(confirmation) => confirmation.await.expect_err("over the topic's limit"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("max.message.bytes"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        backend
            .send(&topic, Message::new("small"))
            .await
            .unwrap()
            .await
            .expect("a small message after the refusal");
        backend.close().await.unwrap();
    })
    .await;
}

/// The capabilities the conformance suite gates its cases on are the documented ones: one
/// switched off by mistake would turn its cases into skips.
#[tokio::test]
async fn capabilities_are_the_documented_ones() {
    let Some(harness) = shared().await else {
        return;
    };
    let expected = broker_api::Capabilities {
        new_group_reads_history: true,
        per_key_order: true,
        members_share_work: true,
        start_from_latest: true,
        survives_restart: true,
        delivery_attempt: false,
        partitions: true,
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

/// Kafka's SASL/PLAIN listener, from `BROKER_TEST_KAFKA_SASL`
/// (`sasl_plaintext://<user>:<password>@<host>:<port>`, as `scripts/brokers.sh env` gives
/// it): the right login publishes and consumes; a wrong password fails `connect` with an
/// error that says authentication failed, names the endpoint and does not echo the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_connect_clearly() {
    let Some(live) = live::Endpoint::shared("BROKER_TEST_KAFKA_SASL").await else {
        return;
    };
    run_case("wrong_credentials_fail_connect_clearly", async {
        let (user, password, address) = sasl_endpoint(&live.address);
        let login = |password: &str| KafkaConfig {
            bootstrap_servers: address.to_owned(),
            connect_timeout: Duration::from_secs(5),
            properties: [
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", user),
                ("sasl.password", password),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
            ..KafkaConfig::default()
        };

        let err = KafkaBackend::connect(login("not-the-password"), ConnectOptions::default())
            .await
            .expect_err("a wrong password");
        let text = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Rejected, "{text}");
        assert!(!err.is_temporary(), "{text}");
        assert!(text.contains("SASL authentication"), "{text}");
        assert!(text.contains(address), "{text}");
        assert!(
            !text.contains("not-the-password"),
            "password leaked: {text}"
        );

        let broker = Broker::new(
            KafkaBackend::connect(login(password), ConnectOptions::default())
                .await
                .expect("the right password connects"),
        );
        let topic = broker_api::Topic::<String>::text(unique("sasl"));
        broker
            .ensure_topic(&TopicSpec::new(topic.name()).group("g"))
            .await
            .expect("create the topic");
        broker
            .publisher(&topic)
            .publish(&"over SASL".to_owned())
            .await
            .expect("publish");
        let mut stream = broker
            .subscriber(&topic, "g")
            .at_most_once()
            .await
            .expect("subscribe");
        let received =
            broker_testkit::support::next_within(&mut stream, Duration::from_secs(60)).await;
        assert_eq!(received.value, "over SASL");
        broker.close().await.expect("close");
    })
    .await;
}

/// `(user, password, host:port)` of a `sasl_plaintext://<user>:<password>@<host>:<port>`.
fn sasl_endpoint(url: &str) -> (&str, &str, &str) {
    url.strip_prefix("sasl_plaintext://")
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(login, address)| {
            let (user, password) = login.split_once(':')?;
            Some((user, password, address))
        })
        .unwrap_or_else(|| {
            panic!("BROKER_TEST_KAFKA_SASL is not sasl_plaintext://user:password@host:port: {url}")
        })
}
