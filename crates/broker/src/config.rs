//! `broker.toml` and `BROKER__*` variables, layered with the `config` crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use broker_api::{naming, Error, Result, SubscriberSettings, TopicSpec};
use config::{Environment, File, FileFormat};
use serde::Deserialize;

/// The file read when no other is named, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "broker.toml";
/// The variable that names the configuration file.
pub const CONFIG_ENV: &str = "BROKER_CONFIG";
/// The prefix of overriding variables: `BROKER__KIND=kafka`,
/// `BROKER__KAFKA__BOOTSTRAP_SERVERS=...` (`__` separates the levels).
pub const ENV_PREFIX: &str = "BROKER";

/// Which backend to connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Kind {
    /// The in-memory broker inside the process (feature `memory`).
    #[default]
    Memory,
    /// Apache Kafka (feature `kafka`).
    Kafka,
    /// RabbitMQ (feature `rabbitmq`).
    Rabbitmq,
    /// Google Cloud Pub/Sub or its emulator (feature `pubsub`).
    Pubsub,
}

impl Kind {
    /// The name used in the configuration and as the Cargo feature.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Kafka => "kafka",
            Kind::Rabbitmq => "rabbitmq",
            Kind::Pubsub => "pubsub",
        }
    }
}

impl TryFrom<String> for Kind {
    type Error = String;

    fn try_from(value: String) -> std::result::Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "memory" => Ok(Kind::Memory),
            "kafka" => Ok(Kind::Kafka),
            "rabbitmq" => Ok(Kind::Rabbitmq),
            "pubsub" => Ok(Kind::Pubsub),
            _ => Err(format!(
                "unknown kind {value:?}: expected one of \"memory\", \"kafka\", \"rabbitmq\", \"pubsub\""
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic declared in the configuration, created with its groups at connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Groups created with the topic, so that nothing published before their first subscriber
    /// is lost on brokers that keep messages only for existing groups.
    pub groups: Vec<String>,
    /// Partitions, where the broker has them.
    #[serde(default, deserialize_with = "broker_api::settings::optional_number")]
    pub partitions: Option<u32>,
}

#[cfg(feature = "memory")]
type MemorySection = broker_memory::MemoryConfig;
#[cfg(not(feature = "memory"))]
type MemorySection = serde::de::IgnoredAny;
#[cfg(feature = "kafka")]
type KafkaSection = broker_kafka::KafkaConfig;
#[cfg(not(feature = "kafka"))]
type KafkaSection = serde::de::IgnoredAny;
#[cfg(feature = "rabbitmq")]
type RabbitMqSection = broker_rabbitmq::RabbitMqConfig;
#[cfg(not(feature = "rabbitmq"))]
type RabbitMqSection = serde::de::IgnoredAny;
#[cfg(feature = "pubsub")]
type PubSubSection = broker_pubsub::PubSubConfig;
#[cfg(not(feature = "pubsub"))]
type PubSubSection = serde::de::IgnoredAny;

/// The whole configuration. Every key is optional; unknown keys are errors.
///
/// Sections of backends that were not compiled in are accepted and ignored, so one file can
/// serve builds with different features.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Which backend to connect: `memory` (default), `kafka`, `rabbitmq`, `pubsub`.
    pub kind: Kind,
    /// Create missing topics, groups and dead-letter topics on first use, and the declared
    /// `[topics.*]` at connect (default true).
    pub auto_provision: Option<bool>,
    /// Defaults of every subscriber.
    pub subscriber: SubscriberSettings,
    /// The `[memory]` section.
    pub memory: Option<MemorySection>,
    /// The `[kafka]` section.
    pub kafka: Option<KafkaSection>,
    /// The `[rabbitmq]` section.
    pub rabbitmq: Option<RabbitMqSection>,
    /// The `[pubsub]` section.
    pub pubsub: Option<PubSubSection>,
    /// Topics and their groups, created at connect.
    pub topics: BTreeMap<String, TopicConfig>,
}

impl BrokerConfig {
    /// Loads `BROKER_CONFIG` if set (it must exist), else `broker.toml` if present, then the
    /// `BROKER__*` variables over it.
    pub fn load() -> Result<Self> {
        match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => BrokerConfig::load_from(Some(Path::new(&path))),
            _ => BrokerConfig::load_from(None),
        }
    }

    /// Loads the named file (it must exist), or `broker.toml` if present when `None`, then the
    /// `BROKER__*` variables over it.
    pub fn load_from(path: Option<&Path>) -> Result<Self> {
        let (file, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        if required && !file.is_file() {
            return Err(Error::config(format!(
                "configuration file {} does not exist (named by --config or {CONFIG_ENV})",
                file.display()
            )));
        }
        let text = if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::config(format!(
                    "cannot read configuration file {}: {e}",
                    file.display()
                ))
            })?;
            check_syntax(&text, &file.display().to_string())?;
            Some(text)
        } else {
            None
        };
        check_environment()?;
        let builder = config::Config::builder()
            .add_source(
                File::from(file.as_path())
                    .format(FileFormat::Toml)
                    .required(required),
            )
            .add_source(environment());
        let source = if required || file.is_file() {
            format!("{} and {ENV_PREFIX}__* variables", file.display())
        } else {
            format!("{ENV_PREFIX}__* variables")
        };
        let config = BrokerConfig::build(builder, &source)?;
        check_topic_variables(&config)?;
        if let Some(text) = text {
            check_types(&text, &file.display().to_string())?;
        }
        Ok(config)
    }

    /// Parses a TOML text (no file, no environment). For tests and embedded defaults.
    pub fn from_toml(text: &str) -> Result<Self> {
        check_syntax(text, "the given TOML")?;
        let builder = config::Config::builder().add_source(File::from_str(text, FileFormat::Toml));
        let config = BrokerConfig::build(builder, "the given TOML")?;
        check_types(text, "the given TOML")?;
        Ok(config)
    }

    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        source: &str,
    ) -> Result<Self> {
        let config: BrokerConfig =
            builder
                .build()
                .and_then(|c| c.try_deserialize())
                .map_err(|e| {
                    let hint = if e.to_string().contains("expected a duration") {
                        " (a duration is written like \"250ms\", \"30s\" or \"5m\")"
                    } else {
                        ""
                    };
                    let message = without_quoted_string(&e.to_string());
                    Error::config(format!(
                        "invalid configuration in {source}: {message}{hint}"
                    ))
                })?;
        config.validate().map_err(|e| {
            Error::config(format!(
                "invalid configuration in {source}: {}",
                e.message()
            ))
        })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; the error names the key.
    pub fn validate(&self) -> Result<()> {
        self.subscriber.validate()?;
        // The other backends check their sections when they connect, which can fail anyway.
        #[cfg(feature = "memory")]
        if let Some(memory) = &self.memory {
            memory.validate()?;
        }
        for (name, topic) in &self.topics {
            naming::validate_topic_name(name)
                .map_err(|e| Error::config(format!("[topics.{name}]: {}", e.message())))?;
            for group in &topic.groups {
                naming::validate_group_name(name, group).map_err(|e| {
                    Error::config(format!("[topics.{name}] groups: {}", e.message()))
                })?;
            }
            if let Some(partitions) = topic.partitions {
                naming::validate_partitions(&format!("[topics.{name}] partitions"), partitions)?;
            }
        }
        Ok(())
    }

    /// Whether missing topics and groups are created.
    pub fn auto_provision(&self) -> bool {
        self.auto_provision.unwrap_or(true)
    }

    /// The declared topics as specs for [`Backend::ensure_topic`](broker_api::Backend::ensure_topic).
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        self.topics
            .iter()
            .map(|(name, topic)| {
                let mut spec = TopicSpec::new(name);
                spec.partitions = topic.partitions;
                spec.groups = topic.groups.clone();
                spec
            })
            .collect()
    }
}

/// Checks a file's values against the configuration's types as TOML writes them, after the
/// `config` crate accepted it (whose errors name the key): it reads `dead_letter = 1` as true,
/// for one (numeric settings read strictly by themselves, see `broker_api::settings::number`).
/// The error gives the line and its key, not the value written there, which may be a secret.
fn check_types(text: &str, source: &str) -> Result<()> {
    check_as::<BrokerConfig>(text, source)
}

/// Checks that `text` is TOML before the `config` crate reads it: that crate's syntax errors
/// quote the line, which may hold a secret. The error names the line, not what is on it.
fn check_syntax(text: &str, source: &str) -> Result<()> {
    check_as::<toml::Table>(text, source)
}

/// Reads `text` as a `T`; an error names the line and the key on it, never the value.
fn check_as<T: serde::de::DeserializeOwned>(text: &str, source: &str) -> Result<()> {
    let Err(e) = toml::from_str::<T>(text) else {
        return Ok(());
    };
    let line = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let number = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |newline| newline + 1);
            let written = text.lines().nth(number - 1).unwrap_or_default();
            // The key only, never what is written after it, and only on a line that starts
            // afresh: a line inside a multi-line string or array is all value.
            let afresh = toml::from_str::<toml::Table>(&text[..start]).is_ok();
            match written.split_once('=') {
                Some((key, _)) if afresh => format!(" (line {number}: `{} = …`)", key.trim()),
                _ => format!(" (line {number})"),
            }
        })
        .unwrap_or_default();
    Err(Error::config(format!(
        "invalid configuration in {source}: {}{line}",
        e.message()
    )))
}

/// The `config` crate's error text without the string it quotes as what it found instead of
/// what it expected (`invalid type: string "amqp://app:secret@host", expected struct …`, for a
/// URI written where its section was meant): that value may be a secret. The key and what was
/// expected stay, and so does a string of the right type with a wrong value (`"10 parsecs"`
/// for a duration).
fn without_quoted_string(message: &str) -> String {
    const MARKER: &str = "invalid type: string \"";
    let Some(start) = message.find(MARKER) else {
        return message.to_owned();
    };
    let after = &message[start + MARKER.len()..];
    // The value may hold quotes itself: it ends at the last `", expected`.
    match after.rfind("\", expected") {
        Some(end) => format!(
            "{}invalid type: a string{}",
            &message[..start],
            &after[end + 1..]
        ),
        None => message.to_owned(),
    }
}

/// Refuses a `BROKER__*` variable that is not UTF-8, naming it: the `config` crate's error
/// would quote its value, which may be a secret.
fn check_environment() -> Result<()> {
    for (name, value) in variables_under(&format!("{ENV_PREFIX}__")) {
        if value.to_str().is_none() {
            return Err(Error::config(format!(
                "environment variable {name} is not valid UTF-8"
            )));
        }
    }
    Ok(())
}

/// Refuses a `BROKER__TOPICS__<NAME>__*` variable meant for a topic that `config` declares
/// with capitals: the `config` crate reads variable names in lower case, so the variable
/// silently declared a second topic, `<name>` in lower case, instead of setting that one.
fn check_topic_variables(config: &BrokerConfig) -> Result<()> {
    let prefix = format!("{ENV_PREFIX}__TOPICS__");
    for (name, _) in variables_under(&prefix) {
        let topic = name[prefix.len()..]
            .split("__")
            .next()
            .unwrap_or_default()
            .to_lowercase();
        let declared = config
            .topics
            .keys()
            .find(|declared| **declared != topic && declared.to_lowercase() == topic);
        if let Some(declared) = declared {
            return Err(Error::config(format!(
                "environment variable {name} declares topic `{topic}`, not `{declared}`: \
                 variable names are read in lower case, so a topic whose name has capitals is \
                 configured in the file only"
            )));
        }
    }
    Ok(())
}

/// The variables whose names start with `prefix` in any case, as the `config` crate matches
/// it, with their names made text.
fn variables_under(prefix: &str) -> impl Iterator<Item = (String, std::ffi::OsString)> + '_ {
    std::env::vars_os().filter_map(move |(name, value)| {
        let name = name.to_string_lossy().into_owned();
        let ours = name
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix));
        ours.then_some((name, value))
    })
}

/// The `BROKER__*` variables, kept as text: each setting parses its own (numbers, booleans,
/// durations). Parsed up front, `2.5` would become a number that an integer setting rounds.
fn environment() -> Environment {
    Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
}
