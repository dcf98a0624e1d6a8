//! The `[pubsub]` section of `broker.toml` and the client options it turns into.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use broker_api::{check_timeout, redact_uri, Error, Result};
use serde::Deserialize;

/// The `[pubsub]` section of the configuration.
///
/// ```toml
/// [pubsub]
/// project = "local-project"
/// endpoint = "http://127.0.0.1:8085"   # the emulator; leave out for Google Cloud
/// ```
///
/// Every field has a default, so an empty section connects to the emulator-less Google Cloud
/// service of project `local-project` with Application Default Credentials; set `endpoint` to
/// talk to the emulator (anonymous credentials) and `project` to your project id.
///
/// Credentials are chosen from the fields alone (the client never reads
/// `PUBSUB_EMULATOR_HOST`):
///
/// | `endpoint` | `credentials_file` | credentials |
/// | --- | --- | --- |
/// | set | — | anonymous (the emulator checks none) |
/// | absent | set | that service-account key file |
/// | absent | absent | Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, the metadata server) |
///
/// Setting both `endpoint` and `credentials_file` uses the key file against that endpoint
/// (e.g. a regional or private endpoint of Google Cloud).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PubSubConfig {
    /// The Google Cloud project that holds the topics and subscriptions. Default
    /// `"local-project"` (any id works on the emulator).
    pub project: String,
    /// The service's address, e.g. `"http://127.0.0.1:8085"` for the emulator. When set without
    /// `credentials_file`, requests carry no credentials. Default: absent, meaning Google
    /// Cloud's `https://pubsub.googleapis.com` with real credentials.
    pub endpoint: Option<String>,
    /// A service-account key file (JSON) to authenticate with instead of Application Default
    /// Credentials. Default: absent.
    pub credentials_file: Option<PathBuf>,
    /// How long `connect` waits for the service to answer before failing. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish may keep retrying temporary failures (the service unreachable, a
    /// topic that vanished and is being re-created) before its confirmation fails. Default 30 s.
    /// A keyed message queued behind one of its key that failed is sent again once that one
    /// failed, for up to this long again: its confirmation can take up to twice this.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long administrative calls (create, list, delete topics and subscriptions) may keep
    /// retrying temporary failures. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub admin_timeout: Duration,
    /// A publish batch is sent when it holds this many messages (1 to 1000). Default 100.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub batch_max_messages: u32,
    /// A publish batch is sent when it holds this many bytes (1 to 10 000 000). Default
    /// 1 000 000.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub batch_max_bytes: u32,
    /// A publish batch is sent at the latest this long after its first message. Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Most messages sent and not answered by the service yet, over all topics: `send` waits
    /// for room beyond it (the client has no publisher flow control of its own). A failed
    /// message keeps its room while it is published again. Default 100 000, librdkafka's
    /// default queue bound.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub max_pending_messages: u32,
    /// Most bytes of messages (data, key and attributes) sent and not answered yet, over all
    /// topics; a message larger than this waits until it is the only one. Default 100 MiB.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub max_pending_bytes: u32,
    /// Flow control of each subscription in bytes: the service sends no more while this many
    /// bytes are delivered and not settled. The message limit is the subscriber's
    /// `max_in_flight`. Default 100 MiB.
    #[serde(deserialize_with = "broker_api::settings::number")]
    pub max_outstanding_bytes: i64,
    /// How far each lease extension pushes a message's acknowledgement deadline (10 s to
    /// 600 s); it is also how long a message held by a crashed process stays invisible to the
    /// group. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub ack_deadline: Duration,
    /// How long a delivered message is kept leased while its handler runs; after that the
    /// service may deliver it again. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// Whether to work around the emulator's streaming pulls that outlive their cancellation
    /// (reuse of closed pulls, reclaiming abandoned ones; see the crate docs). Default: absent,
    /// meaning on exactly when the credentials are anonymous (`endpoint` set without
    /// `credentials_file`). Turn it off on an emulator shared with other programs that must
    /// not see their streaming pulls ended.
    pub emulator_workarounds: Option<bool>,
}

/// Default project id.
pub const DEFAULT_PROJECT: &str = "local-project";

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            project: DEFAULT_PROJECT.to_owned(),
            endpoint: None,
            credentials_file: None,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            admin_timeout: Duration::from_secs(30),
            batch_max_messages: 100,
            batch_max_bytes: 1_000_000,
            batch_max_delay: Duration::from_millis(10),
            max_pending_messages: 100_000,
            max_pending_bytes: 100 * 1024 * 1024,
            max_outstanding_bytes: 100 * 1024 * 1024,
            ack_deadline: Duration::from_secs(60),
            max_lease: Duration::from_secs(3600),
            emulator_workarounds: None,
        }
    }
}

impl fmt::Debug for PubSubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubConfig")
            .field("project", &self.project)
            .field("endpoint", &self.endpoint.as_deref().map(redact_uri))
            .field(
                "credentials_file",
                &self.credentials_file.as_ref().map(|_| "<set>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("admin_timeout", &self.admin_timeout)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("batch_max_delay", &self.batch_max_delay)
            .field("max_pending_messages", &self.max_pending_messages)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_outstanding_bytes", &self.max_outstanding_bytes)
            .field("ack_deadline", &self.ack_deadline)
            .field("max_lease", &self.max_lease)
            .field("emulator_workarounds", &self.emulator_workarounds)
            .finish()
    }
}

/// Which credentials the clients are built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsChoice {
    /// No credentials: the emulator.
    Anonymous,
    /// The service-account key in this file.
    ServiceAccountFile(PathBuf),
    /// Application Default Credentials.
    ApplicationDefault,
}

/// What the configuration means for the client builders: where to connect and how to
/// authenticate. Computed without any I/O, so it is unit-tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The endpoint passed to `with_endpoint`; `None` keeps the client's Google Cloud default.
    pub endpoint: Option<String>,
    /// The credentials passed to `with_credentials` (none passed for Application Default
    /// Credentials, which the client then loads itself).
    pub credentials: CredentialsChoice,
}

/// Google Cloud's Pub/Sub endpoint, used when `endpoint` is absent.
pub const GOOGLE_CLOUD_ENDPOINT: &str = "https://pubsub.googleapis.com";

impl PubSubConfig {
    /// Checks every value; the error names the key, the value and what would be accepted.
    pub fn validate(&self) -> Result<()> {
        let valid_project = !self.project.is_empty()
            && self
                .project
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/');
        if !valid_project {
            return Err(Error::config(format!(
                "pubsub.project = {:?}: expected a Google Cloud project id (lower-case letters, \
                 digits and '-', no '/')",
                self.project
            )));
        }
        if let Some(endpoint) = &self.endpoint {
            let has_scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            let host = endpoint.split_once("://").map_or("", |(_, rest)| rest);
            if !has_scheme || host.is_empty() || host.starts_with('/') {
                return Err(Error::config(format!(
                    "pubsub.endpoint = {:?}: expected a URL with scheme and host, e.g. \
                     \"http://127.0.0.1:8085\" for the emulator",
                    redact_uri(endpoint)
                )));
            }
        }
        if let Some(path) = &self.credentials_file {
            if path.as_os_str().is_empty() {
                return Err(Error::config(
                    "pubsub.credentials_file is empty: expected the path of a service-account \
                     key file (JSON), or leave it out for Application Default Credentials",
                ));
            }
        }
        check_range(
            "batch_max_messages",
            self.batch_max_messages,
            1,
            1000,
            "messages",
        )?;
        check_range(
            "batch_max_bytes",
            self.batch_max_bytes,
            1,
            10_000_000,
            "bytes",
        )?;
        for (key, value, unit) in [
            (
                "max_pending_messages",
                self.max_pending_messages,
                "messages",
            ),
            ("max_pending_bytes", self.max_pending_bytes, "bytes"),
        ] {
            check_range(key, value, 1, u32::MAX, unit)?;
        }
        if self.max_outstanding_bytes < 1 {
            return Err(Error::config(format!(
                "pubsub.max_outstanding_bytes = {}: expected a number of bytes of at least 1",
                self.max_outstanding_bytes
            )));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("publish_timeout", self.publish_timeout),
            ("admin_timeout", self.admin_timeout),
            // The client adds it to the time a message arrived: far beyond a day it overflows.
            ("max_lease", self.max_lease),
        ] {
            check_timeout(&format!("pubsub.{key}"), value)?;
        }
        let deadline = self.ack_deadline.as_secs();
        if !(10..=600).contains(&deadline) {
            return Err(Error::config(format!(
                "pubsub.ack_deadline = {}: expected 10s to 600s",
                humantime::format_duration(self.ack_deadline)
            )));
        }
        if self.max_lease < self.ack_deadline {
            return Err(Error::config(format!(
                "pubsub.max_lease = {} is shorter than ack_deadline = {}",
                humantime::format_duration(self.max_lease),
                humantime::format_duration(self.ack_deadline)
            )));
        }
        Ok(())
    }

    /// The endpoint and credentials the clients are built with (see the table on
    /// [`PubSubConfig`]).
    pub fn client_options(&self) -> ClientOptions {
        let credentials = match (&self.endpoint, &self.credentials_file) {
            (_, Some(file)) => CredentialsChoice::ServiceAccountFile(file.clone()),
            (Some(_), None) => CredentialsChoice::Anonymous,
            (None, None) => CredentialsChoice::ApplicationDefault,
        };
        ClientOptions {
            endpoint: self.endpoint.clone(),
            credentials,
        }
    }

    /// Whether the emulator workarounds are on (see [`PubSubConfig::emulator_workarounds`]).
    pub fn uses_emulator_workarounds(&self) -> bool {
        self.emulator_workarounds
            .unwrap_or(self.client_options().credentials == CredentialsChoice::Anonymous)
    }

    /// Where the clients connect, for humans and error texts: the endpoint without any
    /// user information, or Google Cloud's endpoint.
    pub fn display_endpoint(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => redact_uri(endpoint),
            None => GOOGLE_CLOUD_ENDPOINT.to_owned(),
        }
    }
}

fn check_range(key: &str, value: u32, min: u32, max: u32, unit: &str) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "pubsub.{key} = {value}: expected {min} to {max} {unit}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<PubSubConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse("").unwrap();
        assert_eq!(config, PubSubConfig::default());
        assert_eq!(config.project, "local-project");
        assert_eq!(config.endpoint, None);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.batch_max_messages, 100);
        assert_eq!(config.batch_max_bytes, 1_000_000);
        assert_eq!(config.batch_max_delay, Duration::from_millis(10));
        assert_eq!(config.max_pending_messages, 100_000);
        assert_eq!(config.max_pending_bytes, 100 * 1024 * 1024);
        assert_eq!(config.max_outstanding_bytes, 100 * 1024 * 1024);
        assert_eq!(config.ack_deadline, Duration::from_secs(60));
        config.validate().unwrap();
    }

    #[test]
    fn parses_every_key() {
        let config = parse(
            r#"
            project = "my-project"
            endpoint = "http://127.0.0.1:8085"
            credentials_file = "/etc/key.json"
            connect_timeout = "3s"
            publish_timeout = "1m"
            admin_timeout = "20s"
            batch_max_messages = 500
            batch_max_bytes = 2000000
            batch_max_delay = "5ms"
            max_pending_messages = 500
            max_pending_bytes = 1000000
            max_outstanding_bytes = 1048576
            ack_deadline = "30s"
            max_lease = "10m"
            emulator_workarounds = true
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.project, "my-project");
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.publish_timeout, Duration::from_secs(60));
        assert_eq!(config.batch_max_messages, 500);
        assert_eq!(config.batch_max_delay, Duration::from_millis(5));
        assert_eq!(config.max_pending_messages, 500);
        assert_eq!(config.max_pending_bytes, 1_000_000);
        assert_eq!(config.max_lease, Duration::from_secs(600));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let err = parse("projekt = \"x\"").unwrap_err().to_string();
        assert!(err.contains("projekt"), "{err}");
        let err = parse("connect_timeout = \"soon\"").unwrap_err().to_string();
        assert!(
            err.contains("connect_timeout") || err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases: [(&str, &str); 10] = [
            ("max_pending_messages = 0", "pubsub.max_pending_messages"),
            ("max_pending_bytes = 0", "pubsub.max_pending_bytes"),
            ("endpoint = \"127.0.0.1:8085\"", "pubsub.endpoint"),
            ("project = \"a/b\"", "pubsub.project"),
            ("batch_max_messages = 0", "pubsub.batch_max_messages"),
            ("batch_max_bytes = 20000000", "pubsub.batch_max_bytes"),
            ("ack_deadline = \"5s\"", "pubsub.ack_deadline"),
            ("connect_timeout = \"0s\"", "pubsub.connect_timeout"),
            ("max_lease = \"20s\"", "pubsub.max_lease"),
            ("max_lease = \"9300000000000000000s\"", "pubsub.max_lease"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap().validate().unwrap_err();
            assert_eq!(err.kind(), broker_api::ErrorKind::Config);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn emulator_endpoint_uses_anonymous_credentials() {
        let config = parse("endpoint = \"http://127.0.0.1:8085\"").unwrap();
        assert_eq!(
            config.client_options(),
            ClientOptions {
                endpoint: Some("http://127.0.0.1:8085".into()),
                credentials: CredentialsChoice::Anonymous,
            }
        );
        assert_eq!(config.display_endpoint(), "http://127.0.0.1:8085");
        assert!(config.uses_emulator_workarounds());
        let config =
            parse("endpoint = \"http://127.0.0.1:8085\"\nemulator_workarounds = false").unwrap();
        assert!(!config.uses_emulator_workarounds());
    }

    #[test]
    fn google_cloud_uses_application_default_credentials() {
        let config = parse("project = \"my-project\"").unwrap();
        assert_eq!(
            config.client_options(),
            ClientOptions {
                endpoint: None,
                credentials: CredentialsChoice::ApplicationDefault,
            }
        );
        assert_eq!(config.display_endpoint(), GOOGLE_CLOUD_ENDPOINT);
        assert!(!config.uses_emulator_workarounds());
    }

    #[test]
    fn key_file_wins_over_application_default_credentials() {
        let config =
            parse("project = \"my-project\"\ncredentials_file = \"/secrets/sa.json\"").unwrap();
        assert_eq!(
            config.client_options(),
            ClientOptions {
                endpoint: None,
                credentials: CredentialsChoice::ServiceAccountFile("/secrets/sa.json".into()),
            }
        );
        let config = parse(
            "endpoint = \"https://europe-west1-pubsub.googleapis.com\"\n\
             credentials_file = \"/secrets/sa.json\"",
        )
        .unwrap();
        assert_eq!(
            config.client_options().credentials,
            CredentialsChoice::ServiceAccountFile("/secrets/sa.json".into())
        );
    }

    #[test]
    fn debug_and_display_hide_secrets() {
        let config = PubSubConfig {
            endpoint: Some("https://user:hunter2@pubsub.example.com/x".into()),
            credentials_file: Some("/secrets/sa.json".into()),
            ..PubSubConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("sa.json"), "{debug}");
        assert_eq!(
            config.display_endpoint(),
            "https://***@pubsub.example.com/x"
        );
        let config = PubSubConfig {
            endpoint: Some("https://svc:pa/ss@proxy.example.com".into()),
            ..PubSubConfig::default()
        };
        assert!(!format!("{config:?}").contains("pa/ss"));
        assert!(!config.display_endpoint().contains("pa/ss"));
    }
}
