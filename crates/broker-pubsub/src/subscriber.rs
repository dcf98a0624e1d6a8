//! Subscriptions: the client's streaming pull, with lease extension, flow control and
//! reconnection, feeding a [`SubscriptionStream`].
//!
//! A task per streaming pull takes messages from the client's message stream and offers each
//! to the consumer's [`Sink`], which holds at most `max_in_flight` unsettled deliveries (a
//! delivery keeps a permit until it is acknowledged, rejected or dropped). The service is asked
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_api::{ErrorKind, Result};
use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::error::{builder_error, classify, closed, is_not_found, rpc_error, status_code};
use crate::stream::{PullLife, Sink, SubscriptionStream};
use google_cloud_gax::error::rpc::Code;

/// How long stopping a streaming pull waits for the client to send the last
/// acknowledgements and rejections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Streaming pulls refused in a row with FAILED_PRECONDITION on the emulator after which the
/// subscription is taken as left in push delivery by a reclaim that never finished: with the
/// pauses between them (100, 200 ms) that is longer than a reclaim's window.
const RECLAIM_STUCK_AFTER: u32 = 3;

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

    fn open(&self, client: &Subscriber, target: &Target) -> (MessageStream, PullLife) {
        let stream = client
            .subscribe(&target.path)
            // At least 1, as the sink's limit: 0 would mean no limit to the service.
            .set_max_outstanding_messages(
                i64::try_from(target.max_in_flight.max(1)).unwrap_or(i64::MAX),
            )
            .set_max_outstanding_bytes(self.lease.max_outstanding_bytes)
            .set_max_lease_extension(self.lease.ack_deadline)
            .set_max_lease(self.lease.max_lease)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        (stream, PullLife::new())
    }

    /// The pull task: feeds the consumers of `pull` until the backend closes, the subscription
    /// fails for good, or — when `keep_idle` is false — its consumer stops.
    async fn run(
        self: Arc<Self>,
        pull: Arc<Pull>,
        client: Subscriber,
        target: Target,
        keep_idle: bool,
    ) {
        let (mut stream, mut life) = self.open(&client, &target);
        let mut failures = 0u32;
        let fatal = loop {
            let Some(sink) = self.sink_for(&pull, &target, keep_idle) else {
                if !keep_idle {
                    break None;
                }
                tokio::select! {
                    () = pull.attached.notified() => continue,
                    () = self.shutdown.cancelled() => break None,
                }
            };
            // Against the emulator a pending `next` is never dropped before the backend
            // closes: dropping it could cancel a stream being opened (see the module docs).
            let next = if keep_idle {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => break None,
                    next = stream.next() => next,
                }
            } else {
                tokio::select! {
                    biased;
                    () = sink.stopped() => break None,
                    next = stream.next() => next,
                }
            };
            drop(sink);
            match next {
                Some(Ok((mut message, mut handler))) => {
                    failures = 0;
                    // Offer it to the current consumer, or to the next one when it stops first.
                    loop {
                        let Some(sink) = self.sink_for(&pull, &target, keep_idle) else {
                            handler.nack();
                            break;
                        };
                        match sink.offer(message, handler, &life).await {
                            None => break,
                            Some(returned) => (message, handler) = returned,
                        }
                    }
                }
                Some(Err(err)) => {
                    // The client ended the pull: its messages are rejected, acks dropped.
                    life.end();
                    failures += 1;
                    if let Err(e) = self.recover(err, &target, failures).await {
                        break Some(e);
                    }
                    if self.pause(failures).await {
                        break None;
                    }
                    (stream, life) = self.open(&client, &target);
                }
                None => {
                    life.end();
                    if self.shutdown.is_cancelled() {
                        break None;
                    }
                    failures += 1;
                    tracing::warn!(subscription = %target.subscription, "streaming pull ended; reopening it");
                    if self.pause(failures).await {
                        break None;
                    }
                    (stream, life) = self.open(&client, &target);
                }
            }
        };
        if keep_idle {
            if let Ok(mut registry) = self.pulls.lock() {
                if let Some(pulls) = registry.pulls.get_mut(&target.path) {
                    pulls.retain(|p| !Arc::ptr_eq(p, &pull));
                }
            }
        }
        life.end();
        if let Some(error) = fatal {
            match pull.open_sink() {
                Some(sink) => sink.fail(error).await,
                None => tracing::warn!(subscription = %target.subscription, %error,
                    "the streaming pull failed for good with no subscription reading it"),
            }
        }
        shut_down(stream).await;
    }

    /// Waits before reopening a streaming pull; true when the backend closed meanwhile.
    async fn pause(&self, failures: u32) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => true,
            () = tokio::time::sleep(backoff(failures)) => false,
        }
    }

    /// Decides what a failed streaming pull means: re-create a lost subscription, reopen after
    /// a temporary failure, or give up with the error.
    async fn recover(
        &self,
        err: google_cloud_pubsub::Error,
        target: &Target,
        failures: u32,
    ) -> Result<()> {
        let subscription = &target.subscription;
        if is_not_found(&err) {
            if !self.admin.auto_provision() {
                return Err(rpc_error(
                    err,
                    "subscribe",
                    format!(
                        "subscription {subscription} does not exist any more and \
                         auto-provisioning is off"
                    ),
                ));
            }
            if !self.admin.knows(&target.topic, subscription) {
                return Err(rpc_error(
                    err,
                    "subscribe",
                    format!("subscription {subscription} was deleted with its topic"),
                ));
            }
            tracing::warn!(
                topic = %target.topic, %subscription, error = %err,
                "subscription not found (the service lost it?); re-creating it"
            );
            return match self
                .admin
                .recreate_subscription(&target.topic, subscription)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.is_temporary() || e.kind() == ErrorKind::NotFound => {
                    tracing::warn!(%subscription, error = %e, attempt = failures, "re-creating the subscription failed; retrying");
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        let (_, temporary) = classify(&err);
        // The emulator ends streaming pulls with FAILED_PRECONDITION while another backend
        // reclaims the subscription's abandoned pulls (see the module docs): reopen.
        let reclaimed =
            self.emulator.is_some() && status_code(&err) == Some(Code::FailedPrecondition);
        if reclaimed && failures >= RECLAIM_STUCK_AFTER {
            // Longer than any reclaim takes: one that never finished (its process died within
            // its window) left the subscription in push delivery, which refuses every pull.
            tracing::warn!(%subscription, "subscription still in push delivery; switching it back to pull delivery");
            if let Err(e) = self.admin.restore_pull_delivery(subscription).await {
                tracing::warn!(%subscription, error = %e, "could not switch the subscription back to pull delivery");
            }
        }
        if temporary || reclaimed {
            tracing::warn!(%subscription, error = %err, attempt = failures, "streaming pull failed; reopening it");
            Ok(())
        } else {
            Err(rpc_error(
                err,
                "subscribe",
                format!("streaming pull of subscription {subscription} failed"),
            ))
        }
    }
}

/// Wakes the idle pulls among `pulls` (a subscription's): a consumer opened that they may feed.
fn wake_idle(pulls: &[Arc<Pull>]) {
    for pull in pulls {
        pull.attached.notify_one();
    }
}

/// Stops a streaming pull: acknowledgements already given are sent, the messages it still
/// holds are rejected.
async fn shut_down(stream: MessageStream) {
    let token = stream.shutdown_token();
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, token.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the client did not finish its last acknowledgements in time");
    }
    drop(stream);
}

/// The pause before reopening a failed streaming pull: 100 ms doubling up to 3.2 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.clamp(1, 6).saturating_sub(1))
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("emulator", &self.emulator.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(60), Duration::from_millis(3200));
    }
}
