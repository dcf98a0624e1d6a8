//! The conformance suite and RabbitMQ's own cases against a real RabbitMQ
//! (`scripts/brokers.sh start rabbitmq`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_RABBITMQ`. Skipped when it is unset, failed with `BROKER_REQUIRE_LIVE=1`.
//!
//! `BROKER_TEST_RABBITMQ_QUEUE_TYPE=classic` runs them on classic queues (quorum by default).
//!
//! The cases that disturb the broker (restarting it, dropping every connection) take the broker
//! for themselves: they wait until the running cases finish, and the others wait for them.

mod connection;
mod consuming;
mod publishing;
mod resource_alarm;
mod support;
mod topology;

use std::time::Duration;

use async_trait::async_trait;
use broker_api::Broker;
use broker_testkit::support::run_case;
use broker_testkit::{live, Harness, NoRestart};

use support::{backend, QUEUE_TYPE_VAR};

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

    async fn connect_without_provisioning(&self) -> Option<broker_api::Result<Broker>> {
        Some(backend(&self.live.address, false).await.map(Broker::new))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::restart_managed("rabbitmq", ENDPOINT_VAR, &self.live.address).await
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
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

// A RabbitMQ restarted mid-stream: publishing and the subscription resume, nothing confirmed
// is lost.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);

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
