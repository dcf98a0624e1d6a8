//! Maps the client's errors to [`broker_api::Error`].
//!
//! The mapping follows the gRPC status the service answered with; errors raised before a
//! request reached the service (connection refused, timeouts) are connection or timeout errors,
//! temporary by default. Texts name the resource, never credentials.

use std::borrow::Cow;
use std::sync::Arc;

use broker_api::{Error, ErrorKind};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::error::PublishError;

/// The backend name used in every error.
pub(crate) const BACKEND: &str = "pubsub";

/// The gRPC status code of a client error, looking through "retries exhausted" wrappers.
pub(crate) fn status_code(err: &google_cloud_gax::error::Error) -> Option<Code> {
    if let Some(status) = err.status() {
        return Some(status.code);
    }
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        if let Some(gax) = inner.downcast_ref::<google_cloud_gax::error::Error>() {
            if let Some(status) = gax.status() {
                return Some(status.code);
            }
        }
        source = inner.source();
    }
    None
}

/// Whether the error says the resource does not exist.
pub(crate) fn is_not_found(err: &google_cloud_gax::error::Error) -> bool {
    status_code(err) == Some(Code::NotFound)
}

/// Whether the service authenticated the caller but refused the request for lack of a
/// permission: least-privilege roles (`roles/pubsub.publisher`, `.subscriber`) may publish or
/// pull but not list, look up or create topics and subscriptions.
pub(crate) fn is_permission_denied(err: &google_cloud_gax::error::Error) -> bool {
    status_code(err) == Some(Code::PermissionDenied)
}

/// Whether the error says the resource exists already.
pub(crate) fn is_already_exists(err: &google_cloud_gax::error::Error) -> bool {
    status_code(err) == Some(Code::AlreadyExists)
}

/// The broker kind of a client error and whether it is worth retrying.
pub(crate) fn classify(err: &google_cloud_gax::error::Error) -> (ErrorKind, bool) {
    if let Some(code) = status_code(err) {
        return classify_code(code);
    }
    if err.is_timeout() {
        (ErrorKind::Timeout, true)
    } else if err.is_authentication() {
        (ErrorKind::Rejected, err.is_transient_and_before_rpc())
    } else if err.is_serialization() || err.is_deserialization() || err.is_binding() {
        (ErrorKind::Other, false)
    } else {
        // Connection refused or reset, I/O, transport failures, retries exhausted on them.
        (ErrorKind::Connection, true)
    }
}

/// The broker kind of a gRPC status code and whether it is worth retrying.
pub(crate) fn classify_code(code: Code) -> (ErrorKind, bool) {
    match code {
        Code::NotFound => (ErrorKind::NotFound, false),
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated => (ErrorKind::Rejected, false),
        Code::ResourceExhausted => (ErrorKind::Rejected, true),
        Code::DeadlineExceeded => (ErrorKind::Timeout, true),
        Code::Unavailable | Code::Aborted | Code::Internal | Code::Unknown => {
            (ErrorKind::Connection, true)
        }
        // The service cancelled the call (Google's clients retry streaming pulls on it).
        Code::Cancelled => (ErrorKind::Connection, true),
        Code::Unimplemented => (ErrorKind::Unsupported, false),
        _ => (ErrorKind::Other, false),
    }
}

/// A broker error for a failed client call.
pub(crate) fn rpc_error(
    err: google_cloud_gax::error::Error,
    operation: &'static str,
    message: impl Into<Cow<'static, str>>,
) -> Error {
    let (kind, temporary) = classify(&err);
    Error::new(kind, message)
        .backend(BACKEND)
        .operation(operation)
        .temporary(temporary)
        .source(err)
}

/// A broker error for a failed publish, naming the topic.
pub(crate) fn publish_error(err: PublishError, topic: &str) -> Error {
    let operation = "publish";
    match err {
        PublishError::Rpc(inner) => {
            let (kind, temporary) = classify(&inner);
            let message = match kind {
                ErrorKind::NotFound => format!("topic {topic} does not exist"),
                // The request may have reached the service before its answer was lost.
                ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Other => format!(
                    "the message to topic {topic} was not confirmed by the service; it may or \
                     may not have been published"
                ),
                _ => format!("the service did not take the message for topic {topic}"),
            };
            Error::new(kind, message)
                .backend(BACKEND)
                .operation(operation)
                .temporary(temporary)
                .source(Arc::clone(&inner))
        }
        PublishError::OrderingKeyPaused => Error::new(
            ErrorKind::Rejected,
            format!(
                "not sent to topic {topic}: an earlier message with the same key failed, so \
                 this one was held back to keep the key's order; publish it again"
            ),
        )
        .backend(BACKEND)
        .operation(operation)
        .temporary(true),
        // Our close refuses messages before it drops a client, so this is the client's task
        // gone with the runtime it was spawned on.
        PublishError::Shutdown => Error::closed(format!(
            "the client task that sends messages to topic {topic} has stopped: the tokio \
             runtime of the topic's first publish has shut down (use the backend on the \
             runtime it was connected on, and keep that runtime running)"
        ))
        .backend(BACKEND)
        .operation(operation),
        other => Error::new(
            ErrorKind::Other,
            format!("publishing to topic {topic} failed"),
        )
        .backend(BACKEND)
        .operation(operation)
        .source(other),
    }
}

/// The error of every call made after `close`.
pub(crate) fn closed(operation: &'static str) -> Error {
    Error::closed("the Pub/Sub backend was closed")
        .backend(BACKEND)
        .operation(operation)
}

/// A broker error for a client that could not be built.
pub(crate) fn builder_error(err: google_cloud_gax::client_builder::Error, endpoint: &str) -> Error {
    if err.is_default_credentials() {
        Error::config(
            "no Application Default Credentials found: set GOOGLE_APPLICATION_CREDENTIALS, run \
             `gcloud auth application-default login`, set pubsub.credentials_file, or set \
             pubsub.endpoint to use the emulator",
        )
        .backend(BACKEND)
        .operation("connect")
        .source(err)
    } else if err.is_transport() {
        Error::new(
            ErrorKind::Connection,
            format!("cannot set up a connection to {endpoint}"),
        )
        .backend(BACKEND)
        .operation("connect")
        .source(err)
    } else {
        Error::config(format!("cannot build a Pub/Sub client for {endpoint}"))
            .backend(BACKEND)
            .operation("connect")
            .source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn service(code: Code) -> google_cloud_gax::error::Error {
        google_cloud_gax::error::Error::service(Status::default().set_code(code).set_message("no"))
    }

    #[test]
    fn status_codes_map_to_kinds() {
        assert_eq!(
            classify(&service(Code::NotFound)),
            (ErrorKind::NotFound, false)
        );
        assert_eq!(
            classify(&service(Code::Unavailable)),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            classify(&service(Code::PermissionDenied)),
            (ErrorKind::Rejected, false)
        );
        assert_eq!(
            classify(&service(Code::DeadlineExceeded)),
            (ErrorKind::Timeout, true)
        );
        assert_eq!(
            classify(&service(Code::InvalidArgument)),
            (ErrorKind::Rejected, false)
        );
        // A streaming pull the service cancelled is opened again.
        assert_eq!(
            classify(&service(Code::Cancelled)),
            (ErrorKind::Connection, true)
        );
    }

    #[test]
    fn exhausted_retries_keep_the_last_status() {
        let err = google_cloud_gax::error::Error::exhausted(service(Code::NotFound));
        assert_eq!(status_code(&err), Some(Code::NotFound));
        assert!(is_not_found(&err));
        assert!(!is_already_exists(&err));
    }

    #[test]
    fn errors_without_status_are_connection_or_timeout() {
        let io = google_cloud_gax::error::Error::io("connection refused");
        assert_eq!(classify(&io), (ErrorKind::Connection, true));
        let timeout = google_cloud_gax::error::Error::timeout("slow");
        assert_eq!(classify(&timeout), (ErrorKind::Timeout, true));
    }

    #[test]
    fn publish_errors_name_the_topic() {
        let err = publish_error(
            PublishError::Rpc(Arc::new(service(Code::NotFound))),
            "orders",
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("topic orders"), "{err}");
        let err = publish_error(
            PublishError::Rpc(Arc::new(service(Code::Unavailable))),
            "orders",
        );
        assert!(err.to_string().contains("may or may not"), "{err}");
        let err = publish_error(
            PublishError::Rpc(Arc::new(service(Code::PermissionDenied))),
            "orders",
        );
        assert!(err.to_string().contains("did not take"), "{err}");
        let err = publish_error(PublishError::OrderingKeyPaused, "orders");
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.is_temporary());
        let err = publish_error(PublishError::Shutdown, "orders");
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(err.to_string().contains("runtime"), "{err}");
    }
}
