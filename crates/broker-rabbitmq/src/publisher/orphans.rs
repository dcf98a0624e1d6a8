//! [`Orphans`]: returned messages waiting for the publish they belong to.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The most returned messages kept for the publish they belong to.
const MAX_ORPHANS: usize = 1024;

/// Returned messages lapin handed to another publish's confirm.
///
/// When RabbitMQ confirms several publishes with one `multiple` ack, lapin gives a returned
/// message to whichever of them it completes first. The publish that received someone else's
/// returned message keeps the owner's id here, and the owner, confirmed without one, finds it.
#[derive(Default)]
pub(super) struct Orphans {
    count: AtomicUsize,
    ids: Mutex<VecDeque<String>>,
}

impl Orphans {
    /// Keeps the returned message of publish `id`.
    pub(super) fn keep(&self, id: &str) {
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
}
