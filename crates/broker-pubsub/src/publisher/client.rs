//! [`TopicClient`]: the client publisher of one topic, replaced once it served many ordering
//! keys.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use google_cloud_pubsub::client::Publisher;
use rustc_hash::FxHashSet;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Most distinct ordering keys a client publisher serves before it is replaced.
///
/// The client keeps a task, with its queue and batch, for every ordering key it ever published
/// with, for as long as it lives (google-cloud-pubsub 1.7): a service keying its messages by
/// order or user id would grow without bound. A replaced client is flushed, then dropped with
/// its tasks.
pub(super) const MAX_KEYS_PER_CLIENT: usize = 1_000;

/// The client publisher messages of one topic go to, replaced by a new one once it served
/// [`MAX_KEYS_PER_CLIENT`] ordering keys and is asked for another.
pub(super) struct TopicClient {
    build: Box<dyn Fn() -> Publisher + Send + Sync>,
    current: RwLock<Current>,
}

struct Current {
    client: Arc<Publisher>,
    /// The ordering keys `client` served.
    keys: FxHashSet<Box<str>>,
    /// The client `client` replaced, finishing what it holds until this turns `true`: messages
    /// with a key wait for it, so that none overtakes an earlier one with the same key.
    replaced: Option<watch::Receiver<bool>>,
}

/// Where a message goes.
pub(super) enum Route {
    /// To this client, now.
    Now(Arc<Publisher>),
    /// Wait until the replaced client finished (see [`TopicClient::route`]), then ask again.
    After(watch::Receiver<bool>),
}

impl TopicClient {
    /// A topic's client, made by `build` (again when it is replaced).
    pub(super) fn new(build: impl Fn() -> Publisher + Send + Sync + 'static) -> Self {
        let client = Arc::new(build());
        TopicClient {
            build: Box::new(build),
            current: RwLock::new(Current {
                client,
                keys: FxHashSet::default(),
                replaced: None,
            }),
        }
    }

    /// The client now, for a flush.
    pub(super) fn current(&self) -> Arc<Publisher> {
        self.read().client.clone()
    }

    /// Where a message with ordering key `key` goes. A message without one goes to the current
    /// client at once. A key the client did not serve yet, past [`MAX_KEYS_PER_CLIENT`],
    /// replaces the client: the replaced one is flushed on a task of `finishing` (closing
    /// waits for them) and dropped, and until it finished every message with a key waits.
    /// Without a runtime to flush on, the client serves on.
    pub(super) fn route(&self, key: Option<&str>, finishing: &TaskTracker) -> Route {
        let Some(key) = key.filter(|key| !key.is_empty()) else {
            return Route::Now(self.read().client.clone());
        };
        {
            let current = self.read();
            if let Some(waiting) = current.waiting() {
                return Route::After(waiting);
            }
            if current.keys.contains(key) {
                return Route::Now(current.client.clone());
            }
        }
        let mut current = self.write();
        if let Some(waiting) = current.waiting() {
            return Route::After(waiting);
        }
        current.replaced = None;
        if current.keys.len() >= MAX_KEYS_PER_CLIENT && !current.keys.contains(key) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let replaced = std::mem::replace(&mut current.client, Arc::new((self.build)()));
                current.keys.clear();
                let (finished, waiting) = watch::channel(false);
                finishing.spawn_on(
                    async move {
                        replaced.flush().await;
                        finished.send_replace(true);
                    },
                    &runtime,
                );
                current.replaced = Some(waiting.clone());
                return Route::After(waiting);
            }
        }
        if !current.keys.contains(key) {
            current.keys.insert(key.into());
        }
        Route::Now(current.client.clone())
    }

    fn read(&self) -> RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Current {
    /// The replaced client's progress while it has not finished.
    fn waiting(&self) -> Option<watch::Receiver<bool>> {
        self.replaced
            .as_ref()
            .filter(|replaced| !*replaced.borrow())
            .cloned()
    }
}

impl std::fmt::Debug for TopicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.read();
        f.debug_struct("TopicClient")
            .field("keys", &current.keys.len())
            .field("replacing", &current.waiting().is_some())
            .finish_non_exhaustive()
    }
}
