//! Topics through Kafka's admin API: create (idempotently), list, delete, look up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_api::naming::validate_partitions;
use broker_api::{Error, ErrorKind, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::context::ClientLog;
use crate::error::{from_kafka, kind_of, BACKEND};

/// What the cluster says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicState {
    /// The topic exists with these partitions, each with a leader.
    Ready(Vec<i32>),
    /// The broker does not know the topic.
    Missing,
    /// The topic exists but is not usable yet (no leader for some partition, being created).
    Pending,
    /// These credentials may not see the topic (not even DESCRIBE): they cannot use it.
    Denied,
}

/// The admin client and the defaults for topics it creates. Cheap to share behind an `Arc`.
pub(crate) struct Admin {
    client: AdminClient<ClientLog>,
    timeout: Duration,
    partitions: Option<u32>,
    replication_factor: Option<u16>,
}

impl Admin {
    /// An admin client for `config`; it connects lazily.
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self> {
        let client = config
            .admin_config()
            .create_with_context(ClientLog::new("admin"))
            .map_err(|e| crate::config::property_error(&e))?;
        Ok(Admin {
            client,
            timeout: config.connect_timeout,
            partitions: config.partitions,
            replication_factor: config.replication_factor,
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Creates `name` unless it exists, then waits until the cluster serves it (a leader for
    /// every partition). A topic that exists is used as it is, with a warning when it has fewer
    /// partitions than asked.
    ///
    /// `partitions` overrides the configured default; `None` everywhere means the broker's.
    pub(crate) async fn ensure_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: Option<u32>,
    ) -> Result<()> {
        let partitions = match partitions.or(self.partitions) {
            Some(count) => partition_count(&format!("partitions of topic {name}"), count)
                .map_err(|e| e.backend(BACKEND).operation("ensure topic"))?,
            None => -1,
        };
        let replication = self.replication_factor.map_or(-1, i32::from);
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        let results = self
            .client
            .create_topics([&topic], &self.options())
            .await
            .map_err(|e| from_kafka("ensure topic", format!("creating topic {name} failed"), e))?;
        let mut existed = false;
        for result in results {
            let (topic, code) = match result {
                Ok(_) => continue,
                Err(refused) => refused,
            };
            match creation_refusal(code) {
                Refusal::Exists => existed = true,
                Refusal::NotAllowed => self.usable_without_creating(name, code).await?,
                Refusal::Failed => {
                    return Err(admin_failure("ensure topic", "create", &topic, code))
                }
            }
        }
        if !existed {
            return self.wait_ready(name).await;
        }
        // Usable as it is: a partition without a leader for now is librdkafka's to wait for.
        match self.topic_state(name).await? {
            TopicState::Ready(found) => {
                if i32::try_from(found.len()).is_ok_and(|found| found < partitions) {
                    tracing::warn!(topic = name, partitions = found.len(), asked = partitions,
                        "the topic exists with fewer partitions than asked and is used as it is: the members of a group share at most that many (add partitions with Kafka's tools)");
                }
                Ok(())
            }
            TopicState::Pending => Ok(()),
            // Just deleted, or not visible: as for a topic created here.
            TopicState::Missing | TopicState::Denied => self.wait_ready(name).await,
        }
    }

    /// After a creation refused as not authorized: Kafka checks the CREATE permission before
    /// it looks whether the topic exists, so credentials that may use a topic but not create it
    /// hear "not authorized" for a topic that exists. Fine when it exists; a `NotFound` error
    /// naming the topic and the permission when it does not.
    async fn usable_without_creating(
        self: &Arc<Self>,
        name: &str,
        code: RDKafkaErrorCode,
    ) -> Result<()> {
        match self.topic_state(name).await? {
            TopicState::Ready(_) | TopicState::Pending => Ok(()),
            TopicState::Denied => Err(denied("ensure topic", name)),
            TopicState::Missing => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "topic {name} does not exist and these credentials may not create it \
                     ({code}): create it beforehand, or grant CREATE on it"
                ),
            )
            .backend(BACKEND)
            .operation("ensure topic")
            .source(KafkaError::AdminOp(code))),
        }
    }

    /// Waits until `name` has a leader for every partition (new topics take a moment).
    async fn wait_ready(self: &Arc<Self>, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.topic_state(name).await? {
                TopicState::Ready(_) => return Ok(()),
                TopicState::Denied => return Err(denied("ensure topic", name)),
                _ if Instant::now() >= deadline => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "topic {name} was created but has no leader for every partition \
                             after {}",
                            humantime::format_duration(self.timeout)
                        ),
                    )
                    .backend(BACKEND)
                    .operation("ensure topic"))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What the cluster says about `name`.
    pub(crate) async fn topic_state(self: &Arc<Self>, name: &str) -> Result<TopicState> {
        let admin = self.clone();
        let topic = name.to_owned();
        let metadata = self
            .blocking(move || {
                admin
                    .client
                    .inner()
                    .fetch_metadata(Some(&topic), admin.timeout)
            })
            .await
            .map_err(|e| from_kafka("look up topic", format!("no metadata for topic {name}"), e))?;
        Ok(topic_state(&metadata, name))
    }

    /// Every topic of the cluster but Kafka's internal ones (`__consumer_offsets`, ...).
    pub(crate) async fn list_topics(self: &Arc<Self>) -> Result<Vec<String>> {
        let admin = self.clone();
        let metadata = self
            .blocking(move || admin.client.inner().fetch_metadata(None, admin.timeout))
            .await
            .map_err(|e| from_kafka("list topics", "no cluster metadata".into(), e))?;
        let mut names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| !name.starts_with("__"))
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Deletes `name`; a topic that does not exist is a [`ErrorKind::NotFound`] error.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<()> {
        let results = self
            .client
            .delete_topics(&[name], &self.options())
            .await
            .map_err(|e| from_kafka("delete topic", format!("deleting topic {name} failed"), e))?;
        for result in results {
            if let Err((topic, code)) = result {
                return Err(admin_failure("delete topic", "delete", &topic, code));
            }
        }
        Ok(())
    }

    /// Runs a blocking client call off the async threads.
    async fn blocking<T, F>(&self, call: F) -> std::result::Result<T, KafkaError>
    where
        F: FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(call)
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// A partition count as Kafka takes it (see [`validate_partitions`]).
pub(crate) fn partition_count(key: &str, count: u32) -> Result<i32> {
    validate_partitions(key, count)?;
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// The error for a topic these credentials may not see: they can neither use nor create it.
pub(crate) fn denied(operation: &'static str, topic: &str) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "these credentials may not use topic {topic} (TOPIC_AUTHORIZATION_FAILED): grant \
             them access to it (DESCRIBE, and WRITE to publish or READ to subscribe)"
        ),
    )
    .backend(BACKEND)
    .operation(operation)
}

/// The broker's answer `code` to a request to `action` (create, delete) `topic`: a refusal,
/// or a request it did not finish in time and may still carry out.
fn admin_failure(
    operation: &'static str,
    action: &str,
    topic: &str,
    code: RDKafkaErrorCode,
) -> Error {
    let message = if kind_of(code) == ErrorKind::Timeout {
        format!("the broker did not {action} topic {topic} in time (it may still)")
    } else {
        format!("the broker refused to {action} topic {topic}")
    };
    from_kafka(operation, message, KafkaError::AdminOp(code))
}

/// What a refused topic creation means.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The topic exists already.
    Exists,
    /// These credentials may not create topics; the topic may exist all the same.
    NotAllowed,
    /// The creation failed.
    Failed,
}

fn creation_refusal(code: RDKafkaErrorCode) -> Refusal {
    match code {
        RDKafkaErrorCode::TopicAlreadyExists => Refusal::Exists,
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Refusal::NotAllowed,
        _ => Refusal::Failed,
    }
}

/// Reads one topic's state out of a metadata answer.
pub(crate) fn topic_state(metadata: &Metadata, name: &str) -> TopicState {
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
        return TopicState::Missing;
    };
    match topic.error() {
        Some(
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
            | RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
        ) => TopicState::Missing,
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => TopicState::Denied,
        Some(_) => TopicState::Pending,
        None if topic.partitions().is_empty()
            || topic.partitions().iter().any(|p| p.leader() < 0) =>
        {
            TopicState::Pending
        }
        None => TopicState::Ready(topic.partitions().iter().map(|p| p.id()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_the_broker_did_not_finish_in_time_is_not_called_refused() {
        let err = admin_failure(
            "delete topic",
            "delete",
            "orders",
            RDKafkaErrorCode::RequestTimedOut,
        );
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            err.to_string()
                .contains("did not delete topic orders in time"),
            "{err}"
        );
        let err = admin_failure(
            "ensure topic",
            "create",
            "orders",
            RDKafkaErrorCode::PolicyViolation,
        );
        assert!(
            err.to_string().contains("refused to create topic orders"),
            "{err}"
        );
    }

    #[test]
    fn a_creation_refused_as_not_authorized_looks_the_topic_up() {
        // Least-privilege credentials (WRITE and READ, no CREATE) on a topic that exists.
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            assert_eq!(creation_refusal(code), Refusal::NotAllowed, "{code}");
        }
        assert_eq!(
            creation_refusal(RDKafkaErrorCode::TopicAlreadyExists),
            Refusal::Exists
        );
        for code in [
            RDKafkaErrorCode::InvalidReplicationFactor,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert_eq!(creation_refusal(code), Refusal::Failed, "{code}");
        }
    }
}
