//! Topics and subscriptions: creating them on first use, re-creating them after the service
//! lost them (an emulator restart), listing and deleting them; [`answers`] says what the
//! service's refusals mean, [`reclaim`] ends the emulator's abandoned streaming pulls.
//!
//! Credentials with least-privilege roles (`roles/pubsub.publisher` or `.subscriber`) may
//! publish or pull but not list, look up or create topics and subscriptions: a request refused
//! with `PERMISSION_DENIED` while connecting or provisioning is taken to mean that the resource
//! is managed elsewhere, and the backend goes on. If it does not exist after all, publishing
//! and pulling fail with an error saying so and that these credentials may not create it.

mod answers;
mod reclaim;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use broker_api::{ErrorKind, Result};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{ExpirationPolicy, Subscription};
use google_cloud_pubsub::retry_policy::RetryableErrors;

use crate::error::{is_not_found, is_permission_denied, rpc_error};

use self::answers::{allowed, bound_elsewhere, creation, must_exist, probe_outcome, Creation};

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

    /// Checks `subscription`, found rather than created here: bound to another topic it is an
    /// error (its messages are not `topic`'s); with message ordering off it is used with a
    /// warning (the service then hands out messages of the same key in any order, and a
    /// subscription's ordering cannot be changed: only a new subscription, for a new group,
    /// can have it). Looks it up unless `found` already; credentials that may not look it up
    /// skip the check.
    async fn check_found(
        &self,
        topic: &str,
        subscription: &str,
        found: Option<Subscription>,
    ) -> Result<()> {
        let looked_up = match found {
            Some(found) => Ok(found),
            None => {
                self.subscriptions
                    .get_subscription()
                    .set_subscription(self.subscription_path(subscription))
                    .send()
                    .await
            }
        };
        match looked_up {
            Ok(found) if found.topic != self.topic_path(topic) => {
                let bound = found.topic.rsplit('/').next().unwrap_or_default();
                return Err(bound_elsewhere(subscription, topic, bound));
            }
            Ok(found) if !found.enable_message_ordering => tracing::warn!(
                topic,
                subscription,
                "the subscription exists without message ordering: messages with the same key \
                 may be handled out of order (create it with message ordering, under a new group)"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(subscription, error = %e,
                "cannot look up the subscription's topic and message ordering"),
        }
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

    /// The topic names of the project.
    pub(crate) async fn list_topics(&self) -> Result<Vec<String>> {
        let prefix = format!("{}/topics/", self.project_path);
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .topics
                .list_topics()
                .set_project(&self.project_path)
                .set_page_token(page_token)
                .send()
                .await
                .map_err(|e| {
                    rpc_error(
                        e,
                        "list topics",
                        format!("cannot list the topics of {}", self.project_path),
                    )
                })?;
            names.extend(page.topics.into_iter().map(|topic| {
                topic
                    .name
                    .strip_prefix(&prefix)
                    .map_or_else(|| topic.name.clone(), str::to_owned)
            }));
            if page.next_page_token.is_empty() {
                return Ok(names);
            }
            page_token = page.next_page_token;
        }
    }

    /// Deletes the subscriptions of `topic`, then the topic. A topic that does not exist is a
    /// [`ErrorKind::NotFound`] error.
    pub(crate) async fn delete_topic(&self, topic: &str) -> Result<()> {
        let topic_path = self.topic_path(topic);
        let mut subscriptions = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .topics
                .list_topic_subscriptions()
                .set_topic(&topic_path)
                .set_page_token(page_token)
                .send()
                .await
                .map_err(|e| {
                    rpc_error(
                        e,
                        "delete topic",
                        format!("cannot list the subscriptions of topic {topic}"),
                    )
                })?;
            subscriptions.extend(page.subscriptions);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        // Forgotten first: a stream of the topic told its subscription is gone must not
        // create it again (as after an emulator restart) while the topic still exists.
        let forgotten = self
            .known
            .lock()
            .ok()
            .and_then(|mut known| known.remove(topic))
            .unwrap_or_default();
        if let Ok(mut created) = self.created.lock() {
            for subscription in &forgotten {
                created.remove(subscription);
            }
        }
        for subscription in subscriptions {
            self.delete_subscription(&subscription).await.map_err(|e| {
                rpc_error(
                    e,
                    "delete topic",
                    format!("cannot delete subscription {subscription} of topic {topic}"),
                )
            })?;
        }
        self.topics
            .delete_topic()
            .set_topic(&topic_path)
            .send()
            .await
            .map_err(|e| rpc_error(e, "delete topic", format!("cannot delete topic {topic}")))
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

    /// Creates `topic`; one that exists is kept. When the credentials may not create it, it is
    /// taken as existing on first use, and is an error when `repair`ing a lost topic.
    async fn create_topic(&self, topic: &str, repair: bool) -> Result<()> {
        let created = self
            .topics
            .create_topic()
            .set_name(self.topic_path(topic))
            .send()
            .await;
        let failed = |e| rpc_error(e, "create topic", format!("cannot create topic {topic}"));
        let created = creation(created).map_err(failed)?;
        if let Creation::Created = allowed(created, &format!("topic {topic}"), repair)? {
            tracing::debug!(topic, "created topic");
        }
        Ok(())
    }

    async fn check_topic(&self, topic: &str) -> Result<()> {
        let looked_up = self
            .topics
            .get_topic()
            .set_topic(self.topic_path(topic))
            .send()
            .await;
        must_exist(looked_up, &format!("topic {topic}"), "check topic")
    }

    /// Creates the subscription; one that exists already is kept, unless `repair` is set and
    /// it is bound to another topic (a topic deleted and created again leaves its old
    /// subscriptions detached): then it is replaced.
    async fn create_subscription(&self, topic: &str, subscription: &str) -> Result<()> {
        self.create_subscription_with(topic, subscription, false)
            .await
    }

    async fn repair_subscription(&self, topic: &str, subscription: &str) -> Result<()> {
        self.create_subscription_with(topic, subscription, true)
            .await
    }

    async fn create_subscription_with(
        &self,
        topic: &str,
        subscription: &str,
        repair: bool,
    ) -> Result<()> {
        let created = self
            .try_create_subscription(topic, subscription, repair)
            .await?;
        if matches!(created, Creation::Created) || !repair {
            return Ok(());
        }
        let path = self.subscription_path(subscription);
        let existing = self
            .subscriptions
            .get_subscription()
            .set_subscription(&path)
            .send()
            .await;
        match existing {
            Ok(found) if found.topic == self.topic_path(topic) => return Ok(()),
            Ok(found) => tracing::warn!(
                subscription, expected = topic, bound = %found.topic,
                "subscription is bound to another topic (its topic was deleted); replacing it"
            ),
            Err(e) if is_not_found(&e) => {}
            // Not allowed to look it up: it cannot be replaced either.
            Err(e) if is_permission_denied(&e) => return Ok(()),
            Err(e) => {
                return Err(rpc_error(
                    e,
                    "create subscription",
                    format!("cannot look up subscription {subscription}"),
                ))
            }
        }
        self.delete_subscription(&path).await.map_err(|e| {
            rpc_error(
                e,
                "create subscription",
                format!("cannot replace subscription {subscription}"),
            )
        })?;
        self.try_create_subscription(topic, subscription, true)
            .await
            .map(drop)
    }

    /// Deletes the subscription at `path`; one that is gone already is fine.
    async fn delete_subscription(
        &self,
        path: &str,
    ) -> std::result::Result<(), google_cloud_gax::error::Error> {
        match self
            .subscriptions
            .delete_subscription()
            .set_subscription(path)
            .send()
            .await
        {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates the subscription, or says that it existed (or may not be created, see
    /// [`allowed`]).
    async fn try_create_subscription(
        &self,
        topic: &str,
        subscription: &str,
        repair: bool,
    ) -> Result<Creation> {
        let created = self
            .subscriptions
            .create_subscription()
            .set_name(self.subscription_path(subscription))
            .set_topic(self.topic_path(topic))
            .set_enable_message_ordering(true)
            // Unset, the service deletes a subscription after 31 days without a subscriber,
            // and with it what was published for its group meanwhile; no `ttl` is no expiry.
            .set_expiration_policy(ExpirationPolicy::new())
            .send()
            .await;
        let created = creation(created).map_err(|e| {
            rpc_error(
                e,
                "create subscription",
                format!("cannot create subscription {subscription} on topic {topic}"),
            )
        })?;
        let created = allowed(created, &format!("subscription {subscription}"), repair)?;
        if matches!(created, Creation::Created) {
            tracing::debug!(topic, subscription, "created subscription");
            if let Ok(mut created) = self.created.lock() {
                created.insert(subscription.to_owned());
            }
        }
        Ok(created)
    }

    /// Checks that `subscription` exists; returns it when these credentials may look it up.
    async fn check_subscription(&self, subscription: &str) -> Result<Option<Subscription>> {
        let looked_up = self
            .subscriptions
            .get_subscription()
            .set_subscription(self.subscription_path(subscription))
            .send()
            .await;
        match looked_up {
            Ok(found) => Ok(Some(found)),
            Err(e) => must_exist(
                Err::<(), _>(e),
                &format!("subscription {subscription}"),
                "check subscription",
            )
            .map(|()| None),
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
