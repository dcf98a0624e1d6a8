//! Publishing a failed message again, within `publish_timeout`, when retrying can help: after
//! the topic was re-created, or its ordering key resumed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Error, ErrorKind, Message, Result};
use google_cloud_pubsub::error::PublishError;
use tokio::time::Instant;

use super::pending::Room;
use super::{Answered, Publishers, TopicPublisher};
use crate::error::{is_not_found, publish_error, BACKEND};
use crate::mapping::to_pubsub;

impl Publishers {
    /// Publishes a failed message again within `publish_timeout` when retrying can help, on the
    /// topic's client at the time (the one that failed it and paused its key, unless it was
    /// replaced since: its successor has no key paused). The message keeps its `_room` until
    /// then.
    pub(super) async fn retry(
        self: Arc<Self>,
        publisher: Arc<TopicPublisher>,
        message: Message,
        first: PublishError,
        _room: Room,
    ) -> Result<Answered> {
        let deadline = Instant::now() + self.publish_timeout;
        let mut attempt = 0u32;
        let mut err = first;
        loop {
            let key = message.key.as_deref().filter(|k| !k.is_empty());
            if let Some(key) = key {
                // The client pauses a key after a failure; resume it so later messages with
                // this key are sent again (and this one, when it is retried).
                publisher.client.current().resume_publish(key);
            }
            let failed_at = Instant::now();
            let action = retry_action(&err, self.admin.auto_provision());
            if action == Retry::No || failed_at >= deadline || self.closed.load(Ordering::Acquire) {
                return Err(publish_error(err, &publisher.name));
            }
            attempt += 1;
            if action == Retry::Recreate {
                tracing::warn!(
                    topic = %publisher.name, attempt,
                    "topic not found while publishing (the service lost it?); re-creating it and its known subscriptions"
                );
                if let Err(e) = self.recreate(&publisher, failed_at).await {
                    if !e.is_temporary() {
                        return Err(e);
                    }
                    tracing::warn!(topic = %publisher.name, error = %e, "re-creating the topic failed; retrying");
                }
            } else {
                tracing::debug!(topic = %publisher.name, attempt, error = %err, "publish failed; sending again");
            }
            let pause = backoff(attempt).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::closed(format!(
                    "the backend closed while message {} to topic {} was to be published again; \
                     it was not",
                    message.id, publisher.name
                ))
                .backend(BACKEND)
                .operation("publish"));
            }
            // The client would retry this one for a whole `publish_timeout` of its own.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // Re-creating the topic used the time up. Handed to the client now, the
                // message would most likely be published after its confirmation timed out,
                // and a caller retrying that timeout would publish it twice; the last failure
                // says truly that it was not sent.
                return Err(publish_error(err, &publisher.name));
            }
            let again = publisher.client.current().publish(to_pubsub(&message));
            match tokio::time::timeout(remaining, again).await {
                Ok(Ok(server_id)) => return Ok(Answered::new(message, server_id)),
                Ok(Err(next)) => err = next,
                Err(_) => return Err(self.timed_out(&message, &publisher.name)),
            }
        }
    }

    /// A message still unconfirmed when its `publish_timeout` ran out.
    fn timed_out(&self, message: &Message, topic: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "message {} to topic {topic} was not confirmed within pubsub.publish_timeout \
                 ({}); it may or may not have been published",
                message.id,
                humantime::format_duration(self.publish_timeout)
            ),
        )
        .backend(BACKEND)
        .operation("publish")
        .temporary(true)
    }

    /// Re-creates the topic and its known subscriptions, once per burst of failures: a failure
    /// observed before the last re-creation finished needs no new one.
    async fn recreate(&self, publisher: &TopicPublisher, failed_at: Instant) -> Result<()> {
        let mut recreated_at = publisher.recreated_at.lock().await;
        if recreated_at.is_some_and(|at| at >= failed_at) {
            return Ok(());
        }
        self.admin.recreate(&publisher.name).await?;
        *recreated_at = Some(Instant::now());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    No,
    Again,
    Recreate,
}

/// What a failed publish calls for. Temporary failures (the service unreachable) are not
/// retried here: the client retried them for the whole `publish_timeout` already.
fn retry_action(err: &PublishError, auto_provision: bool) -> Retry {
    match err {
        PublishError::Rpc(e) if is_not_found(e) && auto_provision => Retry::Recreate,
        PublishError::OrderingKeyPaused => Retry::Again,
        _ => Retry::No,
    }
}

/// The pause before publishing a failed message again: 50 ms doubling up to 800 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(5).saturating_sub(1)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_client_does_not_retry_is_retried() {
        let rpc = |code| {
            PublishError::Rpc(Arc::new(google_cloud_gax::error::Error::service(
                google_cloud_gax::error::rpc::Status::default().set_code(code),
            )))
        };
        use google_cloud_gax::error::rpc::Code;
        assert!(retry_action(&rpc(Code::NotFound), true) == Retry::Recreate);
        assert!(retry_action(&rpc(Code::NotFound), false) == Retry::No);
        assert!(retry_action(&PublishError::OrderingKeyPaused, false) == Retry::Again);
        // The client retried these within publish_timeout before they came back.
        assert!(retry_action(&rpc(Code::Unavailable), true) == Retry::No);
        assert!(retry_action(&rpc(Code::DeadlineExceeded), true) == Retry::No);
        assert!(retry_action(&rpc(Code::PermissionDenied), true) == Retry::No);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(5), Duration::from_millis(800));
        assert_eq!(backoff(50), Duration::from_millis(800));
    }
}
