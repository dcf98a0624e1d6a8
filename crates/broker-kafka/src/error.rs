//! librdkafka errors as the library's one [`Error`] type.

use broker_api::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The backend name written on every error.
pub(crate) const BACKEND: &str = "kafka";

/// What kind of failure a librdkafka error code is.
pub(crate) fn kind_of(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidMessage
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::PolicyViolation
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL
        | C::UnsupportedCompressionType
        | C::TopicDeletionDisabled
        | C::ProducerFenced
        | C::Fatal => ErrorKind::Rejected,
        C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicId
        | C::GroupIdNotFound => ErrorKind::NotFound,
        C::MessageTimedOut
        | C::OperationTimedOut
        | C::RequestTimedOut
        | C::TimedOutQueue
        | C::QueueFull => ErrorKind::Timeout,
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::CoordinatorNotAvailable
        | C::CoordinatorLoadInProgress
        | C::NotCoordinator
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::WaitingForCoordinator
        | C::KafkaStorageError => ErrorKind::Connection,
        C::PurgeQueue | C::PurgeInflight | C::BrokerDestroy | C::DestroyBroker => ErrorKind::Closed,
        C::InvalidArgument | C::InvalidConfig | C::InvalidRequiredAcks => ErrorKind::Config,
        _ => ErrorKind::Other,
    }
}

/// A client error as an [`Error`] of `operation`, with a message for humans.
pub(crate) fn from_kafka(operation: &'static str, message: String, error: KafkaError) -> Error {
    // rdkafka gives no code for an admin operation's error, though it has one.
    let code = match &error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    let kind = code.map_or_else(
        || match error {
            KafkaError::ClientConfig(..) => ErrorKind::Config,
            KafkaError::Canceled => ErrorKind::Closed,
            _ => ErrorKind::Other,
        },
        kind_of,
    );
    Error::new(kind, message)
        .backend(BACKEND)
        .operation(operation)
        .source(error)
}

/// The error of a closed backend or subscription.
pub(crate) fn closed(operation: &'static str, what: &str) -> Error {
    Error::closed(format!("{what} is closed"))
        .backend(BACKEND)
        .operation(operation)
}

/// A message the client or the broker refused because of its size.
pub(crate) fn too_large(topic: &str, size: usize, limit: usize, error: KafkaError) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "message of {size} bytes (payload, key and headers; the record's framing adds a \
             few dozen more) to topic {topic} is larger than the limit of {limit} bytes \
             (librdkafka's message.max.bytes, or the topic's max.message.bytes on the broker)"
        ),
    )
    .backend(BACKEND)
    .operation("publish")
    .source(error)
}

/// A payload over the announced limit, refused before it reaches librdkafka.
pub(crate) fn payload_too_large(
    topic: &str,
    size: usize,
    limit: usize,
    message_max_bytes: usize,
) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "payload of {size} bytes to topic {topic} is larger than the limit of {limit} bytes \
             (message.max.bytes = {message_max_bytes}, less {} bytes kept for key, headers and \
             a dead letter's headers)",
            message_max_bytes - limit
        ),
    )
    .backend(BACKEND)
    .operation("publish")
}

/// A topic that does not exist while auto-provisioning is off.
pub(crate) fn unknown_topic(operation: &'static str, topic: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "topic {topic} does not exist and auto-provisioning is off: create it first \
             (ensure_topic, or declare it under [topics])"
        ),
    )
    .backend(BACKEND)
    .operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            kind_of(RDKafkaErrorCode::MessageSizeTooLarge),
            ErrorKind::Rejected
        );
        assert_eq!(
            kind_of(RDKafkaErrorCode::UnknownTopicOrPartition),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of(RDKafkaErrorCode::MessageTimedOut),
            ErrorKind::Timeout
        );
        assert_eq!(
            kind_of(RDKafkaErrorCode::AllBrokersDown),
            ErrorKind::Connection
        );
        assert_eq!(kind_of(RDKafkaErrorCode::PurgeQueue), ErrorKind::Closed);
        assert_eq!(
            kind_of(RDKafkaErrorCode::SaslAuthenticationFailed),
            ErrorKind::Rejected
        );
    }

    #[test]
    fn errors_carry_backend_operation_and_temporariness() {
        let err = from_kafka(
            "publish",
            "delivery failed".into(),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        );
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_temporary());
        assert_eq!(err.backend_name(), "kafka");
        assert_eq!(err.operation_name(), "publish");

        let err = from_kafka(
            "publish",
            "delivery failed".into(),
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed),
        );
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(!err.is_temporary());

        let err = from_kafka(
            "delete topic",
            "the broker refused".into(),
            KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        assert_eq!(
            err.kind(),
            ErrorKind::NotFound,
            "an admin answer's code counts"
        );
    }

    #[test]
    fn too_large_names_size_and_limit() {
        let err = too_large(
            "t",
            1_000_001,
            1_000_000,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        let text = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(
            text.contains("1000001 bytes") && text.contains("1000000 bytes"),
            "{text}"
        );
    }
}
