//! # broker
//!
//! One typed API for message brokers, after Lagom's Message Broker API. Services publish typed
//! values to topics and subscribe as consumer groups, at least once or at most once; each
//! deployment picks the broker in its configuration — in-memory (the embedded default), Apache
//! Kafka, RabbitMQ or Google Cloud Pub/Sub — and the service's code does not change.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> broker::Result<()> {
//! use broker::{HandlerResult, Received, Topic};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct GreetingChanged { user: String, message: String }
//!
//! // broker.toml (or BROKER_CONFIG, or BROKER__KIND=kafka ...) decides which broker.
//! let broker = broker::connect().await?;
//! let greetings = Topic::<GreetingChanged>::json("greetings").with_key(|e| e.user.clone());
//!
//! broker.publisher(&greetings)
//!     .publish(&GreetingChanged { user: "ann".into(), message: "hi".into() })
//!     .await?;
//!
//! let stats = broker
//!     .subscriber(&greetings, "greeting-stats")
//!     .at_least_once(|event: Received<GreetingChanged>| async move {
//!         println!("{} says {}", event.value.user, event.value.message);
//!         HandlerResult::Ok(())
//!     })
//!     .await?;
//! stats.close().await?;
//! broker.close().await
//! # }
//! ```
//!
//! Backends are compiled in with features: `memory` (default), `kafka`, `rabbitmq`, `pubsub`,
//! `full`. Choosing a kind whose feature is missing is a clear error naming the feature.

mod config;
mod connect;

pub use broker_api::*;
pub use config::{BrokerConfig, Kind, TopicConfig, CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX};
pub use connect::{connect, connect_with};

/// The backend crates, for their configuration types and direct use.
pub mod backends {
    #[cfg(feature = "kafka")]
    pub use broker_kafka as kafka;
    #[cfg(feature = "memory")]
    pub use broker_memory as memory;
    #[cfg(feature = "pubsub")]
    pub use broker_pubsub as pubsub;
    #[cfg(feature = "rabbitmq")]
    pub use broker_rabbitmq as rabbitmq;
}
