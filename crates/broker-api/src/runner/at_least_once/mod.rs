//! `at_least_once`: acknowledge a message only after its handler succeeded.
//!
//! [`AtLeastOnce`] runs one subscription: [`sequential`] one message at a time (the
//! default), [`concurrent`] several, same-key messages in order; both hand each delivery to
//! [`handling`], which calls the handler, retries, dead-letters and acknowledges.

mod concurrent;
mod earlier_calls;
mod handling;
mod sequential;

use std::future::Future;

use tokio::task::JoinHandle;

use self::earlier_calls::EarlierCalls;
use super::dead_letter::DeadLetters;
use super::registry::Registry;
use super::stop::Stop;
use crate::backend::BoxDeliveryStream;
use crate::error::{Error, ErrorKind, Result};
use crate::handler::Handler;
use crate::settings::SubscriberSettings;
use crate::topic::Topic;

/// A running `at_least_once` subscription.
///
/// Dropping the handle leaves the subscription running until the broker is closed.
#[derive(Debug)]
pub struct Running {
    stop: Stop,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Stops intake, lets running handlers finish (up to the shutdown timeout), acknowledges
    /// what they handled and leaves the group. Messages not handled are delivered again to the
    /// group later. Returns the subscription's error if it had already failed.
    pub async fn close(self) -> Result<()> {
        self.stop.request();
        self.join().await
    }

    /// Waits until the subscription ends by itself: the broker was closed, or a message could
    /// neither be handled nor dead-lettered (the error says which and why).
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::new(ErrorKind::Other, "subscription task failed").source(e)),
        }
    }

    /// Whether the subscription has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The runner behind [`Running`]: pulls deliveries, runs the handler with bounded concurrency,
/// keeps same-key messages in order, retries with backoff, dead-letters, acknowledges.
pub(crate) struct AtLeastOnce<T> {
    topic: Topic<T>,
    group: String,
    settings: SubscriberSettings,
    dead_letters: DeadLetters,
    earlier_calls: EarlierCalls,
}

impl<T: Send + 'static> AtLeastOnce<T> {
    pub(crate) fn new(
        topic: Topic<T>,
        group: String,
        settings: SubscriberSettings,
        dead_letters: DeadLetters,
    ) -> Self {
        AtLeastOnce {
            topic,
            group,
            settings,
            dead_letters,
            earlier_calls: EarlierCalls::default(),
        }
    }

    /// Starts the subscription's task; closing the broker handle behind `registry` closes it.
    pub(crate) fn start(
        self,
        stream: BoxDeliveryStream,
        handler: impl Handler<T>,
        registry: &Registry,
    ) -> Running {
        let stop = Stop::default();
        let ended = registry.register(stop.clone());
        let running = self.run(stream, handler, stop.clone());
        let task = tokio::spawn(async move {
            let _ended = ended;
            running.await
        });
        Running { stop, task }
    }

    async fn run<H: Handler<T>>(
        self,
        mut stream: BoxDeliveryStream,
        handler: H,
        stop: Stop,
    ) -> Result<()> {
        let outcome = if self.settings.concurrency <= 1 {
            self.run_sequential(&mut stream, &handler, &stop).await
        } else {
            self.run_concurrent(&mut stream, &handler, &stop).await
        };
        tracing::debug!(topic = self.topic.name(), group = %self.group, "subscription stopping");
        let closed = stream.close().await;
        let outcome = outcome.and(closed);
        // Said here too: a running subscription's handle may have been dropped, and closing
        // the broker does not report its subscriptions' errors.
        match &outcome {
            Err(error) if error.kind() != ErrorKind::Closed => tracing::error!(
                topic = self.topic.name(),
                group = %self.group,
                %error,
                "subscription stopped"
            ),
            _ => {}
        }
        outcome
    }

    /// Waits for running handlers up to the shutdown timeout; after it they are abandoned and
    /// their messages delivered again later.
    async fn finish_within_timeout(&self, running: impl Future<Output = Result<()>>) -> Result<()> {
        match tokio::time::timeout(self.settings.shutdown_timeout, running).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    topic = self.topic.name(),
                    group = %self.group,
                    "handlers still running after the shutdown timeout; their messages will be delivered again"
                );
                Ok(())
            }
        }
    }
}
