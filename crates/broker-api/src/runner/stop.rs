//! [`Stop`]: the close signal of a running subscription.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Set once by [`Running::close`](super::Running::close) or by closing the broker; the runner
/// reads it before taking each delivery and waits on it only while the stream has nothing
/// ready.
///
/// The flag makes the per-delivery check one atomic load: the token's own check takes a lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop {
    requested: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Stop {
    /// Signals the runner to stop taking deliveries.
    pub(crate) fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether stopping was requested.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The token cancelled with the request: awaited while waiting for deliveries or handlers,
    /// and the parent of the runner's own cancellations.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_sets_the_flag_and_cancels_the_token() {
        let stop = Stop::default();
        let seen_by_runner = stop.clone();
        assert!(!seen_by_runner.is_requested());
        assert!(!seen_by_runner.token().is_cancelled());
        stop.request();
        assert!(seen_by_runner.is_requested());
        assert!(seen_by_runner.token().is_cancelled());
    }
}
