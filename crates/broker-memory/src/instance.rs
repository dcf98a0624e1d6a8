//! An in-memory broker instance: the topics that connections to it share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustc_hash::FxHashMap;

use crate::topic::Topic;

/// A broker living in this process. Connections made with the same instance name share it.
#[derive(Debug, Default)]
pub struct MemoryInstance {
    name: String,
    /// Looked up on every publish: hashed with FxHash, much cheaper than SipHash on short
    /// names (the names come from the application, not from untrusted input).
    topics: RwLock<FxHashMap<String, Arc<Topic>>>,
}

impl MemoryInstance {
    /// A new, unnamed instance.
    pub fn new() -> Self {
        MemoryInstance {
            name: "private".to_owned(),
            topics: RwLock::new(FxHashMap::default()),
        }
    }

    /// The process-wide instance called `name`, created on first use.
    pub fn named(name: &str) -> Arc<Self> {
        static INSTANCES: OnceLock<Mutex<HashMap<String, Arc<MemoryInstance>>>> = OnceLock::new();
        let mut instances = INSTANCES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        instances
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(MemoryInstance {
                    name: name.to_owned(),
                    topics: RwLock::new(FxHashMap::default()),
                })
            })
            .clone()
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic called `name`; created when missing if `create` is `Some`, keeping that many
    /// messages at least for groups that join later.
    pub(crate) fn topic(&self, name: &str, create: Option<usize>) -> Option<Arc<Topic>> {
        {
            let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
            if let Some(topic) = topics.get(name) {
                return Some(topic.clone());
            }
        }
        let retained = create?;
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let topic = topics
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Topic::new(name, retained)));
        Some(topic.clone())
    }

    /// The names of all topics, sorted.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = topics.keys().cloned().collect();
        names.sort();
        names
    }

    /// Deletes a topic; returns whether it existed. Its readers stop.
    pub(crate) fn delete(&self, name: &str) -> bool {
        let removed = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match removed {
            Some(topic) => {
                topic.delete();
                true
            }
            None => false,
        }
    }
}
