//! Connecting and the broker's own limits: capabilities, wrong credentials, the broker-side
//! message size limit.

use std::time::{Duration, Instant};

use broker_api::{Backend, Broker, ConnectOptions, ErrorKind, Message, TopicSpec};
use broker_kafka::rdkafka::ClientConfig;
use broker_kafka::{KafkaBackend, KafkaConfig};
use broker_testkit::live;
use broker_testkit::support::{assert_login_refused, run_case, unique};

use super::{backend, shared};

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
        assert_login_refused(&err, &[ErrorKind::Rejected], address, "not-the-password");
        assert!(!err.is_temporary(), "{err}");
        assert!(err.to_string().contains("SASL authentication"), "{err}");

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
