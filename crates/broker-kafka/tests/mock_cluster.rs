//! The adapter against librdkafka's built-in mock cluster: no Kafka needed.
//!
//! The mock cluster has no CreateTopics API, so topics are created on the mock itself and the
//! backend runs with auto-provisioning off.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_key_headers_id_and_content_type() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("greetings", 1, 1).unwrap();
    let backend = connect(&cluster).await;

    let message = Message::new("hello")
        .with_key("user-1")
        .with_header("trace", "abc")
        .with_id("id-1")
        .with_content_type("text/plain; charset=utf-8");
    let receipt = publish(&backend, "greetings", message).await;
    assert_eq!(receipt.message_id.as_str(), "id-1");
    assert_eq!(
        receipt.position,
        Position::Kafka {
            partition: 0,
            offset: 0
        }
    );

    let mut stream = backend
        .subscribe(SubscribeRequest::new("greetings", "g"))
        .await
        .unwrap();
    let delivery = next_within(&mut stream, PATIENCE).await;
    assert_eq!(&delivery.payload[..], b"hello");
    let metadata = &delivery.metadata;
    assert_eq!(&*metadata.topic, "greetings");
    assert_eq!(metadata.key.as_deref(), Some("user-1"));
    assert_eq!(metadata.headers.get("trace"), Some("abc"));
    assert_eq!(metadata.headers.len(), 1);
    assert_eq!(
        metadata.message_id.as_ref().map(|id| id.as_str()),
        Some("id-1")
    );
    assert_eq!(
        metadata.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(metadata.publish_time.is_some());
    assert_eq!(metadata.attempt, None);
    delivery.ack().await.unwrap();
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_handled_prefix_is_committed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("work", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    for i in 0..5 {
        publish(&backend, "work", Message::new(format!("m{i}"))).await;
    }

    let mut stream = backend
        .subscribe(SubscribeRequest::new("work", "g"))
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..5 {
        deliveries.push(next_within(&mut stream, PATIENCE).await);
    }
    // Handled: 0, 1 and 3. Not handled: 2 (dropped) and 4 (never settled).
    let mut by_offset: Vec<_> = deliveries.into_iter().map(|d| (offset(&d), d)).collect();
    by_offset.sort_by_key(|(o, _)| *o);
    let mut it = by_offset.into_iter().map(|(_, d)| d);
    let (d0, d1, d2, d3, d4) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    d0.ack().await.unwrap();
    d1.ack().await.unwrap();
    d3.ack().await.unwrap();
    drop(d2);
    stream.close().await.unwrap();
    drop(d4);

    // The next member of the group starts at the first unhandled message.
    let mut stream = backend
        .subscribe(SubscribeRequest::new("work", "g"))
        .await
        .unwrap();
    let again = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&again), 2, "{:?}", again.metadata);
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

/// Acknowledgements made while the application does not read the stream are committed all
/// the same: the keeper that polls the consumer meanwhile stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_are_committed_while_the_stream_is_not_read() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("idle", 1, 1).unwrap();
    let mut config = config(&cluster);
    config
        .properties
        .insert("auto.commit.interval.ms".into(), "200".into());
    let backend = connect_with(config).await;
    for i in 0..3 {
        publish(&backend, "idle", Message::new(format!("m{i}"))).await;
    }
    let mut stream = backend
        .subscribe(SubscribeRequest::new("idle", "g"))
        .await
        .unwrap();
    for _ in 0..3 {
        next_within(&mut stream, PATIENCE)
            .await
            .ack()
            .await
            .unwrap();
    }

    // The stream is not read from here on.
    let observer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "g")
        .create()
        .unwrap();
    let mut partition = TopicPartitionList::new();
    partition.add_partition("idle", 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let committed = observer
            .committed_offsets(partition.clone(), Duration::from_secs(5))
            .ok()
            .and_then(|list| list.find_partition("idle", 0).map(|p| p.offset()));
        if committed == Some(Offset::Offset(3)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group's committed offset stayed at {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_delivers_the_message_again() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("retry", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    for i in 0..3 {
        publish(&backend, "retry", Message::new(format!("m{i}"))).await;
    }
    let mut stream = backend
        .subscribe(SubscribeRequest::new("retry", "g"))
        .await
        .unwrap();
    let first = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&first), 0);
    first.ack().await.unwrap();
    let second = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&second), 1);
    second.nack().await.unwrap();
    // Offset 1 comes again (2 may come before it, read before the rewind: at least once).
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "offset 1 was not redelivered");
        let delivery = next_within(&mut stream, PATIENCE).await;
        if offset(&delivery) == 1 {
            assert_eq!(&delivery.payload[..], b"m1");
            delivery.ack().await.unwrap();
            break;
        }
    }
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

/// After a nack, the records already read behind the nacked one are not handed out before it:
/// the next delivery is the nacked message again, then the others, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_not_overtaken_by_records_already_read() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("overtaken", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    for i in 0..6 {
        publish(
            &backend,
            "overtaken",
            Message::new(format!("m{i}")).with_key("k"),
        )
        .await;
    }
    let mut stream = backend
        .subscribe(SubscribeRequest::new("overtaken", "g").max_in_flight(8))
        .await
        .unwrap();
    let first = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&first), 0);
    first.nack().await.unwrap();
    let mut after = Vec::new();
    while after.len() < 6 {
        let delivery = next_within(&mut stream, PATIENCE).await;
        after.push(offset(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(after, [0, 1, 2, 3, 4, 5], "in order after the rewind");
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_unsettled_deliveries() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("bounded", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    for i in 0..10 {
        publish(&backend, "bounded", Message::new(format!("m{i}"))).await;
    }
    let mut stream = backend
        .subscribe(SubscribeRequest::new("bounded", "g").max_in_flight(3))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_within(&mut stream, PATIENCE).await);
    }
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(more.is_err(), "a 4th delivery while 3 are unsettled");
    held.remove(0).ack().await.unwrap();
    let fourth = next_within(&mut stream, PATIENCE).await;
    assert_eq!(offset(&fourth), 3);
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_latest_skips_history_but_not_what_follows() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("news", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    publish(&backend, "news", Message::new("old")).await;
    let mut stream = backend
        .subscribe(SubscribeRequest::new("news", "late").start_from(StartFrom::Latest))
        .await
        .unwrap();
    publish(&backend, "news", Message::new("new")).await;
    let delivery = next_within(&mut stream, PATIENCE).await;
    assert_eq!(&delivery.payload[..], b"new");
    stream.close().await.unwrap();
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_without_auto_provisioning_is_not_found_at_once() {
    let cluster = MockCluster::new(1).unwrap();
    let backend = connect(&cluster).await;
    let started = Instant::now();
    let err = match backend.send("missing", Message::new("x")).await {
        Ok(confirmation) => confirmation.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err = backend
        .subscribe(SubscribeRequest::new("missing", "g"))
        .await
        .err()
        .expect("subscribing to a missing topic fails");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    backend.close().await.unwrap();
}

/// A topic these credentials may not see (its metadata answers TOPIC_AUTHORIZATION_FAILED)
/// fails at once, naming the permission, instead of being taken as a topic still being
/// created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_credentials_may_not_see_is_refused_at_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("secret", 1, 1).unwrap();
    cluster
        .topic_error(
            "secret",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let backend = connect(&cluster).await;
    let started = Instant::now();
    let err = backend
        .send("secret", Message::new("x"))
        .await
        .expect_err("the topic may not be used");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(
        err.to_string()
            .contains("these credentials may not use topic secret"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    backend.close().await.unwrap();
}

/// A group these credentials may not join (GROUP_AUTHORIZATION_FAILED) ends the subscription
/// with an error naming the refusal, instead of leaving it waiting for records for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_the_credentials_may_not_join_ends_the_subscription() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("guarded", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    publish(&backend, "guarded", Message::new("m0")).await;
    cluster.request_errors(
        RDKafkaApiKey::FindCoordinator,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 100],
    );
    let mut stream = backend
        .subscribe(SubscribeRequest::new("guarded", "g"))
        .await
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the subscription ends in time")
        .expect("an item");
    let err = ended.expect_err("an error, not a delivery");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("group g"), "{err}");
    let _ = stream.close().await;
    backend.close().await.unwrap();
}

/// A first publish whose topic cannot be created fails as a publish (the mock cluster has no
/// CreateTopics API, so every creation fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_creation_on_first_publish_is_a_publish_error() {
    let cluster = MockCluster::new(1).unwrap();
    init_logs();
    let config = KafkaConfig {
        connect_timeout: Duration::from_secs(2),
        ..config(&cluster)
    };
    let backend = KafkaBackend::connect(config, ConnectOptions::default())
        .await
        .expect("connect to the mock cluster");
    let err = backend
        .send("never-created", Message::new("x"))
        .await
        .expect_err("the topic cannot be created");
    assert_eq!(err.operation_name(), "publish", "{err}");
    assert!(err.to_string().contains("never-created"), "{err}");
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_rejected_naming_size_and_limit() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("big", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    let limit = backend.capabilities().max_payload_bytes.unwrap();
    let err = match backend
        .send("big", Message::new(vec![1u8; limit + 1]))
        .await
    {
        Ok(confirmation) => confirmation.await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    let text = err.to_string();
    assert!(text.contains(&(limit + 1).to_string()), "{text}");
    assert!(text.contains(&limit.to_string()), "{text}");
    // The largest announced payload goes through.
    publish(
        &backend,
        "big",
        Message::new(vec![2u8; limit]).with_key("k"),
    )
    .await;
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bootstrap_fails_within_the_connect_timeout() {
    init_logs();
    let config = KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".into(),
        connect_timeout: Duration::from_secs(2),
        ..KafkaConfig::default()
    };
    let started = Instant::now();
    let err = KafkaBackend::connect(config, ConnectOptions::default())
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_close_fail_as_closed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    let broker = Broker::new(backend);
    let mut stream = broker
        .backend()
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    broker.close().await.unwrap();
    // The subscription ends with the backend.
    let end = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap();
    assert!(end.is_none());
    let err = match broker.backend().send("t", Message::new("x")).await {
        Ok(_) => panic!("send after close"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = broker
        .backend()
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    broker.close().await.unwrap();
}

/// A backend whose producer queue (librdkafka's) holds ten records: it fills up at once.
async fn connect_with_a_queue_of_ten(
    cluster: &MockCluster<'_, impl rdkafka::client::ClientContext>,
) -> KafkaBackend {
    let mut config = config(cluster);
    config
        .properties
        .insert("queue.buffering.max.messages".into(), "10".into());
    connect_with(config).await
}

/// Sends made before any is awaited keep their call order when librdkafka's queue is full:
/// those made while one waits for room queue behind it instead of overtaking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_waiting_for_queue_room_keep_their_call_order() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("ordered", 1, 1).unwrap();
    let backend = connect_with_a_queue_of_ten(&cluster).await;
    let sends: Vec<_> = (0..200)
        .map(|i| backend.send("ordered", Message::new(format!("m{i}"))))
        .collect();
    let confirmations = futures::future::try_join_all(sends).await.unwrap();
    let receipts = futures::future::try_join_all(confirmations).await.unwrap();
    let offsets = receipt_offsets(&receipts);
    assert_eq!(offsets, (0..200).collect::<Vec<i64>>(), "in call order");
    backend.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_makes_send_wait_not_fail() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("burst", 1, 1).unwrap();
    let backend = connect_with_a_queue_of_ten(&cluster).await;
    // The first send to a topic looks it up (boxed, like a wait): done before counting.
    publish(&backend, "burst", Message::new("m0")).await;
    let mut confirmations = Vec::new();
    let mut waited = 0;
    for i in 1..200 {
        // Without waiting for confirmations: librdkafka's queue (10) fills up, send waits.
        let send = backend.send("burst", Message::new(format!("m{i}")));
        if matches!(send, futures::future::Either::Right(_)) {
            waited += 1;
        }
        confirmations.push(send.await.unwrap());
    }
    assert!(waited > 0, "the queue never filled up");
    let receipts = futures::future::try_join_all(confirmations).await.unwrap();
    let offsets = receipt_offsets(&receipts);
    assert_eq!(offsets, (1..200).collect::<Vec<i64>>(), "in send order");
    backend.close().await.unwrap();
}

/// A send still waiting for room in librdkafka's queue when the backend closes is refused as
/// closed: it is not queued after closing flushed (and reported), to be sent or failed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_queue_room_at_close_is_refused() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("closing", 1, 1).unwrap();
    let backend = connect_with_a_queue_of_ten(&cluster).await;
    // The first send to a topic looks it up: done before the queue fills.
    publish(&backend, "closing", Message::new("m0")).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(2))
        .unwrap();
    let queued = send_unconfirmed(&backend, "closing", 10).await;
    let waiting = backend.send("closing", Message::new("late"));
    assert!(
        matches!(waiting, futures::future::Either::Right(_)),
        "the queue was not full"
    );
    let closing = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        backend.close().await
    };
    let (answer, closed) = tokio::time::timeout(PATIENCE, async { tokio::join!(waiting, closing) })
        .await
        .expect("the waiting send is answered");
    closed.unwrap();
    for confirmation in queued {
        confirmation.await.expect("queued before close: flushed");
    }
    match answer {
        Err(error) => assert_eq!(error.kind(), ErrorKind::Closed, "{error}"),
        Ok(_) => panic!("the send waiting for room was queued after close began"),
    }
}

/// Publishes the cluster has not answered when `close_timeout` runs out fail as closed, and
/// `close` says that not every one was confirmed: none is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_unanswered_at_the_close_timeout_fail_as_closed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("slow", 1, 1).unwrap();
    let mut config = config(&cluster);
    config.close_timeout = Duration::from_millis(300);
    let backend = connect_with(config).await;
    publish(&backend, "slow", Message::new("m0")).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(20))
        .unwrap();
    let pending = send_unconfirmed(&backend, "slow", 5).await;
    let closed = tokio::time::timeout(PATIENCE, backend.close())
        .await
        .expect("close ends after its timeout");
    let error = closed.expect_err("close reports the unconfirmed publishes");
    assert!(error.to_string().contains("not all confirmed"), "{error}");
    for confirmation in pending {
        let answer = tokio::time::timeout(PATIENCE, confirmation)
            .await
            .expect("a purged publish is answered");
        match answer {
            Err(error) => assert_eq!(error.kind(), ErrorKind::Closed, "{error}"),
            Ok(receipt) => panic!("confirmed after a 20 s round trip: {receipt:?}"),
        }
    }
}

/// Many first sends to a topic while the cluster does not answer share one failed lookup:
/// they are not answered one `connect_timeout` after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sends_waiting_for_a_failed_lookup_share_its_failure() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("silent", 1, 1).unwrap();
    let config = KafkaConfig {
        connect_timeout: Duration::from_secs(1),
        ..config(&cluster)
    };
    let backend = connect_with(config).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(30))
        .unwrap();
    let started = Instant::now();
    let sends = (0..16).map(|i| backend.send("silent", Message::new(format!("m{i}"))));
    let answers = futures::future::join_all(sends).await;
    let waited = started.elapsed();
    for answer in answers {
        let Err(error) = answer else {
            panic!("the lookup failed, yet a send was queued")
        };
        assert!(
            matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Connection),
            "{error}"
        );
    }
    // One lookup takes about a second: sixteen in turn would take sixteen.
    assert!(waited < Duration::from_secs(8), "answered after {waited:?}");
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    backend.close().await.unwrap();
}

/// A message whose answer does not come within the delivery timeout may have been written: the
/// error says so, for a caller deciding whether to send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_publish_says_it_may_have_been_stored() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("slow", 1, 1).unwrap();
    let config = KafkaConfig {
        delivery_timeout: Duration::from_secs(1),
        ..config(&cluster)
    };
    let backend = connect_with(config).await;
    // The first publish meets the connection and the topic's metadata within the 1 s delivery
    // timeout, which a machine busy with the other tests can miss once.
    let mut warmed = None;
    for _ in 0..5 {
        let sent = backend
            .send("slow", Message::new("m0"))
            .await
            .expect("queued");
        warmed = Some(sent.await);
        if warmed.as_ref().is_some_and(Result::is_ok) {
            break;
        }
    }
    assert!(
        warmed.as_ref().is_some_and(Result::is_ok),
        "no publish confirmed before the cluster slowed down: {warmed:?}"
    );
    cluster
        .broker_round_trip_time(1, Duration::from_secs(3))
        .unwrap();
    let error = backend
        .send("slow", Message::new("late").with_id("late-1"))
        .await
        .expect("queued")
        .await
        .expect_err("no answer within the delivery timeout");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    let text = error.to_string();
    assert!(
        text.contains("message late-1 to topic slow was not confirmed by the broker; it may or may not have been stored"),
        "{text}"
    );
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    backend.close().await.unwrap();
}

/// The largest payload the backend accepts fits in a dead letter too, with the longest reason
/// and the longest topic and group names a subscription with dead letters takes (their
/// dead-letter topic at the 200-character limit): a message that fails its handler is never
/// stuck because its dead letter is too large to publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_payload_can_be_dead_lettered() {
    let cluster = MockCluster::new(1).unwrap();
    let topic = format!("big-{}", "t".repeat(146));
    let group = "g".repeat(45);
    let dead_letters = format!("{topic}.{group}.dlq");
    assert_eq!(dead_letters.len(), broker_api::naming::MAX_NAME_LEN);
    cluster.create_topic(&topic, 1, 1).unwrap();
    cluster.create_topic(&dead_letters, 1, 1).unwrap();
    let backend = connect(&cluster).await;
    let largest = backend
        .capabilities()
        .max_payload_bytes
        .expect("a payload limit");
    let broker = Broker::new(backend);
    let bytes = broker_api::Topic::bytes(topic.clone());
    let message = Message::new(vec![7u8; largest])
        .with_key("k".repeat(200))
        .with_header("trace", "t".repeat(200));
    broker
        .publisher(&bytes)
        .publish_message(message)
        .await
        .expect("the largest payload is published");
    let running = broker
        .subscriber(&bytes, group.clone())
        .retry(broker_testkit::support::fast_retry(1))
        .at_least_once(|_: broker_api::Received<bytes::Bytes>| async {
            Err::<(), _>(broker_api::HandlerError::from("e".repeat(2000)))
        })
        .await
        .unwrap();
    let mut letters = broker
        .backend()
        .subscribe(SubscribeRequest::new(dead_letters.clone(), "reader"))
        .await
        .unwrap();
    let letter = next_within(&mut letters, PATIENCE).await;
    assert_eq!(letter.payload.len(), largest);
    letter.ack().await.unwrap();
    letters.close().await.unwrap();
    running.close().await.expect("the subscription ran on");
    broker.close().await.unwrap();
}

/// After a fatal error librdkafka's idempotent producer sends nothing more (an out-of-order
/// sequence the broker refused): the message in flight fails with the broker's error, and the
/// next send goes through a new producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_is_survived_with_a_new_producer() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("fatal", 1, 1).unwrap();
    let backend = connect(&cluster).await;
    publish(&backend, "fatal", Message::new("m0")).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    backend
        .send("fatal", Message::new("m1"))
        .await
        .expect("queued")
        .await
        .expect_err("the broker refused the sequence");
    for id in ["m2", "m3"] {
        let receipt = backend
            .send("fatal", Message::new(id).with_id(id))
            .await
            .expect("handed to a new producer")
            .await
            .expect("published by the new producer");
        assert_eq!(receipt.message_id.as_str(), id);
    }
    backend.close().await.expect("close");
}

/// A fatal error a new producer would meet too (credentials not allowed to write
/// idempotently) is not met by replacing the producer over and over: publishes fail, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_a_new_producer_would_meet_too_fails_publishes_with_the_reason() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("denied", 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let backend = connect(&cluster).await;
    let first = match backend.send("denied", Message::new("m1")).await {
        Ok(confirmation) => confirmation.await.map(drop),
        Err(e) => Err(e),
    };
    let first = first.expect_err("the producer may not write idempotently");
    let later = backend
        .send("denied", Message::new("m2").with_id("m2"))
        .await
        .expect_err("nothing is sent after the fatal error");
    let text = later.to_string();
    assert!(
        text.contains("message m2 to topic denied was not sent: the producer stopped for good")
            && text.contains("ClusterAuthorizationFailed"),
        "first: {first}; later: {text}"
    );
    let _ = backend.close().await;
}
