//! The future type of the hot paths (send, confirm, ack): ready without allocating when the
//! backend already has the answer, boxed when it must wait for the broker.

use futures::future::{BoxFuture, Either, Ready};

use crate::Result;

/// A future that is either already complete or boxed.
///
/// The in-memory backend and acks that only record an offset answer at once through
/// [`ready`]; a backend waiting for a broker answers through [`boxed`].
pub type Completion<'a, T> = Either<Ready<Result<T>>, BoxFuture<'a, Result<T>>>;

/// A completion that is already done.
pub fn ready<'a, T>(result: Result<T>) -> Completion<'a, T> {
    Either::Left(futures::future::ready(result))
}

/// A completion that waits for `future`.
pub fn boxed<'a, T, F>(future: F) -> Completion<'a, T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'a,
{
    Either::Right(Box::pin(future))
}
