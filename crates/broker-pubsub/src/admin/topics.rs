//! Topic requests: creating, checking, listing, deleting (with their subscriptions).

use broker_api::Result;

use super::answers::{allowed, creation, must_exist, Creation};
use super::Admin;
use crate::error::rpc_error;

impl Admin {
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
    /// [`ErrorKind::NotFound`](broker_api::ErrorKind::NotFound) error.
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

    /// Creates `topic`; one that exists is kept. When the credentials may not create it, it is
    /// taken as existing on first use, and is an error when `repair`ing a lost topic.
    pub(super) async fn create_topic(&self, topic: &str, repair: bool) -> Result<()> {
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

    pub(super) async fn check_topic(&self, topic: &str) -> Result<()> {
        let looked_up = self
            .topics
            .get_topic()
            .set_topic(self.topic_path(topic))
            .send()
            .await;
        must_exist(looked_up, &format!("topic {topic}"), "check topic")
    }
}
