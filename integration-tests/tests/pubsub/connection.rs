//! Connecting: an unreachable endpoint.

use std::time::{Duration, Instant};

use broker_api::{ConnectOptions, ErrorKind};
use broker_pubsub::{PubSubBackend, PubSubConfig};
use broker_testkit::support::run_case;

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
