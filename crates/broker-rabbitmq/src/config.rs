//! The `[rabbitmq]` section of `broker.toml`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use broker_api::{check_timeout, redact_uri, Error, Result};
use lapin::uri::{AMQPScheme, AMQPUri};
use serde::{Deserialize, Serialize};

/// The default broker address: the local node's default virtual host as user `guest`.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// RabbitMQ's hard upper bound on `max_message_size` (512 MiB).
const BROKER_MAX_MESSAGE_SIZE: usize = 512 * 1024 * 1024;

/// How the RabbitMQ backend connects, declares group queues and publishes.
///
/// Every field has a default, so an empty `[rabbitmq]` section connects to a local broker:
///
/// ```toml
/// [rabbitmq]
/// uri = "amqps://app:secret@rabbit.example.com:5671/prod"
/// queue_type = "quorum"        # quorum | classic
/// confirm_window = 1024
/// connect_timeout = "10s"
/// publish_timeout = "60s"
/// reconnect = { min_backoff = "100ms", max_backoff = "5s" }
/// ```
///
/// `Debug` never shows the password of the URI.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// The broker, as an AMQP URI: `amqp://user:password@host:port/vhost` or `amqps://…` for
    /// TLS (the system's root certificates verify the server). The virtual host is
    /// percent-encoded: `%2f` is the default vhost `/`. Query parameters `heartbeat`,
    /// `frame_max`, `channel_max` and `connection_timeout` are passed to the client.
    /// Default: [`DEFAULT_URI`].
    pub uri: String,
    /// The type of the group queues this backend declares. Default: quorum (replicated,
    /// durable, with a delivery count).
    pub queue_type: QueueType,
    /// The consumer prefetch (`basic.qos`) of every subscription: how many unacknowledged
    /// messages RabbitMQ sends ahead. Default: unset, which uses each subscription's
    /// `max_in_flight` (capped at 65535, the protocol's limit). A value above a subscription's
    /// `max_in_flight` is lowered to it: every message sent ahead is an unsettled delivery.
    #[serde(default, deserialize_with = "broker_api::settings::optional_number")]
    pub prefetch: Option<u16>,
    /// How many publishes may wait for their publisher confirm at once. `send` waits for room
    /// only when this many are pending. Default: 1024.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub confirm_window: usize,
    /// How long connecting (and every reconnect attempt) may take before it fails. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an operation keeps trying while the connection is down or failing: a publish
    /// whose confirm was lost with its channel is published again on the next one within this
    /// time (else it fails), and `send`, `subscribe` and topic declarations wait this long for
    /// the supervisor to reconnect. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// How long a publish handed over may wait for RabbitMQ's confirm (publishing again after
    /// a dropped channel included), and a `send` for room in the confirm window, before it
    /// fails with `Timeout` (a publish then may or may not have been stored; it keeps its
    /// window slot until RabbitMQ answers). RabbitMQ holds confirms back during a resource
    /// alarm (memory, disk) and while a quorum queue has no majority. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long `close` waits for pending publisher confirms. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Backoff between reconnect attempts after the connection dropped.
    pub reconnect: ReconnectBackoff,
    /// The largest message body the broker accepts (RabbitMQ's `max_message_size`). Larger
    /// payloads are refused before they are sent, because RabbitMQ closes the channel of a
    /// publish over its limit. Default: 16 MiB, RabbitMQ 4's default (3.x defaults to 128 MiB;
    /// raise this to match a broker configured higher).
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub max_message_size: usize,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            uri: DEFAULT_URI.to_owned(),
            queue_type: QueueType::default(),
            prefetch: None,
            confirm_window: 1024,
            connect_timeout: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(10),
            reconnect: ReconnectBackoff::default(),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("uri", &redact_uri(&self.uri))
            .field("queue_type", &self.queue_type)
            .field("prefetch", &self.prefetch)
            .field("confirm_window", &self.confirm_window)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_timeout", &self.retry_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("reconnect", &self.reconnect)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

/// The kind of queue declared for each group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated Raft queues (`x-queue-type: quorum`): durable, survive node failures, count
    /// deliveries (`x-delivery-count`), so deliveries carry their attempt number.
    #[default]
    Quorum,
    /// Classic queues (`x-queue-type: classic`), durable; no delivery count.
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` queue argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Exponential backoff between reconnect attempts: `min_backoff` doubled per failed attempt,
/// capped at `max_backoff`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectBackoff {
    /// The delay before the second attempt (the first is immediate). Default: 100ms.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// The longest delay between two attempts. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        ReconnectBackoff {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReconnectBackoff {
    /// The delay after failed attempt number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// A checked configuration: the parsed URI and where it points, for humans.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) uri: AMQPUri,
    pub(crate) endpoint: String,
    pub(crate) config: RabbitMqConfig,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish()
    }
}

impl RabbitMqConfig {
    /// Checks every value; the error names the key, the value (never the password) and what
    /// would be accepted.
    pub fn validate(&self) -> Result<()> {
        self.settings().map(drop)
    }

    pub(crate) fn settings(&self) -> Result<Settings> {
        let mut uri = parse_uri(&self.uri)?;
        if self.confirm_window == 0 {
            return Err(Error::config(
                "rabbitmq.confirm_window = 0: expected a number of pending publishes of at least 1",
            ));
        }
        if self.prefetch == Some(0) {
            return Err(Error::config(
                "rabbitmq.prefetch = 0: expected 1 to 65535 (leave it out to use each \
                 subscription's max_in_flight)",
            ));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("retry_timeout", self.retry_timeout),
            ("publish_timeout", self.publish_timeout),
            ("close_timeout", self.close_timeout),
            ("reconnect.min_backoff", self.reconnect.min_backoff),
            ("reconnect.max_backoff", self.reconnect.max_backoff),
        ] {
            check_timeout(&format!("rabbitmq.{key}"), value)?;
        }
        if self.reconnect.min_backoff > self.reconnect.max_backoff {
            return Err(Error::config(format!(
                "rabbitmq.reconnect.min_backoff = {} is longer than max_backoff = {}",
                humantime::format_duration(self.reconnect.min_backoff),
                humantime::format_duration(self.reconnect.max_backoff)
            )));
        }
        if self.max_message_size == 0 || self.max_message_size > BROKER_MAX_MESSAGE_SIZE {
            return Err(Error::config(format!(
                "rabbitmq.max_message_size = {}: expected 1 to {BROKER_MAX_MESSAGE_SIZE} bytes \
                 (RabbitMQ's upper bound)",
                self.max_message_size
            )));
        }
        // lapin opens the TCP connection with a blocking call on a thread of its own, which a
        // connect given up after `connect_timeout` leaves running: bound it by the same time.
        if uri.query.connection_timeout.is_none() {
            let millis = u64::try_from(self.connect_timeout.as_millis()).unwrap_or(u64::MAX);
            uri.query.connection_timeout = Some(millis);
        }
        Ok(Settings {
            endpoint: endpoint_of(&uri),
            uri,
            config: self.clone(),
        })
    }
}

/// Parses the URI; the error shows it with its user information replaced by `***`.
fn parse_uri(uri: &str) -> Result<AMQPUri> {
    let invalid = |reason: &str| {
        Error::config(format!(
            "rabbitmq.uri = {:?}: {reason}; expected amqp://user:password@host:port/vhost or \
             amqps://… (the vhost percent-encoded, %2f for /)",
            redact_uri(uri)
        ))
    };
    let scheme = uri.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("amqp" | "amqps")) {
        return Err(invalid("the scheme must be amqp or amqps"));
    }
    let parsed = AMQPUri::from_str(uri).map_err(|reason| {
        // The parser's messages name the faulty part, never the credentials; keep them short.
        let reason = reason.lines().next().unwrap_or("malformed").to_owned();
        invalid(&reason)
    })?;
    if parsed.authority.host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    Ok(parsed)
}

/// `scheme://host:port/vhost`, without credentials.
fn endpoint_of(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    };
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    format!(
        "{scheme}://{}:{}/{vhost}",
        uri.authority.host, uri.authority.port
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_api::ErrorKind;

    /// Deserializes a `{"rabbitmq": {...}}` document. The crate has no TOML parser; the
    /// facade's `config` layer hands serde the same shape.
    fn parse(json: &str) -> std::result::Result<RabbitMqConfig, String> {
        #[derive(Deserialize)]
        struct Root {
            rabbitmq: RabbitMqConfig,
        }
        serde_json::from_str::<Root>(json)
            .map(|root| root.rabbitmq)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_connect_to_the_local_broker() {
        let config = RabbitMqConfig::default();
        let settings = config.settings().unwrap();
        assert_eq!(settings.endpoint, "amqp://127.0.0.1:5672/%2f");
        assert_eq!(settings.uri.vhost, "/");
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert_eq!(config.confirm_window, 1024);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.prefetch, None);
    }

    #[test]
    fn sections_deserialize_with_humantime_durations() {
        let config = parse(
            r#"{"rabbitmq": {"uri": "amqps://app:s3cret@rabbit.example.com:5671/prod",
                "queue_type": "classic", "prefetch": 50, "confirm_window": 64,
                "connect_timeout": "3s", "reconnect": {"min_backoff": "50ms", "max_backoff": "2s"}}}"#,
        )
        .unwrap();
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(config.prefetch, Some(50));
        assert_eq!(config.confirm_window, 64);
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.reconnect.max_backoff, Duration::from_secs(2));
        let settings = config.settings().unwrap();
        assert_eq!(settings.endpoint, "amqps://rabbit.example.com:5671/prod");
        assert!(!settings.endpoint.contains("s3cret"));
        // The TCP connect is bounded by connect_timeout, unless the URI says otherwise.
        assert_eq!(settings.uri.query.connection_timeout, Some(3_000));
        let config = RabbitMqConfig {
            uri: "amqp://127.0.0.1:5672/%2f?connection_timeout=250".to_owned(),
            ..RabbitMqConfig::default()
        };
        let settings = config.settings().unwrap();
        assert_eq!(settings.uri.query.connection_timeout, Some(250));
    }

    #[test]
    fn unknown_keys_and_queue_types_are_refused() {
        let err = parse(r#"{"rabbitmq": {"url": "amqp://x"}}"#).unwrap_err();
        assert!(err.contains("unknown field `url`"), "{err}");
        let err = parse(r#"{"rabbitmq": {"queue_type": "stream"}}"#).unwrap_err();
        assert!(err.contains("quorum") && err.contains("classic"), "{err}");
    }

    #[test]
    fn malformed_uris_name_the_key_without_the_password() {
        for uri in [
            "http://user:hunter2@localhost:5672/%2f",
            "amqp://user:hunter2@localhost:notaport/%2f",
            "user:hunter2@localhost",
            "amqp://user:hunter2@/%2f",
        ] {
            let config = RabbitMqConfig {
                uri: uri.to_owned(),
                ..RabbitMqConfig::default()
            };
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{uri}");
            let text = err.to_string();
            assert!(text.contains("rabbitmq.uri"), "{text}");
            assert!(!text.contains("hunter2"), "password leaked: {text}");
            assert!(!format!("{config:?}").contains("hunter2"));
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        type Change = fn(&mut RabbitMqConfig);
        let cases: [(&str, Change); 8] = [
            ("rabbitmq.confirm_window", |c| c.confirm_window = 0),
            ("rabbitmq.publish_timeout", |c| {
                c.publish_timeout = Duration::ZERO
            }),
            ("rabbitmq.prefetch", |c| c.prefetch = Some(0)),
            ("rabbitmq.connect_timeout", |c| {
                c.connect_timeout = Duration::ZERO
            }),
            ("rabbitmq.reconnect.min_backoff", |c| {
                c.reconnect.min_backoff = Duration::from_secs(60)
            }),
            ("rabbitmq.max_message_size", |c| c.max_message_size = 0),
            ("rabbitmq.close_timeout", |c| {
                c.close_timeout = Duration::ZERO
            }),
            ("rabbitmq.reconnect.max_backoff", |c| {
                c.reconnect.max_backoff = Duration::from_secs(400 * 24 * 3600)
            }),
        ];
        for (key, change) in cases {
            let mut config = RabbitMqConfig::default();
            change(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn reconnect_backoff_doubles_and_caps() {
        let backoff = ReconnectBackoff {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let delays: Vec<_> = (1..=5).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_millis(500));
    }
}
