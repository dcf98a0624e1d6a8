//! What the mock cluster refuses, and how the adapter says so: unknown topics, credentials
//! without rights, oversized payloads, an unreachable cluster, a closed backend.

use super::*;

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
