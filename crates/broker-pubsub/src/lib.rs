//! Google Cloud Pub/Sub backend of the broker API, over Google's official google-cloud-pubsub client.
//!
//! Not implemented yet: `connect` fails with an `Unsupported` error until the adapter lands.

use broker_api::{ConnectOptions, Error, Result};
use serde::Deserialize;

/// The `[pubsub]` section of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PubSubConfig {}

/// The pubsub backend.
#[derive(Debug)]
pub struct PubSubBackend {}

impl PubSubBackend {
    /// Connects to the broker.
    pub async fn connect(config: PubSubConfig, options: ConnectOptions) -> Result<PubSubBackend> {
        let _ = (config, options);
        Err(Error::unsupported("the pubsub backend is not implemented yet").backend("pubsub"))
    }
}
