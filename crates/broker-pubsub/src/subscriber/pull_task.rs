//! The pull task of one streaming pull: opens it with the subscription's flow control, offers
//! each message to the consumer it feeds, and on failure re-creates a lost subscription or
//! reopens the pull with backoff.

use std::sync::Arc;
use std::time::Duration;

use broker_api::{ErrorKind, Result};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};

use super::{Pull, Subscriptions, Target};
use crate::error::{classify, is_not_found, rpc_error, status_code};
use crate::stream::PullLife;

/// How long stopping a streaming pull waits for the client to send the last
/// acknowledgements and rejections.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Streaming pulls refused in a row with FAILED_PRECONDITION on the emulator after which the
/// subscription is taken as left in push delivery by a reclaim that never finished: with the
/// pauses between them (100, 200 ms) that is longer than a reclaim's window.
const RECLAIM_STUCK_AFTER: u32 = 3;

impl Subscriptions {
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
    pub(super) async fn run(
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
                // An idle pull kept for the next reader of a topic this backend deleted.
                None if error.kind() == ErrorKind::NotFound && self.deleted_with_topic(&target) => {
                    tracing::debug!(
                        subscription = %target.subscription,
                        "subscription deleted with its topic; its idle streaming pull ends"
                    );
                }
                None => tracing::warn!(subscription = %target.subscription, %error,
                    "the streaming pull failed for good with no subscription reading it"),
            }
        }
        shut_down(stream).await;
    }

    /// Whether this backend deleted the subscription with its topic (it forgets the
    /// subscriptions of the topics it deletes, and knows every other one it provisioned).
    fn deleted_with_topic(&self, target: &Target) -> bool {
        self.admin.auto_provision() && !self.admin.knows(&target.topic, &target.subscription)
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
            if self.deleted_with_topic(target) {
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
