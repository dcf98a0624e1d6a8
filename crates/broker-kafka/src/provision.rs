//! Making sure a topic exists before it is first used, once per topic.
//!
//! With auto-provisioning on, the first send or subscribe to a topic creates it through the
//! admin API; with it off, the first use looks the topic up and fails at once with
//! [`NotFound`](broker_api::ErrorKind::NotFound) when it is missing (instead of librdkafka
//! waiting for it for `topic.metadata.propagation.max.ms`). Either way the answer is cached, so
//! the publish hot path pays one read lock and a hash lookup.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use broker_api::{Error, Result, TopicSpec};
use rustc_hash::FxHashMap;
use tokio::sync::OnceCell;

use crate::admin::{denied, Admin, TopicState};
use crate::error::{unknown_topic, BACKEND};

/// Topics known to exist, and the admin client that checks or creates the others.
pub(crate) struct Provisioner {
    admin: Arc<Admin>,
    auto_provision: bool,
    topics: RwLock<Topics>,
}

/// Each topic's provisioning. Looked up on every publish: hashed with FxHash, much cheaper
/// than SipHash on short names (they come from the application, not from untrusted input).
type Topics = FxHashMap<Box<str>, Arc<Provisioning>>;

/// One topic's provisioning: done once. A failure is not kept for later calls, but it answers
/// the calls that waited for that attempt: they do not each try again in turn, the last one
/// answered after as many timeouts as there were callers.
#[derive(Default)]
struct Provisioning {
    done: OnceCell<()>,
    last_failure: Mutex<Option<(Instant, Error)>>,
}

impl Provisioning {
    /// The last attempt's failure, if it ended after `since` (a call that waited for it).
    fn failure_since(&self, since: Instant) -> Option<Error> {
        let last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| copy_of(error))
    }

    /// Keeps a copy of `error` for the calls waiting for this attempt; returns it.
    fn failed(&self, error: Error) -> Error {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), copy_of(&error)));
        error
    }
}

/// `error` without its source (which cannot be cloned): its kind, text and operation, and
/// whether it is temporary.
fn copy_of(error: &Error) -> Error {
    Error::new(error.kind(), error.message().to_owned())
        .backend(BACKEND)
        .operation(error.operation_name().to_owned())
        .temporary(error.is_temporary())
}

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
            .is_some_and(|cell| cell.done.initialized())
    }

    fn cell(&self, topic: &str) -> Arc<Provisioning> {
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
        let called = Instant::now();
        let cell = self.cell(topic);
        cell.done
            .get_or_try_init(|| async {
                if let Some(failure) = cell.failure_since(called) {
                    return Err(failure);
                }
                self.provision(topic, operation)
                    .await
                    .map_err(|e| cell.failed(e))
            })
            .await
            .map(|&()| ())
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
        let _ = cell.done.set(());
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
}
