//! [`OnceReady`]: what an adapter makes ready once for every caller, a topic provisioned
//! before its first use, say.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::{Error, Result};

/// Made ready once, by the first attempt that succeeds; callers meanwhile wait for it.
///
/// A failure is not kept for later calls, but it answers every call that waited for that
/// attempt (a [copy](Error::copy_without_source)): waiting callers do not each try again in
/// turn, the last one answered after as many timeouts as there were callers.
#[derive(Debug, Default)]
pub struct OnceReady {
    done: OnceCell<()>,
    /// When the last attempt failed, and how.
    last_failure: Mutex<Option<(Instant, Error)>>,
}

impl OnceReady {
    /// Whether an attempt succeeded (or [`OnceReady::set_ready`] was called).
    pub fn is_ready(&self) -> bool {
        self.done.initialized()
    }

    /// Marks it ready without an attempt (made ready some other way).
    pub fn set_ready(&self) {
        let _ = self.done.set(());
    }

    /// Ready at once when it is; otherwise waits for the attempt under way, or runs
    /// `attempt` when none is. Fails with the failure of an attempt that ended while this
    /// call waited.
    pub async fn get_or_try<F, Fut>(&self, attempt: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let called = Instant::now();
        self.done
            .get_or_try_init(|| async {
                if let Some(failure) = self.failure_since(called) {
                    return Err(failure);
                }
                attempt().await.map_err(|error| self.failed(error))
            })
            .await
            .map(|&()| ())
    }

    /// The last attempt's failure, if it ended after `since`.
    fn failure_since(&self, since: Instant) -> Option<Error> {
        let last = self.last_failure();
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| error.copy_without_source())
    }

    /// Keeps a copy of `error` for the calls waiting for this attempt; returns it.
    fn failed(&self, error: Error) -> Error {
        *self.last_failure() = Some((Instant::now(), error.copy_without_source()));
        error
    }

    fn last_failure(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Error)>> {
        self.last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Callers waiting for an attempt that fails get its failure without trying again; a call
    /// made afterwards tries again, and once one succeeds no attempt runs any more.
    #[tokio::test]
    async fn a_failed_attempt_answers_its_waiting_callers_only() {
        let ready = OnceReady::default();
        let attempts = AtomicUsize::new(0);
        let failing = || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Err(Error::new(ErrorKind::Timeout, "no answer").backend("test"))
        };
        let answers = futures::future::join_all((0..4).map(|_| ready.get_or_try(failing))).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        for answer in answers {
            let error = answer.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Timeout);
            assert_eq!(error.to_string(), "test (timeout): no answer");
        }
        ready
            .get_or_try(|| async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(ready.is_ready());
        ready.get_or_try(failing).await.unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
