//! Typed publishing.

use std::fmt;
use std::future::Future;

use futures::future::try_join_all;

use crate::backend::{Receipt, SharedBackend};
use crate::confirmation::Confirmation;
use crate::error::Result;
use crate::message::Message;
use crate::naming::validate_topic_name;
use crate::topic::Topic;

/// Publishes values of `T` to one topic. Cheap to clone; safe to use from many tasks.
///
/// [`Publisher::publish`] waits for the broker's confirmation. For throughput, keep many
/// messages in flight: [`Publisher::send`] returns as soon as the client has queued the message
/// and hands back its [`Confirmation`], or use [`Publisher::publish_batch`].
pub struct Publisher<T> {
    backend: SharedBackend,
    topic: Topic<T>,
    name_is_valid: bool,
}

impl<T: 'static> Publisher<T> {
    pub(crate) fn new(backend: SharedBackend, topic: Topic<T>) -> Self {
        let name_is_valid = validate_topic_name(topic.name()).is_ok();
        Publisher {
            backend,
            topic,
            name_is_valid,
        }
    }

    /// The topic this publisher writes to.
    pub fn topic(&self) -> &Topic<T> {
        &self.topic
    }

    /// The message `publish` would send for `value`, to add headers or set the id first.
    pub fn message(&self, value: &T) -> Result<Message> {
        self.topic.message(value)
    }

    /// Publishes `value` and waits until the broker confirms it.
    pub async fn publish(&self, value: &T) -> Result<Receipt> {
        self.publish_message(self.topic.message(value)?).await
    }

    /// Queues `value` in publish order and returns its pending confirmation.
    ///
    /// The value is encoded at once: the returned future does not borrow it.
    pub fn send(&self, value: &T) -> impl Future<Output = Result<Confirmation>> + '_ {
        self.hand_over(self.topic.message(value))
    }

    /// Publishes a prepared message and waits until the broker confirms it.
    pub fn publish_message(&self, message: Message) -> impl Future<Output = Result<Receipt>> + '_ {
        let handing_over = self.hand_over(Ok(message));
        async move { handing_over.await?.await }
    }

    /// Queues a prepared message in publish order and returns its pending confirmation.
    pub fn send_message(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<Confirmation>> + '_ {
        self.hand_over(Ok(message))
    }

    /// Hands the message to the backend when first polled.
    ///
    /// The publishing methods return this future rather than being `async fn`s, which would
    /// store the message in their futures once more: it is moved on every publish.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    fn hand_over(
        &self,
        message: Result<Message>,
    ) -> impl Future<Output = Result<Confirmation>> + '_ {
        async move {
            let message = message?;
            if !message.headers.is_empty() {
                message.headers.check_not_wire()?;
            }
            if !self.name_is_valid {
                validate_topic_name(self.topic.name())?;
            }
            self.backend.send(self.topic.name(), message).await
        }
    }

    /// Publishes every value, all in flight at once, and waits for every confirmation.
    ///
    /// Every value is encoded before any is sent: one that cannot be encoded fails the batch
    /// with nothing published. Receipts come back in input order. On any other error some
    /// values may have been published: the batch is not atomic, and publishing it again may
    /// duplicate some (at-least-once).
    pub async fn publish_batch<'v, I>(&self, values: I) -> Result<Vec<Receipt>>
    where
        I: IntoIterator<Item = &'v T>,
        T: 'v,
    {
        let messages = values
            .into_iter()
            .map(|value| self.topic.message(value))
            .collect::<Result<Vec<_>>>()?;
        let mut confirmations = Vec::with_capacity(messages.len());
        for message in messages {
            confirmations.push(self.send_message(message).await?);
        }
        try_join_all(confirmations).await
    }
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            backend: self.backend.clone(),
            topic: self.topic.clone(),
            name_is_valid: self.name_is_valid,
        }
    }
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
