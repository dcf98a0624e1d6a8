//! Google Cloud Pub/Sub backend of the broker API, over Google's official google-cloud-pubsub client.
//!
//! Not implemented yet: `connect` fails with an `Unsupported` error until the adapter lands.

use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, ConnectOptions, Error, Message, Result,
    SubscribeRequest, TopicSpec,
};
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
        Err(not_implemented())
    }
}

fn not_implemented() -> Error {
    Error::unsupported("the pubsub backend is not implemented yet").backend("pubsub")
}

#[async_trait::async_trait]
impl Backend for PubSubBackend {
    fn kind(&self) -> &'static str {
        "pubsub"
    }

    fn endpoint(&self) -> String {
        String::new()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, _message: Message) -> Completion<'a, Confirmation> {
        completion::ready(Err(not_implemented()))
    }

    async fn subscribe(&self, _request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Err(not_implemented())
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Err(not_implemented())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
