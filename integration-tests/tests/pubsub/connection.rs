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
        let upstream = harness.live.address.trim_start_matches("http://");
        let proxy = StallingProxy::start(upstream).await.expect("proxy");
        let config = PubSubConfig {
            publish_timeout: PUBLISH_TIMEOUT,
            ..config(&format!("http://{}", proxy.address()))
        };
        let backend = PubSubBackend::connect(config, ConnectOptions::default())
            .await
            .expect("connect through the proxy");
        let topic = unique("unanswered");
        backend
            .send(&topic, Message::new("before"))
            .await
            .expect("send")
            .await
            .expect("published while the service answers");

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
