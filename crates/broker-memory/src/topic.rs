//! A topic: an append-only log of records that every group reads at its own pace, and the
//! inbox publishers append to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use broker_api::{Message, StartFrom};
use tokio::sync::Notify;

use crate::group::Group;
use crate::inbox::Inbox;
use crate::log::Log;

/// A topic and its groups.
///
/// Publishers append to an inbox, not to the log: readers build their deliveries under the
/// log's lock, and a publisher waiting for it would wait for a whole batch of them. Readers
/// move the inbox into the log before they read (and a publisher when the inbox is full).
///
/// Locks are taken in this order: the log, the inbox, the groups, a group's deferred
/// acknowledgements, its state.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    log: RwLock<Log>,
    inbox: Inbox,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Woken when records are appended, when a group makes a message eligible again, and when
    /// readers must stop (close, delete).
    changed: Notify,
    /// Readers about to wait on `changed`; appends skip the wake-up when there are none.
    readers_waiting: AtomicUsize,
    deleted: AtomicBool,
}

/// Counts a reader as waiting while it lives.
pub(crate) struct WaitingReader<'a>(&'a AtomicUsize);

impl Drop for WaitingReader<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Topic {
    /// A topic that keeps at least the last `retained` messages for groups that join later.
    pub(crate) fn new(name: &str, retained: usize) -> Self {
        Topic {
            name: name.into(),
            log: RwLock::new(Log::new(retained)),
            inbox: Inbox::default(),
            groups: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            readers_waiting: AtomicUsize::new(0),
            deleted: AtomicBool::new(false),
        }
    }

    /// Marks the topic deleted and wakes its readers, which then stop.
    pub(crate) fn delete(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// A future that completes at the next change; enable it before checking for work.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Marks the caller as waiting for a change until the guard drops. Check for work again
    /// after taking it: a change made before it may not have woken anyone.
    pub(crate) fn wait_for_change(&self) -> WaitingReader<'_> {
        self.readers_waiting.fetch_add(1, Ordering::SeqCst);
        WaitingReader(&self.readers_waiting)
    }

    /// Wakes the readers waiting for a change, if any.
    pub(crate) fn wake(&self) {
        if self.readers_waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Wakes every reader, waiting or about to (close and delete).
    pub(crate) fn wake_all(&self) {
        self.changed.notify_waiters();
    }

    /// Whether the topic was deleted.
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Publishes a message and returns its offset: readers see it from their next read.
    /// `None` when the topic was deleted before the message was in it (a publisher that looked
    /// the topic up before the delete): nobody reads it any more, and a topic created again
    /// under its name does not have it.
    pub(crate) fn append(&self, message: Message) -> Option<u64> {
        let (offset, full) = self.inbox.push(message);
        if full {
            self.drain_inbox(&mut self.log.write().unwrap_or_else(|e| e.into_inner()));
        }
        self.wake();
        (!self.is_deleted()).then_some(offset)
    }

    /// Moves the inbox into the log, in order; first drops old segments when retention allows
    /// (see [`Log`]).
    fn drain_inbox(&self, log: &mut Log) {
        let mut arrived = self.inbox.take();
        log.append_all(&mut arrived, || self.read_by_all());
        self.inbox.give_back(arrived);
    }

    /// The lowest next offset among the groups: every group has read every earlier record.
    fn read_by_all(&self) -> u64 {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.values().map(|g| g.next()).min().unwrap_or(u64::MAX)
    }

    /// Runs `read` over the log, with every message published so far in it.
    pub(crate) fn with_log<R>(&self, read: impl FnOnce(&Log) -> R) -> R {
        let log = self.log.read().unwrap_or_else(|e| e.into_inner());
        if log.end() == self.inbox.published() {
            return read(&log);
        }
        drop(log);
        self.drain_inbox(&mut self.log.write().unwrap_or_else(|e| e.into_inner()));
        read(&self.log.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The group named `name`, created if new, starting at the beginning or at the end.
    pub(crate) fn group(&self, name: &str, start_from: StartFrom) -> Arc<Group> {
        // Read before the groups are locked: the log comes first in the lock order.
        let start = self.with_log(|log| match start_from {
            StartFrom::Earliest => log.first(),
            StartFrom::Latest => log.end(),
        });
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get(name) {
            return group.clone();
        }
        let group = Arc::new(Group::new(start));
        groups.insert(name.to_owned(), group.clone());
        group
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_publication_and_readers_see_every_published_message() {
        let topic = Topic::new("t", usize::MAX);
        for i in 0..10u64 {
            assert_eq!(topic.append(Message::new(i.to_string())), Some(i));
        }
        topic.with_log(|log| {
            assert_eq!(log.end(), 10);
            assert_eq!(log.get(9).expect("published").0.payload, "9");
        });
        assert_eq!(topic.append(Message::new("10")), Some(10));
    }

    #[test]
    fn a_message_appended_to_a_deleted_topic_is_not_confirmed() {
        // A publisher that looked the topic up before another deleted it.
        let topic = Topic::new("t", usize::MAX);
        assert_eq!(topic.append(Message::new("before")), Some(0));
        topic.delete();
        assert_eq!(topic.append(Message::new("after")), None);
    }

    #[test]
    fn a_topic_nobody_reads_keeps_to_its_retention() {
        let retained = 10;
        let topic = Topic::new("t", retained);
        let published = 5 * 4096 + 7;
        for i in 0..published {
            topic.append(Message::new(i.to_string()));
        }
        assert!(
            topic.inbox.len() < crate::inbox::CAPACITY,
            "the publisher moved its inbox"
        );
        let log = topic.log.read().expect("log");
        assert!(log.first() > 0, "old segments were dropped");
        assert!(log.end() - log.first() >= retained as u64);
        assert!(log.end() - log.first() <= 2 * 4096 + crate::inbox::CAPACITY as u64);
    }
}
