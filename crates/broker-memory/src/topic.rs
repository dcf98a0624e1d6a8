//! A topic: an append-only log of records that every group reads at its own pace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use broker_api::{Message, StartFrom};
use tokio::sync::Notify;

use crate::group::Group;
use crate::log::Log;

/// A topic and its groups.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    log: RwLock<Log>,
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

    /// Appends a message and returns its offset; first drops old segments when retention
    /// allows (see [`Log`]).
    pub(crate) fn append(&self, message: Message) -> u64 {
        let mut log = self.log.write().unwrap_or_else(|e| e.into_inner());
        if log.may_trim() {
            // The groups' positions are read without the log lock (a group locks the log
            // before itself); they only grow, so a position read early is a safe bound.
            drop(log);
            let read_by_all = self.read_by_all();
            log = self.log.write().unwrap_or_else(|e| e.into_inner());
            log.trim(read_by_all);
        }
        let offset = log.append(message);
        drop(log);
        self.wake();
        offset
    }

    /// The lowest next offset among the groups: every group has read every earlier record.
    fn read_by_all(&self) -> u64 {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.values().map(|g| g.next()).min().unwrap_or(u64::MAX)
    }

    /// Runs `read` over the log.
    pub(crate) fn with_log<R>(&self, read: impl FnOnce(&Log) -> R) -> R {
        let log = self.log.read().unwrap_or_else(|e| e.into_inner());
        read(&log)
    }

    /// The group named `name`, created if new, starting at the beginning or at the end.
    pub(crate) fn group(&self, name: &str, start_from: StartFrom) -> Arc<Group> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get(name) {
            return group.clone();
        }
        let start = self.with_log(|log| match start_from {
            StartFrom::Earliest => log.first(),
            StartFrom::Latest => log.end(),
        });
        let group = Arc::new(Group::new(start));
        groups.insert(name.to_owned(), group.clone());
        group
    }
}
