//! Connecting and reconnecting: connect failures, dropped connections, failing reconnects.

use std::time::{Duration, Instant};

use broker_api::{Backend, Broker, ConnectOptions, ErrorKind, TopicSpec};
use broker_rabbitmq::{QueueType, RabbitMqBackend, RabbitMqConfig};
use broker_testkit::support::{assert_login_refused, fresh_topic, run_case, unique, Inbox};
use broker_testkit::Harness;

use crate::support::{backend, backend_with, close_all_connections, rabbitmqctl, RestoreWith};
use crate::{exclusive, shared};

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
        assert_login_refused(
            &err,
            &[ErrorKind::Rejected, ErrorKind::Connection],
            "127.0.0.1:5672",
            "not-the-password",
        );
    })
    .await;
}
