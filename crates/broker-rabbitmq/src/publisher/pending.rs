//! [`Publish`] and [`Pending`]: the life of one publish, from its frames to the broker's
//! confirm, through publishing again after a dropped channel.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Error, ErrorKind, Message, MessageId, Position, Receipt, Result};
use futures::TryFutureExt;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::driver::timed_out;
use super::{prepare, ConfirmChannel, Prepared, Route, Shared};
use crate::error::{self, reply_code, BACKEND};

/// How long a publish whose confirm carried another's returned message waits before it looks
/// for its own (see [`Pending::acked`]).
const RETURN_GRACE: Duration = Duration::from_millis(5);

/// What a confirm says about its publish.
enum Settled {
    /// Its answer.
    Known(Result<Receipt>),
    /// Acked without a returned message: see [`Answer::Unclaimed`].
    Unclaimed,
    /// Unclaimed after [`RETURN_GRACE`].
    AfterReturns,
}

/// How a publish ends.
pub(super) enum Answer {
    /// Its receipt or error.
    Known(Result<Receipt>),
    /// Acked without its returned message: published, unless another confirm carried it. The
    /// publishing task [claims](Unclaimed::claim) it once no other publish is ready, so that
    /// the confirms completed before it have run; a publish its caller drives (no publishing
    /// task) claims it at once, and misses a returned message whose confirm's own caller has
    /// not polled it yet.
    Unclaimed(Unclaimed),
}

impl Answer {
    /// The publish's receipt or error, looking for its returned message now.
    pub(super) fn now(self) -> Result<Receipt> {
        match self {
            Answer::Known(answer) => answer,
            Answer::Unclaimed(unclaimed) => unclaimed.claim(),
        }
    }
}

/// An acked publish that may yet find its returned message among the [`Orphans`] of its route.
///
/// [`Orphans`]: super::orphans::Orphans
pub(super) struct Unclaimed {
    pub(super) route: Arc<Route>,
    pub(super) message_id: MessageId,
}

impl Unclaimed {
    /// The receipt, unless another publish's confirm carried this one's returned message.
    pub(super) fn claim(self) -> Result<Receipt> {
        if self.route.orphans.claim(self.message_id.as_str()) {
            return Err(unroutable(
                &self.route.exchange,
                &self.message_id,
                reply_code::NO_ROUTE,
                "NO_ROUTE",
            ));
        }
        Ok(Receipt {
            message_id: self.message_id,
            position: Position::Unknown,
        })
    }
}

/// One publish on its way: published, then confirmed, published again after a drop, or failed.
pub(super) struct Pending {
    pub(super) shared: Arc<Shared>,
    pub(super) route: Arc<Route>,
    pub(super) message: Message,
}

/// A publish about to start: its first attempt's frames, the channel they go to, and the
/// window slot it holds until it is settled.
pub(super) struct Publish {
    pub(super) pending: Pending,
    pub(super) prepared: Prepared,
    pub(super) channel: Arc<ConfirmChannel>,
    /// Held by [`run`](Self::run)'s future until the publish is settled.
    pub(super) slot: OwnedSemaphorePermit,
}

impl Publish {
    /// Publishes, waits for the confirm, publishes again after a dropped channel (not past
    /// `answer_by`, see [`Job::run`](super::driver::Job::run)); frees the window slot when
    /// done.
    ///
    /// Every publish in flight is one of these futures, so it is kept small: an `async` block
    /// over `self` (an `async fn` would also copy its argument into a local) that uses the
    /// fields in place.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub(super) fn run(self, answer_by: Option<Instant>) -> impl Future<Output = Answer> + Send {
        async move {
            // Named, so that the block takes the slot: it captures only the fields it uses,
            // and one it did not would be freed as soon as the future was built.
            let _slot = self.slot;
            let failure = match self
                .pending
                .publish_once(&self.channel, self.prepared)
                .await
            {
                Ok(confirmed) => match self.pending.settle(confirmed) {
                    Settled::Known(answer) => return Answer::Known(answer),
                    Settled::Unclaimed => {
                        return Answer::Unclaimed(Unclaimed {
                            route: self.pending.route,
                            message_id: self.pending.message.id,
                        })
                    }
                    Settled::AfterReturns => None,
                },
                Err(failure) => Some(failure),
            };
            // Rare, and boxed: the future stays the size of one attempt.
            Box::pin(self.pending.finish(failure, self.channel, answer_by)).await
        }
    }
}

impl Pending {
    /// Publishes on `channel` and waits for the broker's confirm.
    ///
    /// Not an `async fn`: lapin's publish future is created here, taking `prepared`, so that
    /// the returned future holds the message's properties once, not also as its argument.
    fn publish_once<'a>(
        &'a self,
        channel: &'a ConfirmChannel,
        prepared: Prepared,
    ) -> impl Future<Output = lapin::Result<lapin::Confirmation>> + 'a {
        let publishing = channel.channel.basic_publish(
            ShortString::from(&*self.route.exchange),
            prepared.routing_key,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &self.message.payload,
            prepared.properties,
        );
        // A combinator, not an `async` block: awaiting the captured future would copy it.
        publishing.and_then(|confirm| confirm)
    }

    /// The receipt or error of a confirm, or that it is known only once the confirms completed
    /// with it have kept their returned messages (see [`acked`](Self::acked)).
    fn settle(&self, confirmed: lapin::Confirmation) -> Settled {
        match confirmed {
            lapin::Confirmation::Ack(returned) => self.acked(returned),
            lapin::Confirmation::Nack(returned) => {
                // Another publish's returned message carried by a nack is kept for its owner
                // all the same.
                if let Some(returned) = returned.filter(|returned| !self.owns(returned)) {
                    self.keep_foreign(&returned);
                }
                Settled::Known(Err(self.nacked()))
            }
            lapin::Confirmation::NotRequested => Settled::Known(Err(Error::new(
                ErrorKind::Other,
                "the channel did not have publisher confirms enabled",
            )
            .backend(BACKEND)
            .operation("publish"))),
        }
    }

    /// The rare end of a publish: publishing again after `failure`, or without one, looking
    /// for its returned message after the others' (see [`acked`](Self::acked)).
    async fn finish(
        &self,
        failure: Option<lapin::Error>,
        channel: Arc<ConfirmChannel>,
        answer_by: Option<Instant>,
    ) -> Answer {
        match failure {
            Some(failure) => self
                .republish(failure, channel, answer_by)
                .await
                .unwrap_or_else(|error| Answer::Known(Err(error))),
            None => self.after_returns().await,
        }
    }

    /// A publish whose confirm carried another's returned message, once the confirms lapin
    /// completed just after it had time to come in: its own, if any, came with one of them.
    async fn after_returns(&self) -> Answer {
        tokio::time::sleep(RETURN_GRACE).await;
        Answer::Unclaimed(self.unclaimed())
    }

    /// The channel or the connection went away before the confirm: publishes again on a new
    /// channel, until confirmed, refused, or `retry_timeout` after the first failure — and
    /// not once its caller was told it timed out (`answer_by`): the caller may have sent it
    /// again by then, and a copy stored behind its back would be a needless duplicate.
    async fn republish(
        &self,
        mut failure: lapin::Error,
        mut channel: Arc<ConfirmChannel>,
        answer_by: Option<Instant>,
    ) -> Result<Answer> {
        let retry_deadline = Instant::now() + self.shared.retry_timeout;
        let deadline = answer_by.map_or(retry_deadline, |by| by.min(retry_deadline));
        loop {
            if let Some(own) = self.own_fault(&failure).await {
                return Err(own);
            }
            if self.shared.link.is_closed() {
                return Err(self.unconfirmed(error::closed("publish")));
            }
            if answer_by.is_some_and(|by| Instant::now() >= by) {
                return Err(timed_out(self.shared.publish_timeout));
            }
            if Instant::now() >= deadline {
                return Err(error::from_lapin(
                    "publish",
                    format!(
                        "message {} was not confirmed by RabbitMQ within {} of retries (the channel \
                         or connection kept failing); it may or may not have been stored",
                        self.message.id,
                        humantime::format_duration(self.shared.retry_timeout)
                    ),
                    failure,
                ));
            }
            if error::is_connection_loss(&failure) {
                self.shared.link.report_broken();
            }
            tracing::debug!(
                message_id = %self.message.id,
                exchange = %self.route.exchange,
                error = %failure,
                "publish not confirmed before its channel closed; publishing it again"
            );
            channel = self
                .route
                .channel(&self.shared, Some(channel.serial), deadline)
                .await
                .map_err(|e| self.unconfirmed(e))?;
            channel.check_header_fits(&self.message)?;
            match self.publish_once(&channel, prepare(&self.message)?).await {
                Ok(confirmed) => {
                    return Ok(match self.settle(confirmed) {
                        Settled::Known(answer) => Answer::Known(answer),
                        Settled::Unclaimed => Answer::Unclaimed(self.unclaimed()),
                        Settled::AfterReturns => self.after_returns().await,
                    });
                }
                Err(again) => failure = again,
            }
        }
    }

    /// The receipt of an acked publish, or its error when RabbitMQ returned the message.
    ///
    /// RabbitMQ sends a message's `basic.return` before its `basic.ack`, and lapin hands each
    /// returned message to whichever confirm it completes next, completing the confirms of a
    /// `multiple` ack in hash-map order: a confirm may carry another publish's returned
    /// message, and this publish's own may come with another confirm. Returned messages that
    /// are not their confirm's are kept for their owner in the route's
    /// [`Orphans`](super::orphans::Orphans), and an acked publish looks for its own there:
    ///
    /// - confirmed without a returned message ([`Answer::Unclaimed`]), its own, if any, was
    ///   handed to a confirm completed before this one, whose publish was woken before this
    ///   one's answer could be seen: the publishing task looks once no publish is ready, by
    ///   when it has polled that one, and a route that returns nothing pays no wait;
    /// - confirmed with another's, its own may ride with a confirm lapin completes just after:
    ///   it looks after [`RETURN_GRACE`], the same way.
    fn acked(&self, returned: Option<BasicReturnMessage>) -> Settled {
        let Some(returned) = returned else {
            return Settled::Unclaimed;
        };
        if self.owns(&returned) {
            return Settled::Known(Err(unroutable(
                &self.route.exchange,
                &self.message.id,
                returned.reply_code,
                returned.reply_text.as_str(),
            )));
        }
        self.keep_foreign(&returned);
        Settled::AfterReturns
    }

    /// Whether `returned` is this publish's message.
    fn owns(&self, returned: &BasicReturnMessage) -> bool {
        let owner = returned.delivery.properties.message_id().as_ref();
        returned.delivery.exchange.as_str() == &*self.route.exchange
            && owner.is_some_and(|owner| owner.as_str() == self.message.id.as_str())
    }

    /// Keeps another publish's returned message for its owner.
    fn keep_foreign(&self, returned: &BasicReturnMessage) {
        if let Some(owner) = returned.delivery.properties.message_id() {
            self.route.orphans.keep(owner.as_str());
        }
    }

    /// This publish, acked, to look for its returned message among the orphans.
    fn unclaimed(&self) -> Unclaimed {
        Unclaimed {
            route: self.route.clone(),
            message_id: self.message.id.clone(),
        }
    }

    /// This publish's error when it could not be published again after its first attempt
    /// (no channel before the deadline, the backend closed): the first may have been stored.
    fn unconfirmed(&self, cause: Error) -> Error {
        let temporary = cause.is_temporary();
        Error::new(
            cause.kind(),
            format!(
                "message {} was not confirmed by RabbitMQ and could not be published again; it \
                 may or may not have been stored",
                self.message.id
            ),
        )
        .temporary(temporary)
        .backend(BACKEND)
        .operation("publish")
        .source(cause)
    }

    fn nacked(&self) -> Error {
        Error::new(
            ErrorKind::Rejected,
            format!(
                "the broker refused message {} on exchange {} (basic.nack): a queue may be full \
                 (x-overflow = reject-publish) or unavailable",
                self.message.id, self.route.exchange
            ),
        )
        .backend(BACKEND)
        .operation("publish")
    }

    /// The error of this publish when the broker closed the channel because of it (the exchange
    /// is missing and may not be created, publishing to it is not allowed, the message is too
    /// large); `None` when the failure is not this message's fault and it can be published
    /// again. A deleted exchange is declared again when auto-provisioning is on, with the
    /// bindings of the group queues this process declared that still exist, and the message
    /// published again.
    async fn own_fault(&self, failure: &lapin::Error) -> Option<Error> {
        let amqp = error::amqp_error(failure)?;
        let text = amqp.get_message().as_str();
        let exchange = &*self.route.exchange;
        let names_exchange = text.contains(&format!("exchange '{exchange}'"));
        match amqp.get_id() {
            reply_code::NOT_FOUND if names_exchange => {
                // The broker closed the channel with this error: there is none to close.
                self.shared.exchange_lost(exchange);
                if self.shared.auto_provision {
                    let deadline = Instant::now() + self.shared.retry_timeout;
                    let reopening = self.shared.route_or_open(exchange, deadline);
                    return error::within(deadline, "publish", reopening).await.err();
                }
                Some(
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "topic {exchange} does not exist (no exchange) and auto-provisioning \
                             is off"
                        ),
                    )
                    .backend(BACKEND)
                    .operation("publish")
                    .source(failure.clone()),
                )
            }
            reply_code::ACCESS_REFUSED if names_exchange => Some(error::from_lapin(
                "publish",
                format!("publishing to exchange {exchange} is not allowed for this user"),
                failure.clone(),
            )),
            reply_code::PRECONDITION_FAILED | reply_code::CONTENT_TOO_LARGE
                if text.contains(&format!(" {} ", self.message.payload.len())) =>
            {
                Some(error::from_lapin(
                    "publish",
                    format!(
                        "message {} ({} bytes) is larger than the broker accepts; lower \
                         rabbitmq.max_message_size to the broker's max_message_size",
                        self.message.id,
                        self.message.payload.len()
                    ),
                    failure.clone(),
                ))
            }
            _ => None,
        }
    }
}

/// The error of message `id`, returned by RabbitMQ from `exchange` with `code` and `text`.
fn unroutable(exchange: &str, id: &MessageId, code: u16, text: &str) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "no group queue is bound to exchange {exchange}: RabbitMQ returned message {id} \
             ({code} {text}); declare the topic's groups ([topics.{exchange}] groups = [...]) or \
             subscribe a group before publishing"
        ),
    )
    .backend(BACKEND)
    .operation("publish")
}
