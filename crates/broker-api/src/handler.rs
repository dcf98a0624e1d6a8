//! Message handlers for `at_least_once`.

use std::fmt;
use std::future::Future;

use crate::delivery::Metadata;
use crate::error::BoxError;

/// A decoded message handed to a handler: the value and what the broker said about it.
#[derive(Debug, Clone)]
pub struct Received<T> {
    /// The decoded value.
    pub value: T,
    /// Topic, key, headers, ids, attempt and broker position.
    pub metadata: Metadata,
}

/// Why a handler failed.
///
/// Any error converts into it with `?`. A failure is retried with backoff up to the retry
/// policy's `max_attempts`; [`HandlerError::permanent`] skips the remaining attempts and
/// dead-letters the message at once (for input that can never succeed).
pub struct HandlerError {
    source: BoxError,
    permanent: bool,
}

impl HandlerError {
    /// A failure that retrying cannot fix: dead-letter the message now.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError {
            source: source.into(),
            permanent: true,
        }
    }

    /// Whether the failure skips retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(source: E) -> Self {
        HandlerError {
            source: source.into(),
            permanent: false,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("source", &self.source)
            .field("permanent", &self.permanent)
            .finish()
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Handles one message; `Ok` acknowledges it.
///
/// Implemented for every `Fn(Received<T>) -> impl Future<Output = HandlerResult>`, so an async
/// closure is a handler:
///
/// ```
/// # use broker_api::{Handler, Received, HandlerResult};
/// fn assert_handler<H: Handler<String>>(_: H) {}
/// assert_handler(|message: Received<String>| async move {
///     println!("{}", message.value);
///     HandlerResult::Ok(())
/// });
/// ```
pub trait Handler<T>: Send + Sync + 'static {
    /// The future of one call.
    type Future: Future<Output = HandlerResult> + Send + 'static;

    /// Handles `message`. Called again for the same message after a failure.
    fn call(&self, message: Received<T>) -> Self::Future;
}

impl<T, F, Fut> Handler<T> for F
where
    F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, message: Received<T>) -> Fut {
        self(message)
    }
}
