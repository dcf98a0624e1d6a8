//! Publishing on the mock cluster: a full producer queue, the close timeout, timed-out and
//! dead-lettered publishes, the producer's fatal errors.

use super::*;

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
