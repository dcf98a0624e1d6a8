//! The `[kafka]` section of `broker.toml` and the librdkafka settings derived from it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use broker_api::naming::validate_partitions;
use broker_api::{check_timeout, Error, Result, StartFrom};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientConfig;
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

/// Whether a property's value must never be shown: every `sasl.*` and `ssl.*` property, and
/// any whose name holds a word of a secret, also misspelled (`sasl.pasword`, `sals.passwd`).
pub(crate) fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pas", "pwd", "secret", "token", "cred", "jaas", "auth", "key",
    ]
    .iter()
    .any(|word| name.contains(word))
        || name.starts_with("sasl.")
        || name.starts_with("ssl.")
}

/// The value to show for a property: itself, or a placeholder when it is secret.
pub(crate) fn redact<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret(name) {
        "<redacted>"
    } else {
        value
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

/// Messages librdkafka keeps prefetched per unsettled delivery a subscription may hold.
pub const PREFETCH_MESSAGES_PER_IN_FLIGHT: usize = 16;
/// Bytes librdkafka keeps prefetched per unsettled delivery a subscription may hold.
pub const PREFETCH_BYTES_PER_IN_FLIGHT: usize = 16 * 1024;
/// The smallest prefetch in bytes: one default fetch (`fetch.message.max.bytes`, 1 MiB).
const MIN_PREFETCH_BYTES: usize = 1024 * 1024;

/// The prefetch bound of a subscription's consumer, in proportion to its `max_in_flight`:
/// `queued.min.messages` = [`PREFETCH_MESSAGES_PER_IN_FLIGHT`] × `max_in_flight` and
/// `queued.max.messages.kbytes` = [`PREFETCH_BYTES_PER_IN_FLIGHT`] × `max_in_flight` (at least
/// 1 MiB). librdkafka's own defaults (100 000 messages, 64 MiB) would let a subscription's
/// memory grow with the backlog up to 64 MiB whatever its `max_in_flight`; with these, 256 in
/// flight keep at most 4096 messages or 4 MiB prefetched (plus the fetch in progress, up to
/// `fetch.message.max.bytes`). Both are librdkafka properties: [`KafkaConfig::properties`]
/// overrides them.
pub fn prefetch(max_in_flight: usize) -> [(&'static str, String); 2] {
    let in_flight = max_in_flight.max(1);
    let messages = in_flight.saturating_mul(PREFETCH_MESSAGES_PER_IN_FLIGHT);
    let bytes = in_flight
        .saturating_mul(PREFETCH_BYTES_PER_IN_FLIGHT)
        .max(MIN_PREFETCH_BYTES);
    [
        // librdkafka's upper limits: 10 000 000 messages, 2 097 151 KiB.
        ("queued.min.messages", messages.min(10_000_000).to_string()),
        (
            "queued.max.messages.kbytes",
            (bytes / 1024).min(2_097_151).to_string(),
        ),
    ]
}

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

    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers.trim())
            .set("client.id", "broker-rs")
            .set_log_level(RDKafkaLogLevel::Info);
        config
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (name, value) in &self.properties {
            config.set(name, value);
        }
    }

    /// The producer's configuration: our defaults, then the user's properties. The delivery
    /// timeout is set once, under `message.timeout.ms`, whichever name the properties give it:
    /// librdkafka takes the properties in no particular order, so two names could disagree.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("allow.auto.create.topics", "false");
        self.apply_properties(&mut config);
        for name in DELIVERY_TIMEOUT_PROPERTIES {
            config.remove(name);
        }
        config.set(
            "message.timeout.ms",
            self.effective_delivery_timeout().as_millis().to_string(),
        );
        config
    }

    /// The librdkafka configuration of a subscription's consumer for `group`, reading at most
    /// `max_in_flight` unsettled messages: the adapter's defaults (including the prefetch
    /// bound of [`prefetch`]), then [`KafkaConfig::properties`], then what the subscription
    /// itself decides (group, start position, offsets stored only once handled).
    ///
    /// For tools and benchmarks that need a raw consumer configured like the adapter's.
    pub fn consumer_client_config(
        &self,
        group: &str,
        start_from: StartFrom,
        max_in_flight: usize,
    ) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("enable.auto.commit", "true")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("fetch.queue.backoff.ms", "1")
            .set("allow.auto.create.topics", "false");
        for (name, value) in prefetch(max_in_flight) {
            config.set(name, value);
        }
        self.apply_properties(&mut config);
        config
            .set("group.id", group)
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        config
    }

    /// The admin client's configuration.
    pub(crate) fn admin_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        // Its metadata requests must not create the topics they look up.
        config.set("allow.auto.create.topics", "false");
        self.apply_properties(&mut config);
        config
    }
}

/// A property librdkafka rejected, as a configuration error naming it (without secret values).
pub(crate) fn property_error(error: &KafkaError) -> Error {
    match error {
        KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, _, key, _) => {
            // Its value is not shown: the name may be a misspelled secret one.
            let text = format!("kafka.properties.\"{key}\" is not a librdkafka property");
            Error::config(text).backend("kafka").operation("connect")
        }
        KafkaError::ClientConfig(_, description, key, value) => {
            let text = if !is_secret(key) {
                format!(
                    "kafka.properties.\"{key}\" = {value:?} is rejected by librdkafka: {description}"
                )
            } else if value.is_empty() || description.contains(value) {
                format!("kafka.properties.\"{key}\" is rejected by librdkafka")
            } else {
                // librdkafka's reason, which does not quote the value.
                format!("kafka.properties.\"{key}\" is rejected by librdkafka: {description}")
            };
            Error::config(text).backend("kafka").operation("connect")
        }
        other => Error::config(format!("librdkafka rejected the configuration: {other}"))
            .backend("kafka")
            .operation("connect"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<KafkaConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_point_at_a_local_broker() {
        let config = parse("{}").unwrap();
        assert_eq!(config.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.delivery_timeout, Duration::from_secs(60));
        assert_eq!(config.message_max_bytes(), 1_000_000);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn fields_and_properties_parse() {
        let config = parse(
            r#"{"bootstrap_servers": "k1:9092,k2:9092", "connect_timeout": "3s",
                "partitions": 3, "replication_factor": 2,
                "properties": {"compression.type": "lz4", "message.max.bytes": "2000000"}}"#,
        )
        .unwrap();
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.partitions, Some(3));
        assert_eq!(config.message_max_bytes(), 2_000_000);
        assert!(config.validate().is_ok());
        let producer = config.producer_config();
        assert_eq!(producer.get("compression.type"), Some("lz4"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected() {
        let err = parse(r#"{"bootstrap": "x"}"#).unwrap_err();
        assert!(err.contains("unknown field `bootstrap`"), "{err}");
        let err = parse(r#"{"connect_timeout": "soon"}"#).unwrap_err();
        assert!(err.contains("soon") || err.contains("duration"), "{err}");
    }

    /// Values librdkafka would refuse on every admin request are refused up front.
    #[test]
    fn admin_request_limits_are_config_errors() {
        let refused = |config: KafkaConfig| config.validate().unwrap_err().to_string();
        let err = refused(KafkaConfig {
            replication_factor: Some(10_001),
            ..KafkaConfig::default()
        });
        assert!(err.contains("kafka.replication_factor = 10001"), "{err}");
        let err = refused(KafkaConfig {
            replication_factor: Some(0),
            ..KafkaConfig::default()
        });
        assert!(err.contains("kafka.replication_factor = 0"), "{err}");
        let err = refused(KafkaConfig {
            connect_timeout: Duration::from_secs(7200),
            ..KafkaConfig::default()
        });
        assert!(err.contains("kafka.connect_timeout = 2h"), "{err}");
        let err = refused(KafkaConfig {
            partitions: Some(100_001),
            ..KafkaConfig::default()
        });
        assert!(err.contains("kafka.partitions = 100001"), "{err}");
        let accepted = KafkaConfig {
            replication_factor: Some(10_000),
            connect_timeout: Duration::from_secs(3600),
            partitions: Some(100_000),
            ..KafkaConfig::default()
        };
        accepted.validate().unwrap();
    }

    #[test]
    fn properties_override_defaults_but_not_the_group() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("session.timeout.ms".into(), "30000".into());
        config.properties.insert("group.id".into(), "other".into());
        config
            .properties
            .insert("message.timeout.ms".into(), "5000".into());
        let consumer = config.consumer_client_config("billing", StartFrom::Latest, 256);
        assert_eq!(consumer.get("session.timeout.ms"), Some("30000"));
        assert_eq!(consumer.get("group.id"), Some("billing"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(
            config.effective_delivery_timeout(),
            Duration::from_millis(5000)
        );
    }

    #[test]
    fn the_delivery_timeout_follows_either_property_name_and_is_bounded() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("delivery.timeout.ms".into(), "7000".into());
        assert_eq!(
            config.effective_delivery_timeout(),
            Duration::from_millis(7000)
        );
        let producer = config.producer_config();
        assert_eq!(producer.get("message.timeout.ms"), Some("7000"));
        assert_eq!(producer.get("delivery.timeout.ms"), None, "set once");
        config
            .properties
            .insert("message.timeout.ms".into(), "5000".into());
        assert_eq!(
            config.effective_delivery_timeout(),
            Duration::from_millis(5000),
            "message.timeout.ms wins"
        );
        assert_eq!(
            config.producer_config().get("message.timeout.ms"),
            Some("5000")
        );
        config
            .properties
            .insert("delivery.timeout.ms".into(), "0".into());
        let error = config.validate().expect_err("no limit is refused");
        assert!(
            error
                .to_string()
                .contains("\"delivery.timeout.ms\" = \"0\""),
            "{error}"
        );
    }

    #[test]
    fn prefetch_follows_max_in_flight_unless_overridden() {
        let config = KafkaConfig::default();
        let consumer = config.consumer_client_config("g", StartFrom::Earliest, 256);
        assert_eq!(consumer.get("queued.min.messages"), Some("4096"));
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("4096"));
        let small = config.consumer_client_config("g", StartFrom::Earliest, 1);
        assert_eq!(small.get("queued.min.messages"), Some("16"));
        assert_eq!(small.get("queued.max.messages.kbytes"), Some("1024"));
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        let consumer = config.consumer_client_config("g", StartFrom::Earliest, 256);
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("65536"));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejected_properties_are_config_errors_naming_them() {
        let mut config = KafkaConfig::default();
        config.properties.insert("no.such.thing".into(), "1".into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), broker_api::ErrorKind::Config);
        assert!(err.to_string().contains("no.such.thing"), "{err}");

        let mut config = KafkaConfig::default();
        config.properties.insert("acks".into(), "several".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("acks"), "{err}");
    }

    #[test]
    fn properties_cannot_weaken_what_a_confirmation_means() {
        for (name, value) in [
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), value.into());
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), broker_api::ErrorKind::Config);
            assert!(
                err.to_string()
                    .contains(&format!("kafka.properties.\"{name}\"")),
                "{err}"
            );
        }
        for (name, value) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("enable.idempotence", "true"),
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), value.into());
            assert!(config.validate().is_ok(), "{name} = {value}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        config
            .properties
            .insert("ssl.key.password".into(), "hunter3".into());
        config
            .properties
            .insert("compression.type".into(), "zstd".into());
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter"), "{debug}");
        assert!(debug.contains("zstd"), "{debug}");

        let error = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        let text = property_error(&error).to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.password"), "{text}");

        // librdkafka's reason, when it does not quote the value.
        let error = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Unsupported SASL mechanism".into(),
            "sasl.mechanisms".into(),
            "PLAN".into(),
        );
        let text = property_error(&error).to_string();
        assert!(text.contains("Unsupported SASL mechanism"), "{text}");
    }

    #[test]
    fn a_misspelled_secret_property_does_not_show_its_value() {
        for name in [
            "sasl.pasword",
            "ssl.keystore.pasword",
            "sals.passwd",
            "x.pwd",
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), "hunter2".into());
            let text = config.validate().unwrap_err().to_string();
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains(name), "{text}");
            let debug = format!("{config:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
        }
    }

    #[test]
    fn a_nul_character_is_an_error_naming_its_key() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("sasl.username".into(), "a\0b".into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), broker_api::ErrorKind::Config);
        assert!(err.to_string().contains("\"sasl.username\""), "{err}");
        let config = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092\0".into(),
            ..KafkaConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.bootstrap_servers"), "{err}");
    }

    #[test]
    fn librdkafka_is_built_with_tls_sasl_and_every_codec() {
        let native = KafkaConfig::default()
            .producer_config()
            .create_native_config()
            .unwrap();
        let features = native.get("builtin.features").unwrap();
        for feature in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "gzip",
            "snappy",
            "lz4",
            "zstd",
        ] {
            assert!(features.contains(feature), "{feature} missing: {features}");
        }
    }

    #[test]
    fn zero_values_name_their_key() {
        let config = KafkaConfig {
            partitions: Some(0),
            ..KafkaConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
        let config = KafkaConfig {
            partitions: Some(3_000_000_000),
            ..KafkaConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.partitions = 3000000000"), "{err}");
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("message.max.bytes".into(), "3000".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("\"message.max.bytes\" = \"3000\""), "{err}");
        let config = KafkaConfig {
            connect_timeout: Duration::ZERO,
            ..KafkaConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.connect_timeout"), "{err}");
        // librdkafka takes timeouts as 32-bit milliseconds: 30 days would wrap negative.
        let config = KafkaConfig {
            close_timeout: Duration::from_secs(30 * 24 * 3600),
            ..KafkaConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.close_timeout = 30days"), "{err}");
        assert!(err.contains("at most 1 day"), "{err}");
    }
}
