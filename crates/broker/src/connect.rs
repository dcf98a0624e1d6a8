//! Connecting the configured backend.

use broker_api::{Broker, ConnectOptions, Error, Result, SharedBackend};

use crate::config::{BrokerConfig, Kind};

/// Loads the configuration ([`BrokerConfig::load`]) and connects the backend it names.
pub async fn connect() -> Result<Broker> {
    connect_with(BrokerConfig::load()?).await
}

/// Connects the backend `config` names, then creates the declared `[topics.*]` and their groups
/// (when auto-provisioning is on). Subscribers made from the returned handle use
/// `config.subscriber` as their defaults.
///
/// # Runtime
///
/// Call it on the tokio runtime the broker will be used on, and keep that runtime running as
/// long as the broker: the RabbitMQ connection and the Pub/Sub gRPC channels run tasks on the
/// runtime they were opened on (lapin and tonic spawn them there), and a Pub/Sub topic's
/// batching task runs on the runtime of that topic's first publish; they stop with it. The
/// in-memory and Kafka backends do not depend on it (librdkafka runs its own threads).
pub async fn connect_with(config: BrokerConfig) -> Result<Broker> {
    config.validate()?;
    let options = ConnectOptions::default().auto_provision(config.auto_provision());
    let backend = connect_backend(&config, options).await?;
    tracing::info!(kind = backend.kind(), endpoint = %backend.endpoint(), "broker connected");
    let broker = Broker::from_shared(backend).with_subscriber_defaults(config.subscriber.clone());
    if config.auto_provision() {
        for spec in config.topic_specs() {
            if let Err(e) = broker.ensure_topic(&spec).await {
                let _ = broker.close().await;
                return Err(e);
            }
        }
    }
    Ok(broker)
}

async fn connect_backend(config: &BrokerConfig, options: ConnectOptions) -> Result<SharedBackend> {
    let _ = &options;
    match config.kind {
        #[cfg(feature = "memory")]
        Kind::Memory => {
            let section = config.memory.clone().unwrap_or_default();
            Ok(std::sync::Arc::new(broker_memory::MemoryBackend::connect(
                &section, options,
            )))
        }
        #[cfg(feature = "kafka")]
        Kind::Kafka => {
            let section = config.kafka.clone().unwrap_or_default();
            Ok(std::sync::Arc::new(
                broker_kafka::KafkaBackend::connect(section, options).await?,
            ))
        }
        #[cfg(feature = "rabbitmq")]
        Kind::Rabbitmq => {
            let section = config.rabbitmq.clone().unwrap_or_default();
            Ok(std::sync::Arc::new(
                broker_rabbitmq::RabbitMqBackend::connect(section, options).await?,
            ))
        }
        #[cfg(feature = "pubsub")]
        Kind::Pubsub => {
            let section = config.pubsub.clone().unwrap_or_default();
            Ok(std::sync::Arc::new(
                broker_pubsub::PubSubBackend::connect(section, options).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        kind => Err(not_compiled_in(kind)),
    }
}

fn not_compiled_in(kind: Kind) -> Error {
    Error::unsupported(format!(
        "kind = \"{kind}\" needs the `{kind}` feature of the `broker` crate, which this program \
         was built without: build it with that feature (the examples and brokerctl: `cargo run \
         --features {kind}`), or enable it in Cargo.toml (features = [\"{kind}\"] or \
         [\"full\"])"
    ))
    .operation("connect")
}
