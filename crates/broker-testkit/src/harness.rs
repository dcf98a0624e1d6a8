//! What a backend's test file provides to the suite.

use std::time::Duration;

use async_trait::async_trait;
use broker_api::{Broker, Result};

/// Why a harness did not restart its broker.
#[derive(Debug)]
pub enum NoRestart {
    /// The harness has no broker process to restart (the in-memory backend): the restart case
    /// says it skipped.
    Unsupported,
    /// Restarting failed, saying why: the restart case fails.
    Failed(String),
}

/// Connects the suite to the backend under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A new connection to the broker under test. Connections made by one harness see the same
    /// topics. Subscriber defaults may be anything; cases set what they depend on.
    async fn connect(&self) -> Result<Broker>;

    /// A new connection to the same broker with auto-provisioning off, which creates no topic,
    /// group or subscription; `None` when the harness cannot make one (the missing-topic case
    /// then says it skipped).
    async fn connect_without_provisioning(&self) -> Option<Result<Broker>> {
        None
    }

    /// Stops and starts the broker, keeping its data, for the restart case.
    async fn restart(&self) -> std::result::Result<(), NoRestart> {
        Err(NoRestart::Unsupported)
    }

    /// How long to wait for something that should happen.
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// How long to watch for something that should not happen.
    fn quiet_period(&self) -> Duration {
        Duration::from_secs(2)
    }
}
