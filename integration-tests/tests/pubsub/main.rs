//! The conformance suite and Pub/Sub's own cases against the Pub/Sub emulator
//! (`scripts/brokers.sh start pubsub`, then `eval "$(scripts/brokers.sh env)"`), found through
//! `BROKER_TEST_PUBSUB` (e.g. `http://127.0.0.1:8085`). Skipped when it is unset, failed with
//! `BROKER_REQUIRE_LIVE=1`.
//!
//! `BROKER_TEST_PUBSUB_WORKAROUNDS=off` runs them with the emulator workarounds off, i.e. with
//! the code path used against Google Cloud (cases that close and reopen a group's
//! subscription then suffer from the emulator keeping cancelled streaming pulls).
//!
//! The restart case takes the emulator for itself: it waits until the running cases finish, and
//! the cases started after it wait for it. The emulator keeps nothing across a restart, so that
//! case checks that the backend recovers and that messages published after the restart flow.

mod connection;
mod publishing;
mod pulls;
mod support;
mod topology;

use std::time::Duration;

use async_trait::async_trait;
use broker_api::Broker;
use broker_testkit::support::run_case;
use broker_testkit::{live, Harness, NoRestart};

use support::backend;

const ENDPOINT_VAR: &str = "BROKER_TEST_PUBSUB";

/// Connects to the emulator under test with short timeouts.
struct PubSub {
    live: live::Endpoint,
}

#[async_trait]
impl Harness for PubSub {
    async fn connect(&self) -> broker_api::Result<Broker> {
        Ok(Broker::new(backend(&self.live.address, true).await?))
    }

    async fn connect_without_provisioning(&self) -> Option<broker_api::Result<Broker>> {
        Some(backend(&self.live.address, false).await.map(Broker::new))
    }

    async fn restart(&self) -> Result<(), NoRestart> {
        live::restart_managed("pubsub", ENDPOINT_VAR, &self.live.address).await
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// The harness for an ordinary case (sharing the emulator), or `None` to skip.
async fn shared() -> Option<PubSub> {
    live::Endpoint::shared(ENDPOINT_VAR)
        .await
        .map(|live| PubSub { live })
}

/// The harness for a case that restarts the emulator (alone on it), or `None` to skip.
async fn exclusive() -> Option<PubSub> {
    live::Endpoint::exclusive(ENDPOINT_VAR)
        .await
        .map(|live| PubSub { live })
}

broker_testkit::conformance_suite!(shared().await);

// The emulator restarted mid-stream (it comes back empty): publishing re-creates the topic and
// its subscriptions, the running subscription reopens its streaming pull, and messages
// published after the restart flow.
broker_testkit::conformance_suite!(@cases exclusive().await; broker_restart_loses_nothing);

/// The capabilities the conformance suite gates its cases on are the documented ones: one
/// switched off by mistake would turn its cases into skips. The emulator keeps nothing across
/// a restart.
#[tokio::test]
async fn capabilities_are_the_documented_ones() {
    let Some(harness) = shared().await else {
        return;
    };
    let expected = broker_api::Capabilities {
        new_group_reads_history: false,
        per_key_order: true,
        members_share_work: true,
        start_from_latest: true,
        survives_restart: false,
        delivery_attempt: false,
        partitions: false,
        list_topics: true,
        delete_topic: true,
        max_payload_bytes: None,
    };
    run_case(
        "capabilities_are_the_documented_ones",
        broker_testkit::cases::capabilities_are(&harness, expected),
    )
    .await;
}
