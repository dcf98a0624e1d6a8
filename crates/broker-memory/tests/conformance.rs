//! The conformance suite against the in-memory backend.

use async_trait::async_trait;
use broker_api::{Broker, ConnectOptions, Result};
use broker_memory::{MemoryBackend, MemoryConfig, MemoryInstance};
use broker_testkit::Harness;
use std::sync::Arc;
use std::time::Duration;

/// Every test gets its own instance; its connections share it.
struct Memory {
    instance: Arc<MemoryInstance>,
}

#[async_trait]
impl Harness for Memory {
    async fn connect(&self) -> Result<Broker> {
        Ok(self.broker(ConnectOptions::default()))
    }

    async fn connect_without_provisioning(&self) -> Option<Result<Broker>> {
        Some(Ok(
            self.broker(ConnectOptions::default().auto_provision(false))
        ))
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(300)
    }
}

impl Memory {
    fn broker(&self, options: ConnectOptions) -> Broker {
        Broker::new(MemoryBackend::with_instance(
            self.instance.clone(),
            &MemoryConfig::default(),
            options,
        ))
    }
}

fn harness() -> Option<Memory> {
    Some(Memory {
        instance: Arc::new(MemoryInstance::new()),
    })
}

broker_testkit::conformance_suite!(harness());

#[tokio::test]
async fn restart_case_is_skipped_without_a_restart_hook() {
    // The memory backend has no broker process to restart: the case must say it skipped,
    // after checking that the subscription works up to the restart point.
    broker_testkit::cases::broker_restart_loses_nothing(&harness().unwrap()).await;
}

/// The capabilities the conformance suite gates its cases on are the documented ones: one
/// switched off by mistake would turn its cases into skips.
#[tokio::test]
async fn capabilities_are_the_documented_ones() {
    let expected = broker_api::Capabilities {
        new_group_reads_history: true,
        per_key_order: true,
        members_share_work: true,
        start_from_latest: true,
        survives_restart: false,
        delivery_attempt: true,
        partitions: false,
        list_topics: true,
        delete_topic: true,
        max_payload_bytes: None,
    };
    broker_testkit::cases::capabilities_are(&harness().unwrap(), expected).await;
}
