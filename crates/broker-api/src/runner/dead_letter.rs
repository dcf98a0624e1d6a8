//! Dead-lettering: a message that cannot be handled goes to `<topic>.<group>.dlq` with the
//! reason, instead of being dropped or blocking the group.

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::backend::{SharedBackend, TopicSpec};
use crate::delivery::Metadata;
use crate::error::{ErrorKind, Result};
use crate::message::{Headers, Message, MessageId};
use crate::naming::dead_letter_topic;
use crate::settings::RetryPolicy;

/// Header names written on dead letters.
pub mod dead_letter_headers {
    /// Why the message was dead-lettered (the last error, shortened to 900 bytes).
    pub const REASON: &str = "dead-letter-reason";
    /// The topic the message was read from.
    pub const TOPIC: &str = "dead-letter-topic";
    /// The group that failed to handle it.
    pub const GROUP: &str = "dead-letter-group";
    /// How many handler calls were made (0 when the payload could not be decoded).
    pub const ATTEMPTS: &str = "dead-letter-attempts";
}

/// Attempts at publishing one dead letter when the broker reports a temporary failure.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Longest reason kept in a header: Pub/Sub limits attribute values to 1024 bytes.
const MAX_REASON_BYTES: usize = 900;

/// Publishes the dead letters of one group on one topic.
#[derive(Clone)]
pub struct DeadLetters {
    backend: SharedBackend,
    source_topic: Arc<str>,
    group: Arc<str>,
    topic: Arc<str>,
    retry: RetryPolicy,
    provisioned: Arc<OnceCell<()>>,
}

impl DeadLetters {
    /// Dead letters of `group` reading `topic`.
    pub fn new(backend: SharedBackend, topic: &str, group: &str, retry: RetryPolicy) -> Self {
        DeadLetters {
            backend,
            source_topic: topic.into(),
            group: group.into(),
            topic: dead_letter_topic(topic, group).into(),
            retry,
            provisioned: Arc::new(OnceCell::new()),
        }
    }

    /// The dead-letter topic, `<topic>.<group>.dlq`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether messages that cannot be handled go to the dead-letter topic (the retry
    /// policy's `dead_letter`).
    pub fn is_enabled(&self) -> bool {
        self.retry.dead_letter
    }

    /// Publishes the message with the reason headers and waits for the broker's confirmation.
    ///
    /// With auto-provisioning on, the dead-letter topic is created on first use, with the
    /// group as its reader, so that dead letters are kept even on brokers that only keep
    /// messages for existing groups; with it off, a dead-letter topic that was not declared
    /// fails the publish (`NotFound`). Temporary failures, of the creation as of the publish,
    /// are retried a few times with backoff. A dead letter the broker refuses for good
    /// (`Rejected`, not temporary) while it carries the message's own headers is published
    /// again without them (Pub/Sub takes 100 attributes at most, for one), with a warning.
    pub async fn publish(
        &self,
        payload: bytes::Bytes,
        metadata: &Metadata,
        reason: &str,
        attempts: u32,
    ) -> Result<()> {
        let mut message = self.message(payload, metadata, reason, attempts);
        let mut without_own_headers = metadata.headers.is_empty();
        let mut attempt = 1;
        loop {
            match self.publish_once(&message).await {
                // Refused for good, for what the original headers add (the broker's limit on
                // their number or size): sent with only the dead-letter headers, rather than
                // not at all, which would stop the group at this message. A refusal that may
                // pass later (a quota, a paused ordering key) is retried as it is.
                Err(e)
                    if e.kind() == ErrorKind::Rejected
                        && !e.is_temporary()
                        && !without_own_headers =>
                {
                    without_own_headers = true;
                    tracing::warn!(topic = %self.topic, error = %e, dropped = metadata.headers.len(),
                        "dead letter refused; publishing it without the message's own headers");
                    message.headers = Headers::new();
                    self.add_reason(&mut message, reason, attempts);
                }
                Err(e) if e.is_temporary() && attempt < PUBLISH_ATTEMPTS => {
                    tracing::warn!(topic = %self.topic, attempt, error = %e, "dead letter not published yet, retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates the dead-letter topic if that is still to do, then publishes `message` once.
    async fn publish_once(&self, message: &Message) -> Result<()> {
        if self.backend.auto_provision() {
            self.provisioned
                .get_or_try_init(|| async {
                    let spec = TopicSpec::new(&*self.topic).group(&*self.group);
                    self.backend.ensure_topic(&spec).await
                })
                .await?;
        }
        self.backend
            .send(&self.topic, message.clone())
            .await?
            .await
            .map(drop)
    }

    fn message(
        &self,
        payload: bytes::Bytes,
        metadata: &Metadata,
        reason: &str,
        attempts: u32,
    ) -> Message {
        let mut message = Message::new(payload).with_id(
            metadata
                .message_id
                .clone()
                .unwrap_or_else(MessageId::random),
        );
        message.key = metadata.key.clone();
        message.headers = metadata.headers.clone();
        message.content_type = metadata.content_type.clone();
        self.add_reason(&mut message, reason, attempts);
        message
    }

    /// Adds the [`dead_letter_headers`].
    fn add_reason(&self, message: &mut Message, reason: &str, attempts: u32) {
        let headers = &mut message.headers;
        headers.insert(
            dead_letter_headers::REASON,
            shorten(reason, MAX_REASON_BYTES),
        );
        headers.insert(dead_letter_headers::TOPIC, &*self.source_topic);
        headers.insert(dead_letter_headers::GROUP, &*self.group);
        headers.insert(dead_letter_headers::ATTEMPTS, attempts.to_string());
    }
}

fn shorten(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_respects_char_boundaries() {
        assert_eq!(shorten("héllo", 2), "h");
        assert_eq!(shorten("héllo", 3), "hé");
        assert_eq!(shorten("abc", 10), "abc");
    }
}
