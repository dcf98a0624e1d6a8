//! Starting lapin operations without waiting for them.
//!
//! lapin queues an operation's frames synchronously, on the first poll of the future it
//! returns (`basic.publish` registers its confirm and queues its frames; `basic.ack` queues its
//! frame), and only then waits for its IO thread to write them. Polling once therefore hands the
//! operation over, in call order, without a round trip to the IO thread per message: that is
//! how acknowledgements keep many in flight, and how a publish starts when no publishing task
//! runs it (see `publisher::driver`).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use broker_api::completion::{self, Completion};
use broker_api::Result;
use futures::future::BoxFuture;

/// Polls `future` once: its result when it finished at once, else the future to wait for.
///
/// The first poll uses a no-op waker; whoever awaits the returned completion polls again with
/// its own, which every lapin future registers anew.
pub(crate) fn start<T>(mut future: BoxFuture<'static, Result<T>>) -> Completion<'static, T> {
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => completion::ready(result),
        Poll::Pending => futures::future::Either::Right(future),
    }
}

/// Polls `future` once and drops it: the operation is queued, its completion not awaited.
/// Returns the result when it was already known (an immediate failure).
pub(crate) fn fire<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
