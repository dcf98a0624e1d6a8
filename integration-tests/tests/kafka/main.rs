//! The conformance suite and Kafka's own cases against a real Kafka
//! (`scripts/brokers.sh start kafka`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_KAFKA`. Skipped when it is unset, failed with `BROKER_REQUIRE_LIVE=1`.
//!
//! The restart case takes the broker for itself: it waits until the running cases finish, and
//! the cases started after it wait for it.

mod connection;
mod consuming;
mod topology;

use std::time::Duration;

use async_trait::async_trait;
use broker_api::{Broker, ConnectOptions};
use broker_kafka::{KafkaBackend, KafkaConfig};
use broker_testkit::{live, Harness, NoRestart};

const ENDPOINT_VAR: &str = "BROKER_TEST_KAFKA";

/// Connects to the Kafka under test with default settings.
struct Kafka {
    live: live::Endpoint,
}

#[async_trait]
impl Harness for Kafka {
    async fn connect(&self) -> broker_api::Result<Broker> {
        Ok(Broker::new(backend(&self.live.address, true).await?))
    }

    async fn connect_without_provisioning(&self) -> Option<broker_api::Result<Broker>> {
        Some(backend(&self.live.address, false).await.map(Broker::new))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::restart_managed("kafka", ENDPOINT_VAR, &self.live.address).await
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn backend(
    bootstrap_servers: &str,
    auto_provision: bool,
) -> broker_api::Result<KafkaBackend> {
    let config = KafkaConfig {
        bootstrap_servers: bootstrap_servers.to_owned(),
        ..KafkaConfig::default()
    };
    KafkaBackend::connect(
        config,
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

/// The harness for an ordinary case (sharing the broker), or `None` to skip.
async fn shared() -> Option<Kafka> {
    live::Endpoint::shared(ENDPOINT_VAR)
        .await
        .map(|live| Kafka { live })
}

/// The harness for a case that disturbs the broker (alone on it), or `None` to skip.
async fn exclusive() -> Option<Kafka> {
    live::Endpoint::exclusive(ENDPOINT_VAR)
        .await
        .map(|live| Kafka { live })
}

broker_testkit::conformance_suite!(shared().await);

// Kafka restarted mid-stream (down for the time `brokers.sh restart` takes): publishing and the
// subscription resume by themselves, nothing confirmed is lost.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);
