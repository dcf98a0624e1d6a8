//! Making sure a topic exists before it is first used, once per topic.
//!
//! With auto-provisioning on, the first send or subscribe to a topic creates it through the
//! admin API; with it off, the first use looks the topic up and fails at once with
//! [`NotFound`](broker_api::ErrorKind::NotFound) when it is missing (instead of librdkafka
//! waiting for it for `topic.metadata.propagation.max.ms`). Either way the answer is cached, so
//! the publish hot path pays one read lock and a hash lookup.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};

use broker_api::{OnceReady, Result, TopicSpec};
use rustc_hash::FxHashMap;

use crate::admin::{denied, Admin, TopicState};
use crate::error::unknown_topic;

/// Topics known to exist, and the admin client that checks or creates the others.
pub(crate) struct Provisioner {
    admin: Arc<Admin>,
    auto_provision: bool,
    topics: RwLock<Topics>,
}

/// Each topic's provisioning (a failed attempt answers the calls that waited for it). Looked
/// up on every publish: hashed with FxHash, much cheaper than SipHash on short names (they
/// come from the application, not from untrusted input).
type Topics = FxHashMap<Box<str>, Arc<OnceReady>>;

impl Provisioner {
    pub(crate) fn new(admin: Arc<Admin>, auto_provision: bool) -> Self {
        Provisioner {
            admin,
            auto_provision,
            topics: RwLock::new(FxHashMap::default()),
        }
    }

    /// The admin client.
    pub(crate) fn admin(&self) -> &Arc<Admin> {
        &self.admin
    }

    /// Whether `topic` is known to exist.
    pub(crate) fn is_ready(&self, topic: &str) -> bool {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .is_some_and(|cell| cell.is_ready())
    }

    fn cell(&self, topic: &str) -> Arc<OnceReady> {
        if let Some(cell) = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return cell.clone();
        }
        self.topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.into())
            .or_default()
            .clone()
    }

    /// Makes sure `topic` exists before `operation` uses it: creates it when auto-provisioning
    /// is on, fails with `NotFound` when it is off and the topic is missing. Done once per
    /// topic; a failure is not cached, but answers the calls that waited for that attempt.
    pub(crate) async fn prepare(&self, topic: &str, operation: &'static str) -> Result<()> {
        self.cell(topic)
            .get_or_try(|| self.provision(topic, operation))
            .await
    }

    async fn provision(&self, topic: &str, operation: &'static str) -> Result<()> {
        if self.auto_provision {
            self.admin.ensure_topic(topic, None).await
        } else {
            match self.admin.topic_state(topic).await? {
                TopicState::Missing => Err(unknown_topic(operation, topic)),
                TopicState::Denied => Err(denied(operation, topic)),
                TopicState::Ready(_) | TopicState::Pending => Ok(()),
            }
        }
    }

    /// Creates the topic of `spec` unless it exists (always asking the broker), and remembers
    /// it (unless it was forgotten meanwhile: deleted).
    pub(crate) async fn ensure(&self, spec: &TopicSpec) -> Result<()> {
        let cell = self.cell(&spec.name);
        self.admin.ensure_topic(&spec.name, spec.partitions).await?;
        cell.set_ready();
        Ok(())
    }

    /// Forgets what is known about `topic` (deleted, or reported unknown by the broker).
    /// Provisioning under way keeps its own cell, no longer the topic's: what it finds does
    /// not outlive this.
    pub(crate) fn forget(&self, topic: &str) {
        self.topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }

    /// Forgets `topic` in the provisioner `attached` to a producer, if it is still there: the
    /// broker reported the topic unknown (deleted behind this backend's back), so the next
    /// publish provisions it again, or with auto-provisioning off finds it missing.
    pub(crate) fn forget_unknown(attached: &OnceLock<Weak<Provisioner>>, topic: &str) {
        if let Some(topics) = attached.get().and_then(Weak::upgrade) {
            topics.forget(topic);
        }
    }
}
