//! Connecting: an unreachable endpoint, a service that stops answering.

use std::time::{Duration, Instant};

use broker_api::{Backend, ConnectOptions, ErrorKind, Message};
use broker_pubsub::{PubSubBackend, PubSubConfig};
use broker_testkit::proxy::StallingProxy;
use broker_testkit::support::{run_case, unique};

use crate::shared;
use crate::support::config;

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

/// First sends to a topic while the service does not answer wait for one provisioning attempt
/// and share its failure: they are not answered one `admin_timeout` after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sends_waiting_for_a_failed_provisioning_share_its_failure() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("first_sends_share_a_failed_provisioning", async {
        let upstream = harness.live.address.trim_start_matches("http://");
        let proxy = StallingProxy::start(upstream).await.expect("proxy");
        let config = PubSubConfig {
            admin_timeout: Duration::from_secs(1),
            ..config(&format!("http://{}", proxy.address()))
        };
        let backend = PubSubBackend::connect(config, ConnectOptions::default())
            .await
            .expect("connect through the proxy");
        proxy.stall();
        let topic = unique("stalled");
        let started = Instant::now();
        let sends = (0..8).map(|i| backend.send(&topic, Message::new(format!("m{i}"))));
        let answers = futures::future::join_all(sends).await;
        let waited = started.elapsed();
        for answer in answers {
            let Err(error) = answer else {
                panic!("the topic was not provisioned, yet a send was queued")
            };
            assert!(
                matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Connection),
                "{error}"
            );
        }
        // One attempt takes about a second: eight in turn would take eight.
        assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
        // Not resumed: the held creation would then reach the service.
        backend.close().await.expect("close");
        drop(proxy);
    })
    .await;
}

/// A publish to a topic that exists, sent while the service stops answering (connections
/// open, nothing comes back), fails within its `publish_timeout` (twice it at most, see
/// `PubSubConfig::publish_timeout`) instead of waiting for ever; closing then returns too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_service_does_not_answer_fails_in_time() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("a_publish_the_service_does_not_answer", async {
        const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
        let (proxy, backend, topic) =
            published_through_proxy(&harness.live.address, "unanswered", |config| PubSubConfig {
                publish_timeout: PUBLISH_TIMEOUT,
                ..config
            })
            .await;

        proxy.stall();
        let started = Instant::now();
        let confirmation = backend
            .send(&topic, Message::new("during"))
            .await
            .expect("the topic is known: the send is queued");
        let answer =
            tokio::time::timeout(PUBLISH_TIMEOUT * 2 + Duration::from_secs(10), confirmation)
                .await
                .expect("the confirmation answers within the publish timeout");
        let error = answer.expect_err("the service never answered");
        assert!(
            matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Connection),
            "{error}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= PUBLISH_TIMEOUT,
            "failed after {waited:?}, before the timeout"
        );
        tokio::time::timeout(
            PUBLISH_TIMEOUT * 2 + Duration::from_secs(10),
            backend.close(),
        )
        .await
        .expect("close returns")
        .expect("close");
        drop(proxy);
    })
    .await;
}

/// `send` waits while `max_pending_messages` messages are unanswered (the service stalled),
/// also when their confirmations were dropped, and goes on once the service answers again,
/// without the confirmations being awaited: what a producer hands the client stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_while_max_pending_messages_are_unanswered() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("sends_wait_for_pending_room", async {
        let (proxy, backend, topic) =
            published_through_proxy(&harness.live.address, "pending-room", |config| {
                PubSubConfig {
                    max_pending_messages: 3,
                    ..config
                }
            })
            .await;

        proxy.stall();
        let mut confirmations = Vec::new();
        for n in 0..3 {
            let send = backend.send(&topic, Message::new(format!("stalled {n}")));
            let confirmation = tokio::time::timeout(Duration::from_secs(5), send)
                .await
                .expect("room for three messages")
                .expect("send");
            confirmations.push(confirmation);
        }
        // A dropped confirmation keeps its message's room until the service answers.
        drop(confirmations.pop());
        let fourth = backend.send(&topic, Message::new("fourth"));
        tokio::pin!(fourth);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut fourth)
                .await
                .is_err(),
            "the fourth send went through while three messages were unanswered"
        );

        proxy.resume();
        let fourth = tokio::time::timeout(Duration::from_secs(20), fourth)
            .await
            .expect("room once the service answers")
            .expect("send");
        confirmations.push(fourth);
        // Room comes back as the service answers, awaited or not: many more sends than
        // the limit go through before any confirmation is awaited.
        for n in 0..30 {
            let send = backend.send(&topic, Message::new(format!("after {n}")));
            let confirmation = tokio::time::timeout(Duration::from_secs(20), send)
                .await
                .expect("room comes back without awaiting the confirmations")
                .expect("send");
            confirmations.push(confirmation);
        }
        for confirmation in confirmations {
            tokio::time::timeout(Duration::from_secs(20), confirmation)
                .await
                .expect("answered")
                .expect("published");
        }
        backend.close().await.expect("close");
        drop(proxy);
    })
    .await;
}

/// A backend connected through a stalling proxy in front of the emulator at `address`, its
/// configuration changed by `configure`, and a fresh topic named after `what` that one
/// message was published to (so the topic is known).
async fn published_through_proxy(
    address: &str,
    what: &str,
    configure: impl FnOnce(PubSubConfig) -> PubSubConfig,
) -> (StallingProxy, PubSubBackend, String) {
    let proxy = StallingProxy::start(address.trim_start_matches("http://"))
        .await
        .expect("proxy");
    let config = configure(config(&format!("http://{}", proxy.address())));
    let backend = PubSubBackend::connect(config, ConnectOptions::default())
        .await
        .expect("connect through the proxy");
    let topic = unique(what);
    backend
        .send(&topic, Message::new("before"))
        .await
        .expect("send")
        .await
        .expect("published while the service answers");
    (proxy, backend, topic)
}
