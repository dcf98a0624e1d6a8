//! The conformance suite and RabbitMQ's own cases against a real RabbitMQ
//! (`scripts/brokers.sh start rabbitmq`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_RABBITMQ`. Skipped when it is unset, failed with `BROKER_REQUIRE_LIVE=1`.
//!
//! `BROKER_TEST_RABBITMQ_QUEUE_TYPE=classic` runs them on classic queues (quorum by default).
//!
//! The cases that disturb the broker (restarting it, dropping every connection) take the broker
//! for themselves: they wait until the running cases finish, and the others wait for them.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use broker_api::{
    Backend, Broker, ConnectOptions, ErrorKind, Message, SubscribeRequest, TopicSpec,
};
use broker_rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use broker_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use broker_rabbitmq::{QueueType, RabbitMqBackend, RabbitMqConfig};
use broker_testkit::support::{fresh_topic, next_within, run_case, unique, Inbox};
use broker_testkit::{live, Harness, NoRestart};
use futures::StreamExt;

const ENDPOINT_VAR: &str = "BROKER_TEST_RABBITMQ";

/// Connects to the RabbitMQ under test with default settings (quorum queues).
struct RabbitMq {
    live: live::Endpoint,
}

#[async_trait]
impl Harness for RabbitMq {
    async fn connect(&self) -> broker_api::Result<Broker> {
        Ok(Broker::new(backend(&self.live.address, true).await?))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::brokers_script("restart", "rabbitmq")
            .await
            .map(drop)
            .map_err(NoRestart::Failed)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Set to `classic` to run everything on classic queues instead of quorum queues.
const QUEUE_TYPE_VAR: &str = "BROKER_TEST_RABBITMQ_QUEUE_TYPE";

async fn backend(uri: &str, auto_provision: bool) -> broker_api::Result<RabbitMqBackend> {
    backend_with(uri, auto_provision, |_| {}).await
}

/// [`backend`], with `adjust` applied to its configuration.
async fn backend_with(
    uri: &str,
    auto_provision: bool,
    adjust: impl FnOnce(&mut RabbitMqConfig),
) -> broker_api::Result<RabbitMqBackend> {
    let queue_type = match std::env::var(QUEUE_TYPE_VAR).as_deref() {
        Ok("classic") => QueueType::Classic,
        _ => QueueType::Quorum,
    };
    let mut config = RabbitMqConfig {
        uri: uri.to_owned(),
        queue_type,
        ..RabbitMqConfig::default()
    };
    adjust(&mut config);
    RabbitMqBackend::connect(
        config,
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

/// The harness for an ordinary case (sharing the broker), or `None` to skip.
async fn shared() -> Option<RabbitMq> {
    live::Endpoint::shared(ENDPOINT_VAR)
        .await
        .map(|live| RabbitMq { live })
}

/// The harness for a case that disturbs the broker (alone on it), or `None` to skip.
async fn exclusive() -> Option<RabbitMq> {
    live::Endpoint::exclusive(ENDPOINT_VAR)
        .await
        .map(|live| RabbitMq { live })
}

broker_testkit::conformance_suite!(shared().await);

/// Connects with `rabbitmq.prefetch` far above the `max_in_flight` of the cases it runs.
struct LargePrefetch(RabbitMq);

#[async_trait]
impl Harness for LargePrefetch {
    async fn connect(&self) -> broker_api::Result<Broker> {
        let backend = backend_with(&self.0.live.address, true, |config| {
            config.prefetch = Some(1000);
        })
        .await?;
        Ok(Broker::new(backend))
    }

    fn patience(&self) -> Duration {
        self.0.patience()
    }
}

/// `rabbitmq.prefetch` above a subscription's `max_in_flight` does not lift the bound: RabbitMQ
/// would send that many ahead, each an unsettled delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_above_max_in_flight_keeps_the_bound() {
    let Some(harness) = shared().await else {
        return;
    };
    let harness = LargePrefetch(harness);
    run_case(
        "prefetch_above_max_in_flight_keeps_the_bound",
        broker_testkit::cases::bounded_in_flight(&harness),
    )
    .await;
}

// A RabbitMQ restarted mid-stream: publishing and the subscription resume, nothing confirmed
// is lost.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);

/// Every connection dropped by the broker (`rabbitmqctl close_all_connections`): publishes in
/// flight are published again or fail, never lost once confirmed; the subscription resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_is_survived() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("dropped_connection_is_survived", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "dropped", &["g"]).await);
        let publisher = broker.publisher(&topic);
        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe");
        let mut confirmations = Vec::new();
        let mut confirmed = Vec::new();
        for i in 0..400 {
            if i == 200 {
                close_all_connections().await;
            }
            let value = format!("d-{i}");
            confirmations.push((value.clone(), publisher.send(&value).await));
        }
        for (value, confirmation) in confirmations {
            let outcome = match confirmation {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => confirmed.push(value),
                Err(e) => assert!(
                    e.kind() == ErrorKind::Connection || e.kind() == ErrorKind::Timeout,
                    "a publish failed for another reason than the drop: {e}"
                ),
            }
        }
        assert!(confirmed.len() >= 200, "only {} confirmed", confirmed.len());
        // Publishing resumes once the connection is back: one sent after the drop goes through
        // (the ones above may all have failed before the reconnect), and it is delivered.
        let deadline = Instant::now() + harness.patience();
        loop {
            match publisher.publish(&"after-drop".to_owned()).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "not reconnected yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no publish went through after the drop: {e}"),
            }
        }
        confirmed.push("after-drop".to_owned());
        let received = inbox
            .wait_until("every confirmed message", harness.patience(), |r| {
                let got: std::collections::HashSet<&str> =
                    r.iter().map(|m| m.value.as_str()).collect();
                confirmed.iter().all(|v| got.contains(v.as_str()))
            })
            .await;
        assert!(received.len() >= confirmed.len());
        running.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// A subscription whose topic this backend deletes ends, instead of declaring the group's
/// queue again (which would bring the topic back, empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_its_subscriptions() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("deleting_a_topic_ends_its_subscriptions", async {
        let backend = backend(&harness.live.address, true).await.expect("connect");
        let topic = unique("deleted-under");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .expect("declare");
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .expect("subscribe");
        backend.delete_topic(&topic).await.expect("delete");
        let ended = tokio::time::timeout(harness.patience(), stream.next())
            .await
            .expect("the stream ends when its topic is deleted");
        assert!(ended.is_none(), "the stream ends");
        assert!(
            !queue_exists(&harness.live.address, &format!("{topic}.g")).await,
            "the group's queue was declared again"
        );
        backend.close().await.expect("close");
    })
    .await;
}

/// A process that declared many groups reconnects even when declaring them all again takes
/// longer than `connect_timeout`: that bounds each declaration, not all of them together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_declares_a_large_topology_again() {
    const GROUPS: usize = 300;
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("reconnecting_declares_a_large_topology_again", async {
        let backend = backend_with(&harness.live.address, true, |config| {
            config.connect_timeout = Duration::from_millis(300);
            config.queue_type = QueueType::Classic;
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let name = unique("large");
        let spec = (0..GROUPS).fold(TopicSpec::new(name.as_str()), |spec, group| {
            spec.group(format!("g{group}"))
        });
        broker.ensure_topic(&spec).await.expect("declare");
        let publisher = broker.publisher(&broker_api::Topic::text(name.as_str()));
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("publish");
        close_all_connections().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match publisher.publish(&"after".to_owned()).await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "still not reconnected after 30 s: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        broker.backend().delete_topic(&name).await.expect("delete");
        broker.close().await.expect("close");
    })
    .await;
}

/// A backend opens two connections; when only one can be opened (the virtual host allows
/// one), connecting fails and the one that was opened is closed, not kept up for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_opened_backend_leaves_no_connection() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("a_half_opened_backend_leaves_no_connection", async {
        rabbitmqctl(&["set_vhost_limits", "-p", "/", r#"{"max-connections": 1}"#]).await;
        let restore = RestoreWith(&["clear_vhost_limits", "-p", "/"]);
        // RabbitMQ may admit both when they come at once: try until it refuses one.
        let mut outcome = backend(&harness.live.address, true).await;
        for _ in 0..20 {
            let Ok(both) = &outcome else {
                break;
            };
            both.close().await.expect("close");
            tokio::time::sleep(Duration::from_millis(300)).await;
            outcome = backend(&harness.live.address, true).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = rabbitmqctl(&["list_connections", "client_properties"]).await;
        while left.contains("broker-rs") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            left = rabbitmqctl(&["list_connections", "client_properties"]).await;
        }
        drop(restore);
        let err = outcome.expect_err("only one of the two connections could be opened");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("connection limit"), "{err}");
        assert!(
            !left.contains("broker-rs"),
            "a connection was left open ({err}): {left}"
        );
    })
    .await;
}

/// While reconnecting fails (the password changed meanwhile), a publish that waited for the
/// connection fails saying why the last attempt failed, not only that it is reconnecting; once
/// the login works again, publishing resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reconnect_says_why() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("a_failing_reconnect_says_why", async {
        let backend = backend_with(&harness.live.address, true, |config| {
            config.retry_timeout = Duration::from_secs(3);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let topic = broker_api::Topic::text(fresh_topic(&broker, "relogin", &["g"]).await);
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("publish");
        rabbitmqctl(&["change_password", "guest", "not-the-configured-one"]).await;
        let restore = RestoreWith(&["change_password", "guest", "guest"]);
        close_all_connections().await;
        let err = publisher
            .publish(&"during".to_owned())
            .await
            .expect_err("no connection while the login is refused");
        drop(restore);
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(
            err.to_string().contains("last attempt: ") && err.to_string().contains("refused"),
            "{err}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = publisher.publish(&"after".to_owned()).await {
            assert!(Instant::now() < deadline, "not reconnected: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        broker.close().await.expect("close");
    })
    .await;
}

/// Deliveries the client received before the connection dropped are not handed out once it
/// is gone: RabbitMQ gives them back, and an at-most-once stream would yield them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_yields_nothing_twice_across_a_dropped_connection() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("at_most_once_across_a_dropped_connection", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "amo-dropped", &["g"]).await);
        let publisher = broker.publisher(&topic);
        let values: Vec<String> = (0..300).map(|i| format!("a-{i}")).collect();
        publisher.publish_batch(&values).await.expect("published");
        let mut stream = broker
            .subscriber(&topic, "g")
            .max_in_flight(256)
            .at_most_once()
            .await
            .expect("subscribe");
        let mut seen = std::collections::HashMap::<String, u32>::new();
        for _ in 0..10 {
            let value = next_within(&mut stream, harness.patience()).await.value;
            *seen.entry(value).or_default() += 1;
        }
        // Let the client buffer what the prefetch allows, then drop the connection under it.
        // RabbitMQ's queue statistics lag (every 5 s by default): wait for them to show it.
        let queue = format!("{}.g", topic.name());
        let looking = Instant::now();
        while unacknowledged(&queue).await == 0 {
            assert!(
                looking.elapsed() < Duration::from_secs(20),
                "nothing was sent ahead to the client: the case tests nothing"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        close_all_connections().await;
        let deadline = Instant::now() + harness.patience() * 2;
        while seen.len() < values.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} values seen",
                seen.len(),
                values.len()
            );
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Ok(received))) => *seen.entry(received.value).or_default() += 1,
                Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
                Ok(None) => panic!("the stream ended"),
                Err(_) => {}
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "yielded twice: {twice:?}");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// After a dropped connection the stream still holds at most `max_in_flight` unsettled
/// deliveries: those of the old channel count until they are settled (which does nothing:
/// RabbitMQ delivers them again), although the new channel's prefetch would let as many more in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bound_holds_across_a_dropped_connection() {
    const LIMIT: usize = 5;
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("in_flight_bound_across_a_dropped_connection", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "bound-dropped", &["g"]).await;
        let values: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
        broker
            .publisher(&broker_api::Topic::text(name.as_str()))
            .publish_batch(&values)
            .await
            .expect("published");
        let mut stream = broker
            .backend()
            .subscribe(SubscribeRequest::new(&name, "g").max_in_flight(LIMIT))
            .await
            .expect("subscribe");
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            held.push(next_within(&mut stream, harness.patience()).await);
        }
        close_all_connections().await;
        let extra = tokio::time::timeout(harness.quiet_period() * 2, stream.next()).await;
        assert!(
            extra.is_err(),
            "a delivery beyond max_in_flight = {LIMIT} arrived after the reconnect"
        );
        // Settling them does nothing on the dead channel; it frees their slots.
        for delivery in held {
            delivery.ack().await.expect("ack");
        }
        let mut redelivered = Vec::new();
        for _ in 0..LIMIT {
            redelivered.push(next_within(&mut stream, harness.patience()).await);
        }
        for delivery in redelivered {
            delivery.ack().await.expect("ack");
        }
        stream.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

async fn close_all_connections() {
    rabbitmqctl(&["close_all_connections", "test: dropped connection"]).await;
}

/// A publish no group queue would take (a topic without groups) is an error, not a silent drop;
/// the publisher keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_an_error() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("unroutable_publish_is_an_error", async {
        let broker = harness.connect().await.expect("connect");
        let lonely = broker_api::Topic::text(fresh_topic(&broker, "lonely", &[]).await);
        let err = broker
            .publisher(&lonely)
            .publish(&"nobody listens".to_owned())
            .await
            .expect_err("an unroutable publish must fail");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("no group queue is bound"), "{err}");
        // A topic auto-provisioned by the publish itself has no group either.
        let fresh = broker_api::Topic::text(unique("never-declared"));
        let err = broker
            .publisher(&fresh)
            .publish(&"x".to_owned())
            .await
            .expect_err("an unroutable publish must fail");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        // Many in flight, routable and not, on the same connection: each gets its own answer.
        let routed = broker_api::Topic::text(fresh_topic(&broker, "routed", &["g"]).await);
        let mut pending = Vec::new();
        for i in 0..100 {
            let (topic, ok) = if i % 10 == 0 {
                (&lonely, false)
            } else {
                (&routed, true)
            };
            let confirmation = broker
                .publisher(topic)
                .send(&format!("m-{i}"))
                .await
                .expect("send");
            pending.push((ok, confirmation));
        }
        for (ok, confirmation) in pending {
            let outcome = confirmation.await;
            assert_eq!(outcome.is_ok(), ok, "{outcome:?}");
        }
        // A burst of unroutable messages on one channel: RabbitMQ confirms them with multiple
        // acks, and lapin hands their returned messages to the confirms in no set order.
        let mut pending = Vec::new();
        for i in 0..2000 {
            let confirmation = broker
                .publisher(&lonely)
                .send(&format!("lost-{i}"))
                .await
                .expect("send");
            pending.push(confirmation);
        }
        let mut confirmed = 0;
        for confirmation in pending {
            if let Ok(receipt) = confirmation.await {
                confirmed += 1;
                eprintln!("reported published: {}", receipt.message_id);
            }
        }
        assert_eq!(confirmed, 0, "unroutable messages reported published");
        broker.close().await.expect("close");
    })
    .await;
}

/// More messages than the confirm window, all sent before any confirmation is awaited (as
/// `publish_batch` does): the window's slots come back as the broker confirms, so sending
/// never waits for a confirmation nobody polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_confirm_window_before_awaiting_any() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "sends_beyond_the_confirm_window_before_awaiting_any",
        async {
            let config = RabbitMqConfig {
                uri: harness.live.address.clone(),
                confirm_window: 8,
                ..RabbitMqConfig::default()
            };
            let backend = RabbitMqBackend::connect(config, ConnectOptions::default())
                .await
                .expect("connect");
            let broker = Broker::new(backend);
            let topic = broker_api::Topic::text(fresh_topic(&broker, "window", &["g"]).await);
            let values: Vec<String> = (0..200).map(|i| format!("m-{i}")).collect();
            let publisher = broker.publisher(&topic);
            let publishing = publisher.publish_batch(&values);
            let receipts = tokio::time::timeout(Duration::from_secs(30), publishing)
                .await
                .expect("a batch larger than the confirm window must not wait forever")
                .expect("publish batch");
            assert_eq!(receipts.len(), values.len());
            broker.close().await.expect("close");
        },
    )
    .await;
}

/// A message published by another AMQP program, without `message_id` or any property, is
/// delivered with `message_id: None`, its routing key as key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_message_without_id_is_delivered() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("foreign_message_without_id_is_delivered", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "foreign", &["g"]).await;

        let raw = Connection::connect(&harness.live.address, ConnectionProperties::default())
            .await
            .expect("raw lapin connection");
        let channel = raw.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = channel
            .basic_publish(
                name.as_str().into(),
                "order-42".into(),
                BasicPublishOptions::default(),
                b"from elsewhere",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        raw.close(200, "done".into()).await.expect("close raw");

        let mut stream = broker
            .subscriber(&broker_api::Topic::text(name.as_str()), "g")
            .manual()
            .await
            .expect("subscribe");
        let incoming = tokio::time::timeout(harness.patience(), stream.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("a delivery");
        assert_eq!(incoming.value().expect("text"), "from elsewhere");
        let meta = incoming.metadata();
        assert_eq!(meta.message_id, None);
        assert_eq!(meta.key.as_deref(), Some("order-42"));
        assert_eq!(meta.content_type, None);
        assert_eq!(meta.publish_time, None);
        assert_eq!(meta.attempt, Some(1));
        assert_eq!(&*meta.topic, name.as_str());
        match &meta.position {
            broker_api::Position::Amqp(amqp) => {
                assert_eq!(amqp.exchange, name);
                assert_eq!(amqp.routing_key, "order-42");
                assert!(!amqp.redelivered);
            }
            other => panic!("expected an AMQP position, got {other:?}"),
        }
        incoming.ack().await.expect("ack");
        stream.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// With auto-provisioning off, a missing topic or group is `NotFound`, and the backend keeps
/// working for topics that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topology_is_not_found_without_auto_provisioning() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("missing_topology_is_not_found", async {
        let provisioning =
            Broker::new(backend(&harness.live.address, true).await.expect("connect"));
        let existing = fresh_topic(&provisioning, "existing", &["g"]).await;
        let strict = backend(&harness.live.address, false)
            .await
            .expect("connect");

        let missing = unique("missing");
        let err = send(&strict, &missing, Message::new("x"))
            .await
            .expect_err("publishing to a missing topic");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let Err(err) = strict
            .subscribe(SubscribeRequest::new(&existing, "undeclared"))
            .await
        else {
            panic!("subscribing a missing group must fail");
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

        send(&strict, &existing, Message::new("still works"))
            .await
            .expect("publishing to an existing topic");
        let mut stream = strict
            .subscribe(SubscribeRequest::new(&existing, "g"))
            .await
            .expect("subscribe an existing group");
        let delivery = tokio::time::timeout(harness.patience(), stream.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(&delivery.payload[..], b"still works");
        delivery.ack().await.expect("ack");
        stream.close().await.expect("close");
        strict.close().await.expect("close");
        provisioning.close().await.expect("close");
    })
    .await;
}

/// An exchange deleted behind the publisher's back: the broker closes the confirm channel; the
/// publish fails (NotFound without auto-provisioning, unroutable with it when this process did
/// not declare the group, since its binding went with the exchange), and the channel is
/// reopened for the next publishes. A process that declared the group binds it again, and the
/// publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_exchange_closes_only_its_publish() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("deleted_exchange_closes_only_its_publish", async {
        let provisioning =
            Broker::new(backend(&harness.live.address, true).await.expect("connect"));
        let doomed = fresh_topic(&provisioning, "doomed", &["g"]).await;
        let other = fresh_topic(&provisioning, "other", &["g"]).await;
        for auto_provision in [false, true] {
            let backend = backend(&harness.live.address, auto_provision)
                .await
                .expect("connect");
            send(&backend, &doomed, Message::new("first"))
                .await
                .expect("first publish");
            delete_exchange(&harness.live.address, &doomed).await;
            let err = send(&backend, &doomed, Message::new("second"))
                .await
                .expect_err("publishing to a deleted exchange");
            let expected = if auto_provision {
                ErrorKind::Rejected
            } else {
                ErrorKind::NotFound
            };
            assert_eq!(err.kind(), expected, "{err}");
            send(&backend, &other, Message::new("elsewhere"))
                .await
                .expect("another topic still publishes");
            provisioning
                .ensure_topic(&TopicSpec::new(&doomed).group("g"))
                .await
                .expect("re-create");
            if !auto_provision {
                // The strict backend forgot the exchange and checks it again.
                send(&backend, &doomed, Message::new("third"))
                    .await
                    .expect("publishing after it was re-created");
            }
            backend.close().await.expect("close");
        }
        provisioning.close().await.expect("close");

        let declaring = backend(&harness.live.address, true).await.expect("connect");
        let restored = unique("restored");
        declaring
            .ensure_topic(&TopicSpec::new(&restored).group("g"))
            .await
            .expect("declare");
        send(&declaring, &restored, Message::new("first"))
            .await
            .expect("first publish");
        delete_exchange(&harness.live.address, &restored).await;
        send(&declaring, &restored, Message::new("second"))
            .await
            .expect("published again once the exchange and its binding were declared again");
        let mut stream = declaring
            .subscribe(SubscribeRequest::new(&restored, "g"))
            .await
            .expect("subscribe");
        for expected in ["first", "second"] {
            let delivery = next_within(&mut stream, harness.patience()).await;
            assert_eq!(&delivery.payload[..], expected.as_bytes());
            delivery.ack().await.expect("ack");
        }
        stream.close().await.expect("close the stream");
        // Deleted with its queue by someone else: the queue is not created again, and the
        // publish, which no queue takes, fails.
        delete_exchange(&harness.live.address, &restored).await;
        delete_queue(&harness.live.address, &format!("{restored}.g")).await;
        let err = send(&declaring, &restored, Message::new("third"))
            .await
            .expect_err("no queue takes it");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(
            !queue_exists(&harness.live.address, &format!("{restored}.g")).await,
            "the deleted group queue was created again"
        );
        declaring.delete_topic(&restored).await.expect("delete");
        declaring.close().await.expect("close");
    })
    .await;
}

/// A topic deleted with its queue behind a running subscription's back (while its handler
/// ran), then its exchange declared again by a publish: the subscription consumes on,
/// declaring its queue again, instead of ending as if this backend had deleted the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_outlives_its_topic_deleted_behind_its_back() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "subscription_outlives_its_topic_deleted_behind_its_back",
        async {
            let broker = Broker::new(backend(&harness.live.address, true).await.expect("connect"));
            let name = fresh_topic(&broker, "behind", &["g"]).await;
            let topic = broker_api::Topic::text(name.as_str());
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let started = std::sync::Arc::new(tokio::sync::Notify::new());
            let inbox = Inbox::new();
            let handler = {
                let (gate, started, inbox) = (gate.clone(), started.clone(), inbox.clone());
                move |message: broker_api::Received<String>| {
                    let (gate, started, inbox) = (gate.clone(), started.clone(), inbox.clone());
                    async move {
                        if message.value == "first" {
                            started.notify_one();
                            drop(gate.acquire().await);
                        }
                        inbox.push(message);
                        Ok(())
                    }
                }
            };
            let running = broker
                .subscriber(&topic, "g")
                .at_least_once(handler)
                .await
                .expect("subscribe");
            let publisher = broker.publisher(&topic);
            publisher
                .publish(&"first".to_owned())
                .await
                .expect("publish");
            tokio::time::timeout(harness.patience(), started.notified())
                .await
                .expect("the handler started");
            delete_queue(&harness.live.address, &format!("{name}.g")).await;
            delete_exchange(&harness.live.address, &name).await;
            // Declares the exchange again; no queue takes the message.
            let _ = publisher.publish(&"lost".to_owned()).await;
            gate.add_permits(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!running.is_finished(), "the subscription ended");
            let deadline = Instant::now() + harness.patience();
            while publisher.publish(&"after".to_owned()).await.is_err() {
                assert!(Instant::now() < deadline, "no queue took a publish again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            inbox
                .wait_until(
                    "the message published after",
                    harness.patience(),
                    |received| received.iter().any(|m| m.value == "after"),
                )
                .await;
            running.close().await.expect("close");
            broker.close().await.expect("close broker");
        },
    )
    .await;
}

/// A topic's exchange and one group's queue deleted behind the back of that group's running
/// subscription: the subscription declares both again, also when the exchange goes between
/// its declaration and the binding (a race once ended the subscription as `NotFound`), and
/// the topic's other groups are bound again too, so they get what is published from then on
/// (a publish finds the exchange, and nothing tells the publisher it was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_groups_are_bound_again_when_a_subscription_restores_the_exchange() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("other_groups_are_bound_again", async {
        for exchange_first in [true, false] {
            restored_exchange_binds_every_group(&harness, exchange_first).await;
        }
    })
    .await;
}

async fn restored_exchange_binds_every_group(harness: &RabbitMq, exchange_first: bool) {
    let broker = Broker::new(backend(&harness.live.address, true).await.expect("connect"));
    let name = fresh_topic(&broker, "rebound", &["g1", "g2"]).await;
    let topic = broker_api::Topic::text(name.as_str());
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g1")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let queue = format!("{name}.g1");
    if exchange_first {
        delete_exchange(&harness.live.address, &name).await;
        delete_queue(&harness.live.address, &queue).await;
    } else {
        delete_queue(&harness.live.address, &queue).await;
        delete_exchange(&harness.live.address, &name).await;
    }
    let deadline = Instant::now() + harness.patience();
    while !queue_exists(&harness.live.address, &queue).await {
        assert!(
            Instant::now() < deadline,
            "g1's queue was not declared again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publisher = broker.publisher(&topic);
    let deadline = Instant::now() + harness.patience();
    loop {
        let _ = publisher.publish(&"probe".to_owned()).await;
        if !inbox.is_empty() {
            break;
        }
        assert!(
            !running.is_finished() && Instant::now() < deadline,
            "g1 did not read again (exchange deleted first: {exchange_first})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher
        .publish(&"after".to_owned())
        .await
        .expect("publish");
    let mut g2 = broker
        .backend()
        .subscribe(SubscribeRequest::new(name.as_str(), "g2"))
        .await
        .expect("subscribe g2");
    let mut seen = Vec::new();
    while !seen.iter().any(|payload| payload == "after") {
        let delivery = next_within(&mut g2, harness.patience()).await;
        seen.push(String::from_utf8_lossy(&delivery.payload).into_owned());
        delivery.ack().await.expect("ack");
    }
    g2.close().await.expect("close g2");
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A broker whose `max_message_size` is below the client's limit closes the confirm channel of
/// a larger publish: that publish fails as `Rejected`, the channel is reopened, and the topic
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_size_limit_fails_only_that_publish() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("broker_size_limit_fails_only_that_publish", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "sizes", &["g"]).await;
        // New channels read the limit when they open; the topic's channel opens below.
        rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 1048576).",
        ])
        .await;
        let limit = RestoreWith(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 134217728).",
        ]);
        let outcome = async {
            let backend = broker.backend();
            let big = backend
                .send(&name, Message::new(vec![1u8; 2 * 1024 * 1024]))
                .await
                .expect("handed over")
                .await;
            let small = backend
                .send(&name, Message::new("small"))
                .await
                .expect("handed over")
                .await;
            (big, small)
        }
        .await;
        drop(limit);
        let (big, small) = outcome;
        let err = big.expect_err("the broker refuses 2 MiB over its 1 MiB limit");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(
            err.to_string().contains("larger than the broker accepts"),
            "{err}"
        );
        small.expect("the next publish goes through on a new channel");
        broker.close().await.expect("close");
    })
    .await;
}

/// Properties go in one frame of at most `frame_max` bytes: a message whose headers would
/// overflow it is refused before it is sent (RabbitMQ would close the whole connection with a
/// FRAME_ERROR, and every publish again would close the next one), and one that just fits is
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_larger_than_a_frame_are_refused_before_sending() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("headers_larger_than_a_frame", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "bigheaders", &["g"]).await;
        // RabbitMQ's default frame_max, which scripts/brokers.sh keeps.
        const FRAME_MAX: usize = 131_072;
        // The frame of a message with id `id-1` and one header `big` holds 49 bytes besides
        // the header's value: frame (8), content header (14), delivery mode and timestamp (9),
        // the id (1 + 4), the table's length (4), the name (1 + 3), the value's type and
        // length (1 + 4).
        let with_header = |size: usize| {
            Message::new("x")
                .with_id("id-1")
                .with_header("big", "v".repeat(size))
        };
        let backend = broker.backend();
        let fits = send(backend.as_ref(), &name, with_header(FRAME_MAX - 49)).await;
        fits.expect("properties that fill the frame exactly are published");
        // One byte more is past the protocol's limit (RabbitMQ lets 8 more through); 20 000
        // more made RabbitMQ close the connection, again at every publish after reconnecting,
        // for the whole retry_timeout.
        for over in [1, 20_000] {
            let err = send(backend.as_ref(), &name, with_header(FRAME_MAX - 49 + over))
                .await
                .expect_err("properties over a frame");
            assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
            assert!(err.to_string().contains("frame_max"), "{err}");
        }
        send(backend.as_ref(), &name, Message::new("small"))
            .await
            .expect("the connection is still up");
        broker.close().await.expect("close");
    })
    .await;
}

async fn rabbitmqctl(args: &[&str]) -> String {
    let script = live::repository_root().join("scripts").join("brokers.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many messages of `queue` RabbitMQ sent to consumers that did not acknowledge them yet.
async fn unacknowledged(queue: &str) -> u64 {
    let listing = rabbitmqctl(&[
        "list_queues",
        "--quiet",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])
    .await;
    listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("queue {queue} not in {listing:?}"))
}

async fn send(backend: &dyn Backend, topic: &str, message: Message) -> broker_api::Result<()> {
    backend.send(topic, message).await?.await.map(drop)
}

/// Runs `operation` on a channel of a raw lapin connection to `uri`, then closes it: changes
/// made behind the backend's back.
async fn behind_the_back<T, F>(uri: &str, operation: impl FnOnce(Channel) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let raw = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("raw lapin connection");
    let channel = raw.create_channel().await.expect("channel");
    let outcome = operation(channel).await;
    let _ = raw.close(200, "done".into()).await;
    outcome
}

async fn delete_queue(uri: &str, name: &str) {
    behind_the_back(uri, |channel| async move {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .expect("delete queue");
    })
    .await;
}

async fn queue_exists(uri: &str, name: &str) -> bool {
    behind_the_back(uri, |channel| async move {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), passive, Default::default())
            .await
            .is_ok()
    })
    .await
}

async fn delete_exchange(uri: &str, name: &str) {
    behind_the_back(uri, |channel| async move {
        channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    })
    .await;
}

/// Connecting to a port nothing listens on fails in bounded time with a `Connection` error
/// naming the endpoint; wrong credentials fail with a clear error that does not echo the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_clear() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("connect_failures_are_clear", async {
        let started = Instant::now();
        let config = RabbitMqConfig {
            uri: "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
            connect_timeout: Duration::from_secs(3),
            ..RabbitMqConfig::default()
        };
        let err = RabbitMqBackend::connect(config, ConnectOptions::default())
            .await
            .expect_err("nothing listens on port 1");
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let wrong = harness
            .live
            .address
            .replacen("guest:guest@", "guest:not-the-password@", 1);
        let config = RabbitMqConfig {
            uri: wrong,
            ..RabbitMqConfig::default()
        };
        let err = RabbitMqBackend::connect(config, ConnectOptions::default())
            .await
            .expect_err("wrong password");
        let text = err.to_string();
        assert!(
            matches!(err.kind(), ErrorKind::Rejected | ErrorKind::Connection),
            "{text}"
        );
        assert!(
            !text.contains("not-the-password"),
            "password leaked: {text}"
        );
        assert!(text.contains("127.0.0.1:5672"), "{text}");
    })
    .await;
}

/// During a resource alarm RabbitMQ stops reading publishes, so their confirms do not come:
/// the confirm window fills and the next send waits for a slot; closing the backend fails them
/// all after `close_timeout` (`Closed`: they may or may not be stored) instead of leaving their
/// callers waiting for ever. The broker takes publishes again after the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_resource_alarm_fails_unconfirmed_publishes() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("close_during_a_resource_alarm", async {
        let backend = backend_with(&harness.live.address, true, |config| {
            config.confirm_window = 2;
            config.close_timeout = Duration::from_secs(1);
            config.retry_timeout = Duration::from_secs(2);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let name = fresh_topic(&broker, "alarm", &["g"]).await;
        let topic = broker_api::Topic::text(name.as_str());
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let doomed = fresh_topic(&broker, "alarm-doomed", &["g"]).await;
        broker
            .publisher(&broker_api::Topic::text(doomed.as_str()))
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let alarm = memory_alarm().await;
        let outcome = async {
            let mut in_window = Vec::new();
            for value in ["one", "two"] {
                let sent = publisher.send(&value.to_owned()).await;
                in_window.push(sent.expect("handed over: there is room in the window"));
            }
            let mut third = Box::pin(publisher.send(&"three".to_owned()));
            let third_at_once = tokio::time::timeout(Duration::from_millis(500), &mut third)
                .await
                .ok();
            let waits_for_a_slot = third_at_once.is_none();
            let held = tokio::time::timeout(Duration::from_millis(100), &mut in_window[0])
                .await
                .is_err();
            // Deleting a topic: the deletion goes on the consuming connection, which the
            // alarm does not block; closing the topic's confirm channel on the publishing
            // connection gets no answer and is left to the connection after 5 s.
            let deleting = Instant::now();
            let deleted = tokio::time::timeout(
                Duration::from_secs(20),
                broker.backend().delete_topic(&doomed),
            )
            .await
            .map(|outcome| (outcome, deleting.elapsed()));
            // A first close given up by its caller: the next one still closes.
            let given_up = tokio::time::timeout(Duration::from_millis(200), broker.close()).await;
            assert!(given_up.is_err(), "the first close waits for the confirms");
            let started = Instant::now();
            let closing = tokio::time::timeout(Duration::from_secs(10), broker.close());
            let (closed, third) = match third_at_once {
                Some(sent) => (closing.await, Ok(sent)),
                None => tokio::join!(
                    closing,
                    tokio::time::timeout(Duration::from_secs(10), third)
                ),
            };
            let mut settled = Vec::new();
            for confirmation in in_window {
                settled.push(tokio::time::timeout(Duration::from_secs(5), confirmation).await);
            }
            (
                waits_for_a_slot,
                held,
                deleted,
                closed,
                third,
                settled,
                started.elapsed(),
            )
        }
        .await;
        drop(alarm);
        let (waits_for_a_slot, held, deleted, closed, third, settled, took) = outcome;
        let (deleted, took_to_delete) = deleted.expect("deleting a topic during the alarm returns");
        deleted.expect("the topic is deleted during the alarm");
        assert!(
            took_to_delete < Duration::from_secs(12),
            "deleting took {took_to_delete:?}"
        );
        assert!(
            held,
            "the alarm did not hold the publish: the case tests nothing"
        );
        assert!(
            waits_for_a_slot,
            "a third send was handed over with a window of two unconfirmed"
        );
        closed
            .expect("close returns within 10 s")
            .expect("close succeeds");
        let err = third
            .expect("the send waiting for a slot ends when the backend closes")
            .expect_err("no slot freed up");
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        for confirmation in settled {
            let err = confirmation
                .expect("an unconfirmed publish is settled when the backend closes")
                .expect_err("a publish RabbitMQ never confirmed is not reported published");
            assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
            assert!(err.to_string().contains("may or may not"), "{err}");
        }
        assert!(took < Duration::from_secs(8), "close took {took:?}");
        // The broker takes publishes again once the alarm is over.
        let after = harness.connect().await.expect("connect after the alarm");
        after
            .publisher(&topic)
            .publish(&"after".to_owned())
            .await
            .expect("published after the alarm");
        after.close().await.expect("close");
    })
    .await;
}

/// During a resource alarm RabbitMQ holds confirms back: a publish unconfirmed after
/// `publish_timeout` fails with `Timeout` (it may or may not have been stored), and so does a
/// send that waits that long for a window slot (the publishes given up keep theirs until
/// RabbitMQ answers); the backend publishes again once the alarm is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_held_by_a_resource_alarm_time_out() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("publishes_held_by_a_resource_alarm_time_out", async {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let backend = backend_with(&harness.live.address, true, |config| {
            config.confirm_window = 2;
            config.publish_timeout = TIMEOUT;
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let name = fresh_topic(&broker, "alarm-timeout", &["g"]).await;
        let topic = broker_api::Topic::text(name.as_str());
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let alarm = memory_alarm().await;
        let sent_at = Instant::now();
        let mut in_window = Vec::new();
        for value in ["one", "two"] {
            let sent = publisher.send(&value.to_owned()).await;
            in_window.push(sent.expect("handed over: there is room in the window"));
        }
        // No room: the two hold their slots until RabbitMQ answers, so the send waits for one
        // and gives up after the same timeout.
        let third = async {
            match publisher.send(&"three".to_owned()).await {
                Ok(confirmation) => confirmation.await.map(drop),
                Err(e) => Err(e),
            }
        };
        let third = tokio::time::timeout(TIMEOUT * 4, third);
        let mut waited = Vec::new();
        for confirmation in in_window {
            let outcome = tokio::time::timeout(TIMEOUT * 4, confirmation).await;
            waited.push((outcome, sent_at.elapsed()));
        }
        let third = third.await;
        drop(alarm);
        for (outcome, after) in waited {
            let err = outcome
                .expect("settled within four publish timeouts")
                .expect_err("a publish RabbitMQ did not confirm is not reported published");
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(err.to_string().contains("may or may not"), "{err}");
            assert!(
                after >= TIMEOUT - Duration::from_millis(100),
                "failed after {after:?}, before the publish timeout"
            );
        }
        let err = third
            .expect("the third send ends within four publish timeouts")
            .expect_err("nothing was confirmed during the alarm");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("was not sent"), "{err}");
        publisher
            .publish(&"after".to_owned())
            .await
            .expect("the same backend publishes again after the alarm");
        broker.close().await.expect("close");
    })
    .await;
}

/// RabbitMQ blocks a connection that publishes during a resource alarm and reads nothing
/// more from it, acknowledgements included. Subscriptions consume on a connection of their
/// own: a service that publishes during an alarm (a dead letter is enough) still drains its
/// queues, whose backlog may be what raised the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_ack_while_publishing_is_blocked() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("subscriptions_ack_while_publishing_is_blocked", async {
        // One message at a time: the next is sent only once the previous one's ack was read.
        let backend = backend_with(&harness.live.address, true, |config| {
            config.prefetch = Some(1);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let topic = broker_api::Topic::text(fresh_topic(&broker, "alarm-drain", &["g"]).await);
        for i in 0..5 {
            broker
                .publisher(&topic)
                .publish(&format!("m-{i}"))
                .await
                .expect("published before the alarm");
        }
        let other = broker_api::Topic::text(fresh_topic(&broker, "alarm-held", &["g"]).await);
        let alarm = memory_alarm().await;
        let held = broker
            .publisher(&other)
            .send(&"during the alarm".to_owned())
            .await
            .expect("handed over");
        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe during the alarm");
        inbox.wait_for(5, Duration::from_secs(15)).await;
        let unconfirmed = tokio::time::timeout(Duration::from_millis(200), held).await;
        drop(alarm);
        assert!(
            unconfirmed.is_err(),
            "the publish was confirmed during the alarm: the case tests nothing"
        );
        running.close().await.expect("close the subscription");
        broker.close().await.expect("close");
    })
    .await;
}

/// Sets off RabbitMQ's memory alarm until the returned guard is dropped: a watermark of 0
/// raises it at once, and RabbitMQ blocks every publishing connection.
async fn memory_alarm() -> RestoreWith {
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]).await;
    RestoreWith(&["set_vm_memory_high_watermark", "0.4"])
}

/// Runs `rabbitmqctl` with its arguments when dropped: undoes a change to the broker's
/// settings also when its case fails or hangs, so that the cases after it run on the defaults.
struct RestoreWith(&'static [&'static str]);

impl Drop for RestoreWith {
    fn drop(&mut self) {
        let script = live::repository_root().join("scripts").join("brokers.sh");
        let restored = std::process::Command::new("bash")
            .arg(&script)
            .arg("rabbitmqctl")
            .args(self.0)
            .output();
        if !restored.is_ok_and(|output| output.status.success()) {
            eprintln!(
                "could not restore RabbitMQ's settings: run `scripts/brokers.sh rabbitmqctl {}`",
                self.0.join(" ")
            );
        }
    }
}

/// Closing a concurrent subscription whose handler outlives the shutdown timeout gives its
/// messages back to the queue in their order: the one running first, then those waiting
/// behind it for their key, so that the next consumer handles the key in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_gives_a_key_back_in_order() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("closing_gives_a_key_back_in_order", async {
        let broker = harness.connect().await.expect("connect");
        let topic = broker_api::Topic::text(fresh_topic(&broker, "keyback", &["g"]).await);
        let publisher = broker.publisher(&topic);
        for value in ["a", "b", "c"] {
            let message = publisher
                .message(&value.to_owned())
                .expect("encode")
                .with_key("k");
            publisher.publish_message(message).await.expect("publish");
        }
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let running = broker
            .subscriber(&topic, "g")
            .concurrency(4)
            .shutdown_timeout(Duration::from_millis(200))
            .at_least_once({
                let started = started.clone();
                move |message: broker_api::Received<String>| {
                    let started = started.clone();
                    async move {
                        if message.value == "a" {
                            started.notify_one();
                            // Longer than the shutdown timeout: abandoned at close.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        broker_api::HandlerResult::Ok(())
                    }
                }
            })
            .await
            .expect("subscribe");
        tokio::time::timeout(harness.patience(), started.notified())
            .await
            .expect("the first message's handler started");
        running.close().await.expect("close");

        let inbox = Inbox::new();
        let next = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe again");
        let received = inbox.wait_for(3, harness.patience()).await;
        let order: Vec<&str> = received.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(
            order[..3],
            ["a", "b", "c"],
            "the key came back out of order"
        );
        next.close().await.expect("close");
        broker.close().await.expect("close broker");
    })
    .await;
}

/// The capabilities the conformance suite gates its cases on are the documented ones: one
/// switched off by mistake would turn its cases into skips. Delivery attempts are counted by
/// quorum queues only.
#[tokio::test]
async fn capabilities_are_the_documented_ones() {
    let Some(harness) = shared().await else {
        return;
    };
    let expected = broker_api::Capabilities {
        new_group_reads_history: false,
        per_key_order: true,
        members_share_work: false,
        start_from_latest: true,
        survives_restart: true,
        delivery_attempt: !matches!(std::env::var(QUEUE_TYPE_VAR).as_deref(), Ok("classic")),
        partitions: false,
        list_topics: false,
        delete_topic: true,
        max_payload_bytes: None,
    };
    run_case(
        "capabilities_are_the_documented_ones",
        broker_testkit::cases::capabilities_are(&harness, expected),
    )
    .await;
}
