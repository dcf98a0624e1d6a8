//! Subscription requests: creating (or replacing one bound to a lost topic), checking,
//! deleting.

use broker_api::Result;
use google_cloud_pubsub::model::{ExpirationPolicy, Subscription};

use super::answers::{allowed, bound_elsewhere, creation, must_exist, Creation};
use super::Admin;
use crate::error::{is_not_found, is_permission_denied, rpc_error};

impl Admin {
    /// Checks `subscription`, found rather than created here: bound to another topic it is an
    /// error (its messages are not `topic`'s); with message ordering off it is used with a
    /// warning (the service then hands out messages of the same key in any order, and a
    /// subscription's ordering cannot be changed: only a new subscription, for a new group,
    /// can have it). Looks it up unless `found` already; credentials that may not look it up
    /// skip the check.
    pub(super) async fn check_found(
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

    /// Creates the subscription; one that exists already is kept, unless `repair` is set and
    /// it is bound to another topic (a topic deleted and created again leaves its old
    /// subscriptions detached): then it is replaced.
    pub(super) async fn create_subscription(&self, topic: &str, subscription: &str) -> Result<()> {
        self.create_subscription_with(topic, subscription, false)
            .await
    }

    pub(super) async fn repair_subscription(&self, topic: &str, subscription: &str) -> Result<()> {
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
    pub(super) async fn delete_subscription(
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
    pub(super) async fn check_subscription(
        &self,
        subscription: &str,
    ) -> Result<Option<Subscription>> {
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
}
