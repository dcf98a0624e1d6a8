//! Maps lapin's errors and AMQP reply codes to the library's [`Error`].

use broker_api::{Error, ErrorKind};
use lapin::protocol::AMQPError;

/// The backend name carried by every error.
pub(crate) const BACKEND: &str = "rabbitmq";

/// AMQP reply codes this adapter tells apart (AMQP 0-9-1, section 1.9).
pub(crate) mod reply_code {
    /// The broker shut the connection down (restart, `rabbitmqctl close_connection`).
    pub(crate) const CONNECTION_FORCED: u16 = 320;
    /// A mandatory message no queue would take.
    pub(crate) const NO_ROUTE: u16 = 312;
    /// The message is too large.
    pub(crate) const CONTENT_TOO_LARGE: u16 = 311;
    /// Wrong credentials or missing permissions.
    pub(crate) const ACCESS_REFUSED: u16 = 403;
    /// An exchange or queue does not exist.
    pub(crate) const NOT_FOUND: u16 = 404;
    /// An exclusive resource is held by another connection.
    pub(crate) const RESOURCE_LOCKED: u16 = 405;
    /// A declaration does not match what exists, or a message broke a limit.
    pub(crate) const PRECONDITION_FAILED: u16 = 406;
    /// The virtual host does not exist or may not be used.
    pub(crate) const NOT_ALLOWED: u16 = 530;
}

/// The AMQP error the broker sent, if this is one (a channel or connection close).
pub(crate) fn amqp_error(error: &lapin::Error) -> Option<&AMQPError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp),
        _ => None,
    }
}

/// Whether the error means the connection or channel is gone (rather than a refusal).
pub(crate) fn is_connection_loss(error: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match error.kind() {
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_)
        | K::MissingHeartbeatError => true,
        K::ProtocolError(amqp) => amqp.get_id() == reply_code::CONNECTION_FORCED,
        _ => false,
    }
}

/// The kind of failure for a lapin error, from its AMQP reply code when there is one.
pub(crate) fn kind_of(error: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as K;
    if is_connection_loss(error) {
        return ErrorKind::Connection;
    }
    match error.kind() {
        K::ProtocolError(amqp) => match amqp.get_id() {
            reply_code::NOT_FOUND => ErrorKind::NotFound,
            reply_code::ACCESS_REFUSED
            | reply_code::RESOURCE_LOCKED
            | reply_code::PRECONDITION_FAILED
            | reply_code::NOT_ALLOWED
            | reply_code::NO_ROUTE
            | reply_code::CONTENT_TOO_LARGE => ErrorKind::Rejected,
            _ => ErrorKind::Other,
        },
        K::ChannelsLimitReached => ErrorKind::Rejected,
        K::AuthProviderError(_) => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    }
}

/// A library error for a failed client call, with `message` saying what was attempted.
///
/// lapin's errors never contain the URI, so nothing secret reaches the text.
pub(crate) fn from_lapin(
    operation: &'static str,
    message: impl Into<std::borrow::Cow<'static, str>>,
    error: lapin::Error,
) -> Error {
    Error::new(kind_of(&error), message)
        .backend(BACKEND)
        .operation(operation)
        .source(error)
}

/// The error for a failed connection attempt to `endpoint`.
pub(crate) fn connect_failed(endpoint: &str, error: lapin::Error) -> Error {
    let refused = amqp_error(&error).map(|amqp| (amqp.get_id(), amqp.get_message().to_string()));
    if let Some((reply_code::NOT_ALLOWED, text)) = &refused {
        if text.contains("connection limit") {
            return Error::new(
                ErrorKind::Rejected,
                format!(
                    "RabbitMQ at {endpoint} refused the connection: the user's or the virtual \
                     host's connection limit is reached (a backend opens two)"
                ),
            )
            .backend(BACKEND)
            .operation("connect")
            .source(error);
        }
    }
    let refused_login = refused.is_some_and(|(code, _)| {
        code == reply_code::ACCESS_REFUSED || code == reply_code::NOT_ALLOWED
    });
    if refused_login {
        return Error::new(
            ErrorKind::Rejected,
            format!(
                "RabbitMQ at {endpoint} refused the login: check the user name, the password \
                 and the user's permissions on the virtual host (rabbitmq.uri)"
            ),
        )
        .backend(BACKEND)
        .operation("connect")
        .source(error);
    }
    // RabbitMQ drops the socket without a reply on some handshake failures (bad credentials
    // with older versions): say what it may mean.
    Error::new(
        ErrorKind::Connection,
        format!(
            "cannot connect to RabbitMQ at {endpoint} (is it running, are the credentials right?)"
        ),
    )
    .backend(BACKEND)
    .operation("connect")
    .source(error)
}

/// Runs `future` until `deadline`; a [`ErrorKind::Timeout`] error for `operation` after it.
/// Guards the broker round trips that a half-working broker could leave unanswered.
pub(crate) async fn within<T>(
    deadline: tokio::time::Instant,
    operation: &'static str,
    future: impl std::future::Future<Output = broker_api::Result<T>>,
) -> broker_api::Result<T> {
    match tokio::time::timeout_at(deadline, future).await {
        Ok(result) => result,
        Err(_) => Err(
            Error::new(ErrorKind::Timeout, "RabbitMQ did not answer in time")
                .backend(BACKEND)
                .operation(operation),
        ),
    }
}

/// The error for an operation attempted after `close`.
pub(crate) fn closed(operation: &'static str) -> Error {
    Error::closed("the RabbitMQ backend is closed")
        .backend(BACKEND)
        .operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn reply_codes_map_to_kinds() {
        let not_found = protocol(
            AMQPSoftError::NOTFOUND.into(),
            "NOT_FOUND - no exchange 'x' in vhost '/'",
        );
        assert_eq!(kind_of(&not_found), ErrorKind::NotFound);
        let precondition = protocol(
            AMQPSoftError::PRECONDITIONFAILED.into(),
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'",
        );
        assert_eq!(kind_of(&precondition), ErrorKind::Rejected);
        let forced = protocol(
            AMQPHardError::CONNECTIONFORCED.into(),
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        );
        assert_eq!(kind_of(&forced), ErrorKind::Connection);
        assert!(is_connection_loss(&forced));
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(kind_of(&io), ErrorKind::Connection);
    }

    #[test]
    fn errors_carry_backend_operation_and_temporariness() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        let err = from_lapin("publish", "the connection dropped", io);
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.is_temporary());
        assert!(err
            .to_string()
            .starts_with("rabbitmq publish (connection): the connection dropped"));
    }

    #[test]
    fn refused_logins_are_rejections_naming_the_endpoint() {
        let refused = protocol(
            AMQPSoftError::ACCESSREFUSED.into(),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        let err = connect_failed("amqp://127.0.0.1:5672/%2f", refused);
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.to_string().contains("amqp://127.0.0.1:5672/%2f"));
        assert!(err.to_string().contains("refused the login"));
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        let err = connect_failed("amqp://127.0.0.1:1/%2f", io);
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.to_string().contains("amqp://127.0.0.1:1/%2f"));
    }
}
