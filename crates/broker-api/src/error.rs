//! The one error type of the library.

use std::borrow::Cow;
use std::fmt;

/// A boxed error from a client library, a codec or a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid: a key, a value or a combination.
    Config,
    /// The operation is not supported by this backend, or its feature was not compiled in.
    Unsupported,
    /// The broker could not be reached or the connection dropped.
    Connection,
    /// The broker did not answer in time.
    Timeout,
    /// The broker refused the request: too large, unroutable, unauthorised, unknown topic.
    Rejected,
    /// A topic, group or subscription does not exist.
    NotFound,
    /// A payload could not be encoded by the topic's codec.
    Encode,
    /// A payload could not be decoded by the topic's codec.
    Decode,
    /// The broker handle or the subscription was closed.
    Closed,
    /// A message handler failed and retries and dead-lettering could not absorb it.
    Handler,
    /// Anything else: a bug or an unexpected answer from a client library.
    Other,
}

impl ErrorKind {
    /// A short lower-case name, as used in error texts.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Rejected => "rejected",
            ErrorKind::NotFound => "not found",
            ErrorKind::Encode => "encode",
            ErrorKind::Decode => "decode",
            ErrorKind::Closed => "closed",
            ErrorKind::Handler => "handler",
            ErrorKind::Other => "other",
        }
    }

    /// Whether errors of this kind are worth retrying by default.
    pub fn is_temporary_by_default(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from any backend or from the API itself.
///
/// It says what kind of failure this is, whether retrying could help, which backend and which
/// operation failed, a message for humans, and the underlying error when there is one. Its
/// `Display` is one line: `<backend> <operation>: <message>: <source>`. Secrets never appear in
/// it: adapters redact URIs and passwords before building errors.
///
/// One pointer wide, as `std::io::Error` is: its parts are boxed, so that every `Result` on
/// the per-message paths (a confirmation, an acknowledgement) stays small to store and move,
/// and only a failure pays for the allocation.
pub struct Error(Box<Parts>);

struct Parts {
    kind: ErrorKind,
    temporary: bool,
    backend: &'static str,
    operation: Cow<'static, str>,
    message: Cow<'static, str>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a message; the backend is "broker" and the operation empty
    /// until set with [`Error::backend`] and [`Error::operation`].
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error(Box::new(Parts {
            kind,
            temporary: kind.is_temporary_by_default(),
            backend: "broker",
            operation: Cow::Borrowed(""),
            message: message.into(),
            source: None,
        }))
    }

    /// Shorthand for a [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for a [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for a [`ErrorKind::Closed`] error.
    pub fn closed(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Closed, message)
    }

    /// Names the backend that failed ("memory", "kafka", "rabbitmq", "pubsub").
    pub fn backend(mut self, backend: &'static str) -> Self {
        self.0.backend = backend;
        self
    }

    /// Names the operation that failed ("publish", "subscribe", "connect", ...).
    pub fn operation(mut self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.0.operation = operation.into();
        self
    }

    /// Attaches the underlying error.
    pub fn source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// A copy for a second caller of what failed: kind, message, backend, operation and
    /// whether it is temporary; not the source, which cannot be cloned.
    pub fn copy_without_source(&self) -> Self {
        Error(Box::new(Parts {
            kind: self.0.kind,
            temporary: self.0.temporary,
            backend: self.0.backend,
            operation: self.0.operation.clone(),
            message: self.0.message.clone(),
            source: None,
        }))
    }

    /// Overrides whether the error is worth retrying.
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.0.temporary = temporary;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Whether retrying the same operation later could succeed.
    pub fn is_temporary(&self) -> bool {
        self.0.temporary
    }

    /// The backend that produced the error.
    pub fn backend_name(&self) -> &'static str {
        self.0.backend
    }

    /// The operation that failed.
    pub fn operation_name(&self) -> &str {
        &self.0.operation
    }

    /// The human-readable message, without backend, operation or source.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

/// The same output as before the parts were boxed: `Error { kind: .., .. }`.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = &*self.0;
        f.debug_struct("Error")
            .field("kind", &parts.kind)
            .field("temporary", &parts.temporary)
            .field("backend", &parts.backend)
            .field("operation", &parts.operation)
            .field("message", &parts.message)
            .field("source", &parts.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = &*self.0;
        f.write_str(parts.backend)?;
        if !parts.operation.is_empty() {
            write!(f, " {}", parts.operation)?;
        }
        write!(f, " ({}): {}", parts.kind, parts.message)?;
        if let Some(source) = &parts.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// The text a panic was raised with, for the error that reports it.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_backend_operation_kind_and_source() {
        let err = Error::new(ErrorKind::Rejected, "message too large")
            .backend("kafka")
            .operation("publish")
            .source(std::io::Error::other("broker said no"));
        assert_eq!(
            err.to_string(),
            "kafka publish (rejected): message too large: broker said no"
        );
        assert!(!err.is_temporary());
        assert_eq!(err.kind(), ErrorKind::Rejected);
    }

    #[test]
    fn an_error_is_one_pointer_and_keeps_its_source() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        let err = Error::new(ErrorKind::Other, "outer").source(std::io::Error::other("inner"));
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("inner"));
    }

    #[test]
    fn connection_errors_are_temporary_by_default() {
        assert!(Error::new(ErrorKind::Connection, "down").is_temporary());
        assert!(!Error::new(ErrorKind::Connection, "down")
            .temporary(false)
            .is_temporary());
    }
}
