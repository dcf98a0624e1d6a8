//! A topic: an append-only log of records that every group reads at its own pace.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use broker_api::{Headers, Message, MessageId, StartFrom};
use bytes::Bytes;
use tokio::sync::Notify;

use crate::group::Group;

/// One published message, shared by every group that reads it.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) offset: u64,
    pub(crate) payload: Bytes,
    pub(crate) key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) id: MessageId,
    pub(crate) content_type: Option<Cow<'static, str>>,
    pub(crate) timestamp: SystemTime,
}

/// A topic and its groups.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    records: RwLock<Vec<Arc<Record>>>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Woken when records are appended, when a group makes a message eligible again, and when
    /// readers must stop (close, delete).
    pub(crate) changed: Notify,
    deleted: AtomicBool,
}

impl Topic {
    pub(crate) fn new(name: &str) -> Self {
        Topic {
            name: name.into(),
            records: RwLock::new(Vec::new()),
            groups: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
        }
    }

    /// Marks the topic deleted and wakes its readers, which then stop.
    pub(crate) fn delete(&self) {
        self.deleted.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Whether the topic was deleted.
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Appends a message and returns its offset.
    pub(crate) fn append(&self, message: Message) -> u64 {
        let offset = {
            let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
            let offset = records.len() as u64;
            records.push(Arc::new(Record {
                offset,
                payload: message.payload,
                key: message.key,
                headers: message.headers,
                id: message.id,
                content_type: message.content_type,
                timestamp: message.timestamp,
            }));
            offset
        };
        self.changed.notify_waiters();
        offset
    }

    /// Runs `read` over the records.
    pub(crate) fn with_records<R>(&self, read: impl FnOnce(&[Arc<Record>]) -> R) -> R {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        read(&records)
    }

    /// The number of records.
    pub(crate) fn len(&self) -> u64 {
        self.with_records(|records| records.len() as u64)
    }

    /// The group named `name`, created if new, starting at the beginning or at the end.
    pub(crate) fn group(&self, name: &str, start_from: StartFrom) -> Arc<Group> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get(name) {
            return group.clone();
        }
        let start = match start_from {
            StartFrom::Earliest => 0,
            StartFrom::Latest => self.len(),
        };
        let group = Arc::new(Group::new(start));
        groups.insert(name.to_owned(), group.clone());
        group
    }
}
