//! Helpers the cases share: backends, admin clients for changes behind a backend's back, cleanup.

use std::time::Duration;

use broker_api::{Backend, ConnectOptions};
use broker_pubsub::google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use broker_pubsub::google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use broker_pubsub::{PubSubBackend, PubSubConfig};

pub(crate) const PROJECT: &str = "broker-tests";

/// `off` turns the emulator workarounds off (the Google Cloud code path).
const WORKAROUNDS_VAR: &str = "BROKER_TEST_PUBSUB_WORKAROUNDS";

pub(crate) fn config(endpoint: &str) -> PubSubConfig {
    PubSubConfig {
        project: PROJECT.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        connect_timeout: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(30),
        admin_timeout: Duration::from_secs(10),
        emulator_workarounds: std::env::var(WORKAROUNDS_VAR)
            .ok()
            .map(|value| value != "off"),
        ..PubSubConfig::default()
    }
}

pub(crate) async fn backend(
    endpoint: &str,
    auto_provision: bool,
) -> broker_api::Result<PubSubBackend> {
    PubSubBackend::connect(
        config(endpoint),
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

pub(crate) async fn topic_admin(endpoint: &str) -> TopicAdmin {
    TopicAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("topic admin client")
}

pub(crate) async fn subscription_admin(endpoint: &str) -> SubscriptionAdmin {
    SubscriptionAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await
        .expect("subscription admin client")
}

pub(crate) async fn backend_cleanup(endpoint: &str, topic: &str) {
    let backend = backend(endpoint, true).await.expect("connect");
    backend.delete_topic(topic).await.expect("delete topic");
    backend.close().await.expect("close");
}
