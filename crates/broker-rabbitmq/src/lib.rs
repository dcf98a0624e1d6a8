//! RabbitMQ backend of the broker API, over lapin (AMQP 0-9-1).
//!
//! Not implemented yet: `connect` fails with an `Unsupported` error until the adapter lands.

use broker_api::{ConnectOptions, Error, Result};
use serde::Deserialize;

/// The `[rabbitmq]` section of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {}

/// The rabbitmq backend.
#[derive(Debug)]
pub struct RabbitMqBackend {}

impl RabbitMqBackend {
    /// Connects to the broker.
    pub async fn connect(config: RabbitMqConfig, options: ConnectOptions) -> Result<RabbitMqBackend> {
        let _ = (config, options);
        Err(Error::unsupported("the rabbitmq backend is not implemented yet").backend("rabbitmq"))
    }
}
