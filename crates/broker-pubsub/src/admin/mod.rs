//! Topics and subscriptions: creating them on first use, re-creating them after the service
//! lost them (an emulator restart), listing and deleting them. The requests are in [`topics`]
//! and [`subscriptions`]; [`answers`] says what the service's refusals mean, [`reclaim`] ends
//! the emulator's abandoned streaming pulls.
//!
//! Credentials with least-privilege roles (`roles/pubsub.publisher` or `.subscriber`) may
//! publish or pull but not list, look up or create topics and subscriptions: a request refused
//! with `PERMISSION_DENIED` while connecting or provisioning is taken to mean that the resource
//! is managed elsewhere, and the backend goes on. If it does not exist after all, publishing
//! and pulling fail with an error saying so and that these credentials may not create it.

mod answers;
mod reclaim;
mod subscriptions;
mod topics;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use broker_api::{ErrorKind, Result};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::retry_policy::RetryableErrors;

use self::answers::{bound_elsewhere, probe_outcome};

/// The administrative clients of one backend and what it knows about its resources.
#[derive(Debug)]
pub(crate) struct Admin {
    /// `projects/<project>`.
    project_path: String,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    auto_provision: bool,
    /// The subscriptions this backend created or opened, by topic: re-created with the topic
    /// when the service lost them.
    known: Mutex<HashMap<String, BTreeSet<String>>>,
    /// The subscriptions this backend created (rather than found).
    created: Mutex<HashSet<String>>,
}

impl Admin {
    pub(crate) fn new(
        project: &str,
        topics: TopicAdmin,
        subscriptions: SubscriptionAdmin,
        auto_provision: bool,
    ) -> Self {
        Admin {
            project_path: format!("projects/{project}"),
            topics,
            subscriptions,
            auto_provision,
            known: Mutex::new(HashMap::new()),
            created: Mutex::new(HashSet::new()),
        }
    }

    /// Whether missing topics and subscriptions are created.
    pub(crate) fn auto_provision(&self) -> bool {
        self.auto_provision
    }

    /// `projects/<p>/topics/<topic>`.
    pub(crate) fn topic_path(&self, topic: &str) -> String {
        format!("{}/topics/{topic}", self.project_path)
    }

    /// `projects/<p>/subscriptions/<subscription>`.
    pub(crate) fn subscription_path(&self, subscription: &str) -> String {
        format!("{}/subscriptions/{subscription}", self.project_path)
    }

    /// Answers within `timeout` or fails: the connection check of `connect`.
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<()> {
        let request = self
            .topics
            .list_topics()
            .set_project(&self.project_path)
            .set_page_size(1)
            .with_attempt_timeout(timeout)
            .with_retry_policy(RetryableErrors.with_time_limit(timeout))
            .send();
        let answer = tokio::time::timeout(timeout, request).await.ok();
        probe_outcome(answer, &self.project_path, timeout)
    }

    /// Makes sure `topic` exists: creates it when auto-provisioning is on, checks it otherwise
    /// (a missing topic is then a [`ErrorKind::NotFound`] error).
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self.auto_provision {
            self.create_topic(topic, false).await
        } else {
            self.check_topic(topic).await
        }
    }

    /// Makes sure the subscription exists on `topic` (and `topic` too), and remembers it so it
    /// is re-created should the service lose it.
    pub(crate) async fn ensure_subscription(&self, topic: &str, subscription: &str) -> Result<()> {
        self.ensure_topic(topic).await?;
        let found = if self.auto_provision {
            self.create_subscription(topic, subscription).await?;
            None
        } else {
            self.check_subscription(subscription).await?
        };
        if let Some(bound) = self
            .known_topic_of(subscription)
            .filter(|bound| bound != topic)
        {
            return Err(bound_elsewhere(subscription, topic, &bound));
        }
        if !self.created(subscription) {
            self.check_found(topic, subscription, found).await?;
        }
        self.remember(topic, subscription);
        Ok(())
    }

    /// The topic this backend opened `subscription` on, if it did.
    fn known_topic_of(&self, subscription: &str) -> Option<String> {
        let known = self.known.lock().ok()?;
        known
            .iter()
            .find(|(_, subscriptions)| subscriptions.contains(subscription))
            .map(|(topic, _)| topic.clone())
    }

    /// Re-creates `topic` and every subscription this backend knows on it, after the service
    /// answered that they do not exist (the emulator keeps nothing across restarts).
    pub(crate) async fn recreate(&self, topic: &str) -> Result<()> {
        self.create_topic(topic, true).await?;
        self.repair_known(topic, None).await
    }

    /// Re-creates one subscription (and its topic) that the service lost, then every other
    /// subscription this backend knows on the topic: they were lost with it, and once the topic
    /// exists again publishing succeeds, so nothing else would bring them back before their own
    /// streaming pulls retry (the client backs off up to a minute), and every message published
    /// meanwhile would be confirmed to no subscription. When the topic vanishes again in
    /// between, it is created once more.
    pub(crate) async fn recreate_subscription(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<()> {
        // The subscription is what the service said it lost: a topic these credentials may not
        // create is taken as existing here. When it is gone too, creating the subscription
        // fails NotFound, and the topic is then re-created, or refused naming it, below.
        self.create_topic(topic, false).await?;
        match self.repair_subscription(topic, subscription).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.create_topic(topic, true).await?;
                self.repair_subscription(topic, subscription).await
            }
            other => other,
        }?;
        self.repair_known(topic, Some(subscription)).await
    }

    /// Re-creates the subscriptions this backend knows on `topic`, but `except`.
    async fn repair_known(&self, topic: &str, except: Option<&str>) -> Result<()> {
        let subscriptions: Vec<String> = self
            .known
            .lock()
            .map(|known| {
                known
                    .get(topic)
                    .map(|subs| subs.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        for subscription in subscriptions {
            if except != Some(subscription.as_str()) {
                self.repair_subscription(topic, &subscription).await?;
            }
        }
        Ok(())
    }

    /// Whether this backend still knows `subscription` of `topic` (it forgets the
    /// subscriptions of the topics it deletes).
    pub(crate) fn knows(&self, topic: &str, subscription: &str) -> bool {
        self.known
            .lock()
            .map(|known| {
                known
                    .get(topic)
                    .is_some_and(|subs| subs.contains(subscription))
            })
            .unwrap_or(false)
    }

    /// Whether this backend created `subscription` itself (so no other process used it yet).
    pub(crate) fn created(&self, subscription: &str) -> bool {
        self.created
            .lock()
            .map(|created| created.contains(subscription))
            .unwrap_or(false)
    }

    /// Forgets everything remembered (at close).
    pub(crate) fn forget_all(&self) {
        if let Ok(mut known) = self.known.lock() {
            known.clear();
        }
    }

    fn remember(&self, topic: &str, subscription: &str) {
        if let Ok(mut known) = self.known.lock() {
            known
                .entry(topic.to_owned())
                .or_default()
                .insert(subscription.to_owned());
        }
    }
}
