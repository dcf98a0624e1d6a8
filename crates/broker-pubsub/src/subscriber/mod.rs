//! Subscriptions: the client's streaming pull, with lease extension, flow control and
//! reconnection, feeding a [`SubscriptionStream`].
//!
//! A task per streaming pull ([`pull_task`]) takes messages from the client's message stream
//! and offers each to the consumer's [`Sink`], which holds at most `max_in_flight` unsettled
//! deliveries (a delivery keeps a permit until it is acknowledged, rejected or dropped). The service is asked
//! for no more than that (`max_outstanding_messages`; the emulator ignores it) and the client
//! extends the leases of the messages it holds.
//!
//! When the streaming pull fails for good — the subscription vanished because the emulator
//! restarted, or the service refused the stream — the task re-creates the subscription (with
//! auto-provisioning) and opens a new streaming pull, with backoff, logging why.
//!
//! # The emulator and cancelled streaming pulls
//!
//! The Pub/Sub emulator (0.8.x) never notices that a client cancelled a streaming pull: it keeps
//! the stream registered and goes on routing messages to it — unkeyed messages until their
//! acknowledgement deadline passes, messages whose ordering key hashes to that stream for good.
//! So against the emulator (an `endpoint` with anonymous credentials) a closed subscription
//! does not cancel its streaming pull: the pull stays open, on a connection of its own. While
//! another subscription of the same group on this backend is open, the pull hands what it
//! receives to that one; otherwise it waits, idle, and the next subscription of the group
//! takes it over, with the messages it already received. Idle pulls are cancelled when the
//! backend closes. Against
//! Google Cloud a closed subscription cancels its streaming pull, and the client rejects the
//! messages it held so the service delivers them again at once.

mod pull_task;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_api::Result;
use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::Subscriber;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::error::{builder_error, closed};
use crate::stream::{Sink, SubscriptionStream};

/// Lease and flow-control settings of every subscription of a backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseSettings {
    pub(crate) max_outstanding_bytes: i64,
    pub(crate) ack_deadline: Duration,
    pub(crate) max_lease: Duration,
}

/// How to build a client of its own for each streaming pull on the emulator.
pub(crate) struct EmulatorClients {
    pub(crate) endpoint: String,
    pub(crate) credentials: Credentials,
}

/// The subscriptions of one backend.
pub(crate) struct Subscriptions {
    shared: Subscriber,
    emulator: Option<EmulatorClients>,
    admin: Arc<Admin>,
    lease: LeaseSettings,
    /// Cancelled when the backend closes.
    shutdown: CancellationToken,
    /// On the emulator: every pull task by subscription path, so an idle one can be reused.
    pulls: Mutex<Registry>,
    tasks: TaskTracker,
}

#[derive(Default)]
struct Registry {
    closed: bool,
    pulls: HashMap<String, Vec<Arc<Pull>>>,
    /// The subscriptions this backend opened streaming pulls of.
    pulled: HashSet<String>,
}

/// One streaming pull's link to the consumer it currently feeds.
struct Pull {
    sink: Mutex<Option<Arc<Sink>>>,
    /// Notified when a consumer attaches to this pull, or (on the emulator) opens on another
    /// pull of the same subscription.
    attached: Notify,
}

impl Pull {
    fn new(sink: Arc<Sink>) -> Arc<Pull> {
        Arc::new(Pull {
            sink: Mutex::new(Some(sink)),
            attached: Notify::new(),
        })
    }

    /// The consumer this pull feeds, while it takes deliveries.
    fn open_sink(&self) -> Option<Arc<Sink>> {
        self.sink
            .lock()
            .ok()
            .and_then(|sink| sink.as_ref().filter(|s| s.is_open()).cloned())
    }

    /// Feeds `sink` from now on, if this pull has no open consumer.
    fn try_attach(&self, sink: &Arc<Sink>) -> bool {
        let Ok(mut slot) = self.sink.lock() else {
            return false;
        };
        if slot.as_ref().is_some_and(|s| s.is_open()) {
            return false;
        }
        *slot = Some(Arc::clone(sink));
        drop(slot);
        self.attached.notify_one();
        true
    }
}

/// What one pull task needs to know about its subscription.
struct Target {
    topic: Arc<str>,
    subscription: String,
    path: String,
    max_in_flight: usize,
}

impl Subscriptions {
    pub(crate) fn new(
        shared: Subscriber,
        emulator: Option<EmulatorClients>,
        admin: Arc<Admin>,
        lease: LeaseSettings,
    ) -> Self {
        Subscriptions {
            shared,
            emulator,
            admin,
            lease,
            shutdown: CancellationToken::new(),
            pulls: Mutex::new(Registry::default()),
            tasks: TaskTracker::new(),
        }
    }

    /// Starts delivering `subscription` (of `topic`) to a new stream.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        subscription: String,
        max_in_flight: usize,
    ) -> Result<SubscriptionStream> {
        let target = Target {
            topic: Arc::from(topic),
            path: self.admin.subscription_path(&subscription),
            subscription,
            max_in_flight,
        };
        let (sink, stream) = Sink::new(
            Arc::clone(&target.topic),
            max_in_flight,
            self.shutdown.child_token(),
        );
        let Some(emulator) = &self.emulator else {
            let pull = Pull::new(sink);
            let client = self.shared.clone();
            let task = self
                .tasks
                .spawn(Arc::clone(self).run(pull, client, target, false));
            return Ok(stream.owning(task));
        };
        if self.reuse_idle_pull(&target.path, &sink)? {
            return Ok(stream);
        }
        // Pulls abandoned by earlier processes would keep taking this group's messages.
        if self.first_pull_of(&target.subscription)? && !self.admin.created(&target.subscription) {
            if let Err(e) = self
                .admin
                .reclaim_streaming_pulls(&target.subscription)
                .await
            {
                tracing::warn!(subscription = %target.subscription, error = %e, "could not reclaim the emulator's abandoned streaming pulls; some messages may be delayed");
            }
        }
        let client = Subscriber::builder()
            .with_endpoint(&emulator.endpoint)
            .with_credentials(emulator.credentials.clone())
            .build()
            .await
            .map_err(|e| builder_error(e, &emulator.endpoint))?;
        let pull = Pull::new(sink);
        {
            let mut registry = self.pulls.lock().map_err(|_| closed("subscribe"))?;
            if registry.closed {
                return Err(closed("subscribe"));
            }
            let pulls = registry.pulls.entry(target.path.clone()).or_default();
            pulls.push(Arc::clone(&pull));
            wake_idle(pulls);
        }
        self.tasks
            .spawn(Arc::clone(self).run(pull, client, target, true));
        Ok(stream)
    }

    /// Attaches `sink` to an idle pull of the subscription, if there is one.
    fn reuse_idle_pull(&self, path: &str, sink: &Arc<Sink>) -> Result<bool> {
        let registry = self.pulls.lock().map_err(|_| closed("subscribe"))?;
        if registry.closed {
            return Err(closed("subscribe"));
        }
        let Some(pulls) = registry.pulls.get(path) else {
            return Ok(false);
        };
        let attached = pulls.iter().any(|pull| pull.try_attach(sink));
        if attached {
            wake_idle(pulls);
        }
        Ok(attached)
    }

    /// The consumer `pull` feeds: its own while open; on the emulator, without one, that of
    /// another pull of the same subscription (see the module docs).
    fn sink_for(&self, pull: &Pull, target: &Target, keep_idle: bool) -> Option<Arc<Sink>> {
        pull.open_sink().or_else(|| {
            if !keep_idle {
                return None;
            }
            let registry = self.pulls.lock().ok()?;
            registry
                .pulls
                .get(&target.path)?
                .iter()
                .find_map(|other| other.open_sink())
        })
    }

    /// Whether this backend opens its first streaming pull of the subscription.
    fn first_pull_of(&self, subscription: &str) -> Result<bool> {
        let mut registry = self.pulls.lock().map_err(|_| closed("subscribe"))?;
        Ok(registry.pulled.insert(subscription.to_owned()))
    }

    /// Stops every subscription and waits (up to `timeout`) until their streaming pulls are
    /// cancelled and their last acknowledgements sent. On the emulator, the pulls it keeps
    /// after their cancellation are then reclaimed, so they take no messages from the next
    /// subscriber of their groups.
    pub(crate) async fn close(&self, timeout: Duration) {
        let pulled = match self.pulls.lock() {
            Ok(mut registry) => {
                registry.closed = true;
                std::mem::take(&mut registry.pulled)
            }
            Err(_) => HashSet::new(),
        };
        self.shutdown.cancel();
        self.tasks.close();
        let stopped = async {
            self.tasks.wait().await;
            if self.emulator.is_some() {
                let reclaims = pulled.iter().map(|subscription| async move {
                    if let Err(e) = self.admin.reclaim_streaming_pulls(subscription).await {
                        tracing::debug!(%subscription, error = %e, "could not reclaim the streaming pulls of a closed subscription");
                    }
                });
                futures::future::join_all(reclaims).await;
            }
        };
        if tokio::time::timeout(timeout, stopped).await.is_err() {
            tracing::warn!(?timeout, "subscriptions did not stop in time");
        }
    }
}

/// Wakes the idle pulls among `pulls` (a subscription's): a consumer opened that they may feed.
fn wake_idle(pulls: &[Arc<Pull>]) {
    for pull in pulls {
        pull.attached.notify_one();
    }
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("emulator", &self.emulator.is_some())
            .finish_non_exhaustive()
    }
}
