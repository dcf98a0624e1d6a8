//! The librdkafka configurations of the producer, the consumers and the admin client, derived
//! from the `[kafka]` section; librdkafka's refusals of a property as configuration errors.

use broker_api::{Error, StartFrom};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientConfig;

use super::secrets::is_secret;
use super::{KafkaConfig, DELIVERY_TIMEOUT_PROPERTIES};

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
