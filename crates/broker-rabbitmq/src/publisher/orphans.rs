//! [`Orphans`]: returned messages waiting for the publish they belong to.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most returned messages kept for the publish they belong to.
const MAX_ORPHANS: usize = 1024;

/// How long after a returned message a route counts as one that returns messages.
const RECENT: Duration = Duration::from_secs(10);

/// Returned messages lapin handed to another publish's confirm.
///
/// When RabbitMQ confirms several publishes with one `multiple` ack, lapin gives a returned
/// message to whichever of them it completes first. The publish that received someone else's
/// returned message keeps the owner's id here, and the owner, confirmed without one, finds it.
pub(super) struct Orphans {
    count: AtomicUsize,
    ids: Mutex<VecDeque<String>>,
    /// When a returned message was last seen, in milliseconds after `origin` plus one; 0 for
    /// never.
    last_return: AtomicU64,
    origin: Instant,
}

impl Default for Orphans {
    fn default() -> Self {
        Orphans {
            count: AtomicUsize::new(0),
            ids: Mutex::default(),
            last_return: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Orphans {
    /// Notes that RabbitMQ returned a message on the route.
    pub(super) fn saw_return(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_return
            .store(now.saturating_add(1), Ordering::Release);
    }

    /// Whether RabbitMQ returned a message on the route in the last [`RECENT`] (a clock read
    /// only on routes that ever had one).
    pub(super) fn returned_recently(&self) -> bool {
        let last = self.last_return.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_add(1).saturating_sub(last) < RECENT.as_millis() as u64
    }

    pub(super) fn keep(&self, id: &str) {
        self.saw_return();
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() == MAX_ORPHANS {
            ids.pop_front();
        }
        ids.push_back(id.to_owned());
        self.count.store(ids.len(), Ordering::Release);
    }

    /// Whether a returned message for `id` was kept (and takes it).
    pub(super) fn claim(&self, id: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let Some(index) = ids.iter().position(|kept| kept == id) else {
            return false;
        };
        ids.remove(index);
        self.count.store(ids.len(), Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_returns_are_claimed_once() {
        let orphans = Orphans::default();
        assert!(!orphans.claim("a"));
        orphans.keep("a");
        orphans.keep("b");
        assert!(orphans.claim("a"));
        assert!(!orphans.claim("a"));
        assert!(orphans.claim("b"));
        for i in 0..MAX_ORPHANS + 10 {
            orphans.keep(&i.to_string());
        }
        assert!(!orphans.claim("0"), "the oldest are dropped");
        assert!(orphans.claim(&(MAX_ORPHANS + 9).to_string()));
    }

    #[test]
    fn a_route_that_returned_a_message_counts_as_returning() {
        let orphans = Orphans::default();
        assert!(!orphans.returned_recently());
        orphans.saw_return();
        assert!(orphans.returned_recently());
    }
}
