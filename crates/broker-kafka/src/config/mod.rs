//! The `[kafka]` section of `broker.toml` and the librdkafka settings derived from it.
//! The clients' librdkafka configurations are derived in [`clients`]; [`secrets`] says which
//! property values never show.

mod clients;
mod secrets;

pub(crate) use self::clients::property_error;
pub use self::clients::{prefetch, PREFETCH_BYTES_PER_IN_FLIGHT, PREFETCH_MESSAGES_PER_IN_FLIGHT};
use self::secrets::redact;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use broker_api::naming::validate_partitions;
use broker_api::{check_timeout, Error, Result, StartFrom};
use serde::Deserialize;

/// How to reach Kafka and how the clients behave.
///
/// Every field has a default, so an empty `[kafka]` section connects to a local broker:
///
/// ```toml
/// [kafka]
/// bootstrap_servers = "127.0.0.1:9092"
/// connect_timeout = "10s"
/// partitions = 3                 # for topics this library creates; broker default when absent
/// replication_factor = 3         # broker default when absent
/// properties = { "compression.type" = "lz4", "security.protocol" = "sasl_ssl" }
/// ```
///
/// `properties` are handed to librdkafka as they are (see librdkafka's CONFIGURATION.md) and
/// override the defaults this adapter sets, listed on [`KafkaConfig::properties`]. A property
/// librdkafka does not know, or a value it rejects, fails `connect` with a
/// [`Config`](broker_api::ErrorKind::Config) error naming the property. Values of properties
/// whose name says they are secret (`*password*`, `*secret*`, `*.key*`, `*token*`,
/// `sasl.jaas.config`, `*credentials*`) never appear in `Debug`, logs or errors.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from. Default
    /// `"127.0.0.1:9092"`.
    pub bootstrap_servers: String,
    /// librdkafka properties, applied to the producer, every consumer and the admin client
    /// (librdkafka ignores, with a debug log, the ones meant for another client type). They
    /// override these defaults of the adapter:
    ///
    /// - producer: `acks=all`, `enable.idempotence=true` (no duplicates or reordering from
    ///   retries; properties that would weaken either are refused), `message.timeout.ms` from [`KafkaConfig::delivery_timeout`],
    ///   `allow.auto.create.topics=false` (topics are created through the admin API, with the
    ///   configured partitions, and only when auto-provisioning is on);
    /// - consumers: `enable.auto.commit=true` with `enable.auto.offset.store=false` (only
    ///   offsets of handled messages are stored, then committed every
    ///   `auto.commit.interval.ms`, librdkafka's default 5 s, synchronously on close, and
    ///   without waiting on partition revoke), `auto.offset.reset` from the subscription's start position,
    ///   `session.timeout.ms=10000` and `heartbeat.interval.ms=1000` (a member that vanished
    ///   is replaced after 10 s instead of librdkafka's 45 s),
    ///   `partition.assignment.strategy=cooperative-sticky` (a member joining or leaving
    ///   moves only the partitions that change owner; with an eager strategy every member
    ///   gives up all its partitions, and the deliveries it holds are delivered again), a prefetch bounded in
    ///   proportion to the subscription's `max_in_flight` (`queued.min.messages`,
    ///   `queued.max.messages.kbytes`; see [`prefetch`]) with `fetch.queue.backoff.ms=1`
    ///   (when its prefetch queue is full, librdkafka looks again after 1 ms rather than 1 s:
    ///   a fast consumer drains a small prefetch in a few milliseconds and is not left
    ///   waiting), `allow.auto.create.topics=false`.
    ///
    /// Values are librdkafka's strings; numbers and booleans (`"linger.ms" = 5`) are taken
    /// as the strings they are written as.
    #[serde(deserialize_with = "property_values")]
    pub properties: BTreeMap<String, String>,
    /// How long `connect` waits for the cluster to answer before it fails with a
    /// [`Connection`](broker_api::ErrorKind::Connection) error. Also bounds admin requests.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a published message may take to be confirmed, retries included, before its
    /// confirmation fails with a [`Timeout`](broker_api::ErrorKind::Timeout) error
    /// (librdkafka's `message.timeout.ms`; a `properties` entry of it or of its alias
    /// `delivery.timeout.ms` wins, and must not be 0, no limit). Transient failures such
    /// as a broker restart are retried by librdkafka within this time, counted from when the
    /// message is in librdkafka's queue: a send that finds the queue full (a long outage)
    /// first waits up to this long for room, then fails with `Timeout`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long closing waits for pending publishes to be confirmed and for consumers to
    /// commit and leave their groups, both at once. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Partitions of topics this library creates when the topic spec does not say; the
    /// broker's `num.partitions` when absent. Default: absent.
    #[serde(default, deserialize_with = "broker_api::settings::optional_number")]
    pub partitions: Option<u32>,
    /// Replication factor of topics this library creates; the broker's
    /// `default.replication.factor` when absent. Default: absent.
    #[serde(default, deserialize_with = "broker_api::settings::optional_number")]
    pub replication_factor: Option<u16>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(30),
            partitions: None,
            replication_factor: None,
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), redact(k, v)))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &properties)
            .field("connect_timeout", &self.connect_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .finish()
    }
}

/// The librdkafka property that caps a message's size, and its librdkafka default.
const MESSAGE_MAX_BYTES: (&str, usize) = ("message.max.bytes", 1_000_000);

/// Reads the properties map, taking numbers and booleans as the strings librdkafka expects.
fn property_values<'de, D>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Integer(i64),
        Float(f64),
        Flag(bool),
    }
    let values = BTreeMap::<String, Value>::deserialize(deserializer)?;
    Ok(values
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::Text(text) => text,
                Value::Integer(n) => n.to_string(),
                Value::Float(x) => x.to_string(),
                Value::Flag(b) => b.to_string(),
            };
            (name, text)
        })
        .collect())
}

/// The largest replication factor librdkafka asks a topic to be created with.
const MAX_REPLICATION_FACTOR: u16 = 10_000;

/// The longest timeout librdkafka takes for an admin request (`connect_timeout` bounds them).
const MAX_ADMIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// librdkafka's names of the delivery timeout; the last one given wins.
const DELIVERY_TIMEOUT_PROPERTIES: [&str; 2] = ["delivery.timeout.ms", "message.timeout.ms"];

/// Producer properties that say what a confirmation means, and the only values they may take
/// here: a message is confirmed once every in-sync replica has it, once and in its key's
/// order. Any other value would make a confirmation promise less than the API says.
const GUARANTEE_PROPERTIES: [(&str, &[&str]); 3] = [
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
];

/// Room kept, below `message.max.bytes`, when the largest payload is announced: 1 KiB for the
/// key, the headers and the record framing, and 2 KiB for the headers a dead letter adds (a
/// reason of up to 900 bytes, the topic's and the group's names), so that a message that
/// fails its handler can always be dead-lettered.
pub(crate) const PAYLOAD_HEADROOM: usize = 3 * 1024;

impl KafkaConfig {
    /// Checks the fields and every property against librdkafka; errors name the key.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config(
                "kafka.bootstrap_servers is empty: expected a comma-separated list of host:port, \
                 e.g. \"127.0.0.1:9092\"",
            ));
        }
        for (name, value) in [
            ("kafka.connect_timeout", self.connect_timeout),
            ("kafka.delivery_timeout", self.delivery_timeout),
            ("kafka.close_timeout", self.close_timeout),
        ] {
            check_timeout(name, value)?;
        }
        if let Some(partitions) = self.partitions {
            validate_partitions("kafka.partitions", partitions)?;
        }
        // librdkafka's limits for admin requests: beyond them every topic creation fails.
        let allowed = 1..=MAX_REPLICATION_FACTOR;
        if let Some(factor) = self.replication_factor.filter(|f| !allowed.contains(f)) {
            return Err(Error::config(format!(
                "kafka.replication_factor = {factor}: expected 1 to {MAX_REPLICATION_FACTOR}, or \
                 leave it out for the broker default"
            )));
        }
        if self.connect_timeout > MAX_ADMIN_TIMEOUT {
            return Err(Error::config(format!(
                "kafka.connect_timeout = {}: expected at most {} (it bounds admin requests, \
                 which librdkafka limits to that)",
                humantime::format_duration(self.connect_timeout),
                humantime::format_duration(MAX_ADMIN_TIMEOUT)
            )));
        }
        for name in DELIVERY_TIMEOUT_PROPERTIES {
            let Some(value) = self.properties.get(name) else {
                continue;
            };
            if value.trim().parse::<u64>().map_or(true, |ms| ms == 0) {
                return Err(Error::config(format!(
                    "kafka.properties.\"{name}\" = {value:?}: expected a positive number of \
                     milliseconds (0, no limit, would leave confirmations pending for ever while \
                     the cluster is unreachable)"
                )));
            }
        }
        for (name, allowed) in GUARANTEE_PROPERTIES {
            let Some(value) = self.properties.get(name) else {
                continue;
            };
            if !allowed.contains(&value.trim().to_ascii_lowercase().as_str()) {
                return Err(Error::config(format!(
                    "kafka.properties.\"{name}\" = {value:?}: expected {} or leave it out: a \
                     confirmation means that every in-sync replica has the message, once and in \
                     its key's order",
                    allowed.join(" or ")
                )));
            }
        }
        if let Some(value) = self.properties.get(MESSAGE_MAX_BYTES.0) {
            if value
                .trim()
                .parse::<usize>()
                .map_or(true, |bytes| bytes <= PAYLOAD_HEADROOM)
            {
                return Err(Error::config(format!(
                    "kafka.properties.\"{}\" = {value:?}: expected a number of bytes above \
                     {PAYLOAD_HEADROOM} (the room kept for a message's key and headers)",
                    MESSAGE_MAX_BYTES.0
                )));
            }
        }
        // librdkafka cannot take these; its own error would not name the key.
        let texts = [("kafka.bootstrap_servers", self.bootstrap_servers.as_str())];
        let properties = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        for (name, value) in texts.into_iter().chain(properties) {
            if name.contains('\0') || value.contains('\0') {
                return Err(Error::config(format!(
                    "{name:?} contains a NUL character, which librdkafka cannot take"
                )));
            }
        }
        // librdkafka checks names and values when a configuration is built.
        self.producer_config()
            .create_native_config()
            .map_err(|e| property_error(&e))?;
        self.consumer_client_config("validation", StartFrom::Earliest, 256)
            .create_native_config()
            .map_err(|e| property_error(&e))?;
        Ok(())
    }

    /// The endpoint for humans: the bootstrap servers (they never carry credentials).
    pub(crate) fn endpoint(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// The largest message librdkafka accepts (`message.max.bytes`).
    pub(crate) fn message_max_bytes(&self) -> usize {
        self.properties
            .get(MESSAGE_MAX_BYTES.0)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(MESSAGE_MAX_BYTES.1)
    }

    /// The largest payload accepted: `message.max.bytes` less [`PAYLOAD_HEADROOM`], so that
    /// every payload up to it fits, with a key and headers of up to 1 KiB, and so does its
    /// dead letter.
    pub(crate) fn max_payload_bytes(&self) -> usize {
        self.message_max_bytes().saturating_sub(PAYLOAD_HEADROOM)
    }

    /// The effective `message.timeout.ms` as a duration.
    pub(crate) fn effective_delivery_timeout(&self) -> Duration {
        self.delivery_timeout_property()
            .and_then(|v| v.trim().parse().ok())
            .map_or(self.delivery_timeout, Duration::from_millis)
    }

    /// The value of the property that sets the delivery timeout, if any: `message.timeout.ms`
    /// wins over its alias `delivery.timeout.ms` when both are given.
    fn delivery_timeout_property(&self) -> Option<&str> {
        DELIVERY_TIMEOUT_PROPERTIES
            .into_iter()
            .rev()
            .find_map(|name| self.properties.get(name).map(String::as_str))
    }
}

#[cfg(test)]
mod tests;
