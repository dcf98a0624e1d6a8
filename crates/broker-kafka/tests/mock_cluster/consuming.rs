//! Consuming on the mock cluster: what a delivery carries, the committed prefix, nacks, the
//! in-flight bound, the start position.

use super::*;

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
