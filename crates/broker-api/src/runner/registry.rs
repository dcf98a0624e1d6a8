//! [`Registry`]: the `at_least_once` subscriptions a broker handle started, so that closing the
//! broker closes them as [`Running::close`](super::Running::close) does before the backend
//! goes away.

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::stop::Stop;

/// The running subscriptions of one broker handle and its clones.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    running: Vec<Entry>,
    /// Set by the first close: a subscription registered later (it was opening while the
    /// broker closed) is stopped at once.
    closed: bool,
}

/// One subscription: how to stop it, and the signal that its task ended.
#[derive(Debug, Clone)]
struct Entry {
    stop: Stop,
    ended: CancellationToken,
}

/// Signals that a subscription's task ended when dropped: at its end, or when it panicked.
#[derive(Debug)]
pub(crate) struct Ended(CancellationToken);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Registry {
    /// Registers a subscription stopped by `stop`; its task holds the returned guard. After
    /// the broker was closed, the subscription is stopped at once.
    pub(crate) fn register(&self, stop: Stop) -> Ended {
        let ended = CancellationToken::new();
        let mut state = self.state();
        if state.closed {
            stop.request();
        }
        state.running.retain(|entry| !entry.ended.is_cancelled());
        state.running.push(Entry {
            stop,
            ended: ended.clone(),
        });
        Ended(ended)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every registered subscription and waits until their tasks ended: intake stops,
    /// running handlers finish within each subscription's shutdown timeout and what they
    /// handled is acknowledged.
    pub(crate) async fn close_all(&self) {
        // Kept registered: a later close (this one cancelled, or a second caller) waits for
        // them too.
        let entries = {
            let mut state = self.state();
            state.closed = true;
            state.running.retain(|entry| !entry.ended.is_cancelled());
            state.running.clone()
        };
        for entry in &entries {
            entry.stop.request();
        }
        join_all(entries.iter().map(|entry| entry.ended.cancelled())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn closing_stops_every_subscription_and_waits_for_their_end() {
        let registry = Registry::default();
        let (first, second) = (Stop::default(), Stop::default());
        let first_ended = registry.register(first.clone());
        let second_ended = registry.register(second.clone());
        let mut closing = Box::pin(registry.close_all());
        assert!((&mut closing).now_or_never().is_none());
        assert!(first.is_requested() && second.is_requested());
        drop(first_ended);
        assert!(
            (&mut closing).now_or_never().is_none(),
            "one is still running"
        );
        drop(second_ended);
        assert!(closing.now_or_never().is_some());
    }

    #[test]
    fn ended_subscriptions_are_forgotten() {
        let registry = Registry::default();
        drop(registry.register(Stop::default()));
        let _running = registry.register(Stop::default());
        assert_eq!(registry.state().running.len(), 1);
    }

    #[test]
    fn a_close_after_a_cancelled_one_still_waits_for_the_subscriptions() {
        let registry = Registry::default();
        let ended = registry.register(Stop::default());
        assert!(registry.close_all().now_or_never().is_none(), "cancelled");
        let mut again = Box::pin(registry.close_all());
        assert!(
            (&mut again).now_or_never().is_none(),
            "the subscription is still running"
        );
        drop(ended);
        assert!(again.now_or_never().is_some());
    }

    #[test]
    fn a_subscription_registered_after_closing_is_stopped_at_once() {
        let registry = Registry::default();
        assert!(registry.close_all().now_or_never().is_some());
        let late = Stop::default();
        let _running = registry.register(late.clone());
        assert!(late.is_requested());
    }
}
