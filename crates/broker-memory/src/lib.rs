//! # broker-memory
//!
//! The in-memory backend: the embedded default of the `broker` facade and the test kit (like
//! Lagom's `ProducerStub`). It is a real broker inside the process, with the full semantics of
//! the API: a new group starts from the earliest message kept (or the latest, when asked);
//! every group gets every message; the members of a group share them; messages with the same
//! key are handed out one at a time, in publish order, within a group (the next one when the
//! previous is acknowledged: `at_most_once` acknowledges on receipt, so another member of the
//! group may take it while the first is still being handled); a nack (or a delivery dropped
//! unsettled) delivers the message again before later ones of its key; each subscription holds
//! at most `max_in_flight` unsettled messages.
//!
//! Retention: as messages arrive, a topic drops old ones (4 096 at a time) once every group of
//! the topic has acknowledged them, never before, and always keeps its latest
//! [`MemoryConfig::retained_messages`] for groups that join later. Memory follows what the
//! groups still need, not everything ever published; a group that stops reading keeps
//! everything after its position.
//!
//! Connections to the same named instance share topics, so services in one process talk to
//! each other; [`MemoryBackend::new`] makes a private instance for tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> broker_api::Result<()> {
//! use broker_api::{Broker, Topic};
//! use broker_memory::MemoryBackend;
//!
//! let broker = Broker::new(MemoryBackend::new());
//! let topic = Topic::<String>::text("greetings");
//! broker.publisher(&topic).publish(&"hello".to_owned()).await?;
//! let mut stream = broker.subscriber(&topic, "readers").at_most_once().await?;
//! # use futures::StreamExt;
//! let received = stream.next().await.expect("one message")?;
//! assert_eq!(received.value, "hello");
//! broker.close().await
//! # }
//! ```

mod group;
mod inbox;
mod instance;
mod log;
mod subscription;
mod topic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, ConnectOptions, Error, ErrorKind,
    Message, Position, Receipt, Result, SubscribeRequest, TopicSpec,
};
use serde::Deserialize;

pub use instance::MemoryInstance;
use subscription::{Member, MemoryStream};

/// The name of this backend in errors and configuration.
const KIND: &str = "memory";

/// The `[memory]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The in-process instance to connect to; connections to the same name share topics.
    pub instance: String,
    /// The largest payload accepted, in bytes (default 16 MiB).
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub max_payload_bytes: usize,
    /// How many of its latest messages a topic keeps at least, for groups that join later
    /// (default 65 536). Older messages are dropped once every group of the topic has
    /// acknowledged them, never before; a group that joins later starts from the earliest
    /// message kept. Set by the connection that creates the topic.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub retained_messages: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            instance: "default".to_owned(),
            max_payload_bytes: 16 * 1024 * 1024,
            retained_messages: 65_536,
        }
    }
}

impl MemoryConfig {
    /// Checks values that parse but make no sense; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.instance.is_empty() {
            return Err(Error::config(
                "memory.instance = \"\": expected the name of the in-process instance to share \
                 (default \"default\")",
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(Error::config(
                "memory.max_payload_bytes = 0: expected the largest payload accepted, at least 1 \
                 byte (default 16 MiB)",
            ));
        }
        Ok(())
    }
}

/// A connection to an in-memory broker instance.
///
/// Closing it ends its subscriptions and makes its later calls fail with
/// [`ErrorKind::Closed`]; other connections to the same instance are not affected.
#[derive(Debug)]
pub struct MemoryBackend {
    instance: Arc<MemoryInstance>,
    options: ConnectOptions,
    max_payload_bytes: usize,
    retained_messages: usize,
    closed: AtomicBool,
    members: Mutex<Vec<Weak<Member>>>,
}

impl MemoryBackend {
    /// A connection to a new private instance, with default settings.
    pub fn new() -> Self {
        MemoryBackend::with_instance(
            Arc::new(MemoryInstance::new()),
            &MemoryConfig::default(),
            ConnectOptions::default(),
        )
    }

    /// A connection to the named instance of `config`, shared within the process.
    pub fn connect(config: &MemoryConfig, options: ConnectOptions) -> Self {
        MemoryBackend::with_instance(MemoryInstance::named(&config.instance), config, options)
    }

    /// A connection to `instance`.
    pub fn with_instance(
        instance: Arc<MemoryInstance>,
        config: &MemoryConfig,
        options: ConnectOptions,
    ) -> Self {
        MemoryBackend {
            instance,
            options,
            max_payload_bytes: config.max_payload_bytes,
            retained_messages: config.retained_messages,
            closed: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
        }
    }

    /// The instance this connection talks to.
    pub fn instance(&self) -> &Arc<MemoryInstance> {
        &self.instance
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::closed("the broker connection is closed")
                .backend(KIND)
                .operation(operation))
        } else {
            Ok(())
        }
    }

    fn topic(&self, name: &str, operation: &'static str) -> Result<Arc<topic::Topic>> {
        self.instance
            .topic(
                name,
                self.options
                    .auto_provision
                    .then_some(self.retained_messages),
            )
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("topic {name} does not exist and auto-provisioning is off"),
                )
                .backend(KIND)
                .operation(operation)
            })
    }

    fn publish_now(&self, topic: &str, message: Message) -> Result<Confirmation> {
        self.check_open("publish")?;
        if message.payload.len() > self.max_payload_bytes {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "payload of {} bytes to topic {topic} is larger than the limit of {} bytes \
                     (memory.max_payload_bytes)",
                    message.payload.len(),
                    self.max_payload_bytes
                ),
            )
            .backend(KIND)
            .operation("publish"));
        }
        let topic = self.topic(topic, "publish")?;
        let message_id = message.id.clone();
        let Some(offset) = topic.append(message) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "topic {} was deleted while message {message_id} was published to it; \
                     it was not delivered",
                    topic.name
                ),
            )
            .backend(KIND)
            .operation("publish"));
        };
        Ok(Confirmation::ready(Ok(Receipt {
            message_id,
            position: Position::Memory { offset },
        })))
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn endpoint(&self) -> String {
        format!("memory://{}", self.instance.name())
    }

    fn auto_provision(&self) -> bool {
        self.options.auto_provision
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            new_group_reads_history: true,
            per_key_order: true,
            members_share_work: true,
            start_from_latest: true,
            survives_restart: false,
            delivery_attempt: true,
            partitions: false,
            list_topics: true,
            delete_topic: true,
            max_payload_bytes: Some(self.max_payload_bytes),
        }
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        completion::ready(self.publish_now(topic, message))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        self.check_open("subscribe")?;
        let topic = self.topic(&request.topic, "subscribe")?;
        let group = topic.group(&request.group, request.start_from);
        let member = Arc::new(Member::new(topic, group, request.max_in_flight));
        {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members.retain(|m| m.strong_count() > 0);
            members.push(Arc::downgrade(&member));
        }
        // A close racing with this subscribe must still stop the new member.
        if self.closed.load(Ordering::SeqCst) {
            member.stop();
        }
        Ok(Box::new(MemoryStream::new(member)))
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        self.check_open("ensure topic")?;
        let topic = self
            .instance
            .topic(&spec.name, Some(self.retained_messages))
            .ok_or_else(|| {
                Error::new(ErrorKind::Other, "topic could not be created").backend(KIND)
            })?;
        for group in &spec.groups {
            topic.group(group, broker_api::StartFrom::Earliest);
        }
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        self.check_open("list topics")?;
        Ok(self.instance.topic_names())
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open("delete topic")?;
        if self.instance.delete(name) {
            Ok(())
        } else {
            Err(
                Error::new(ErrorKind::NotFound, format!("topic {name} does not exist"))
                    .backend(KIND)
                    .operation("delete topic"),
            )
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        let members = std::mem::take(&mut *self.members.lock().unwrap_or_else(|e| e.into_inner()));
        for member in members.iter().filter_map(Weak::upgrade) {
            member.stop();
        }
        Ok(())
    }
}
