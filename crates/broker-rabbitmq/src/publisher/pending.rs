//! [`Pending`]: the life of one publish, from its frames to the broker's confirm, through
//! publishing again after a dropped channel.

use std::sync::Arc;

use broker_api::{Confirmation, Error, ErrorKind, Message, Position, Receipt, Result};
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{prepare, ConfirmChannel, Prepared, Route, Shared};
use crate::error::{self, reply_code, BACKEND};
use crate::poll;

/// One publish on its way: published, then confirmed, published again after a drop, or failed.
pub(super) struct Pending {
    pub(super) shared: Arc<Shared>,
    pub(super) route: Arc<Route>,
    pub(super) message: Message,
}

impl Pending {
    /// Queues the first attempt's frames now (so publishes keep their call order) and returns
    /// the confirmation; the confirm task drives the rest.
    pub(super) fn start(
        self,
        prepared: Prepared,
        channel: Arc<ConfirmChannel>,
        permit: OwnedSemaphorePermit,
    ) -> Confirmation {
        let shared = self.shared.clone();
        let started = poll::start(Box::pin(self.run(prepared, channel, permit)));
        match (started, &shared.confirms) {
            (futures::future::Either::Right(pending), Some(confirms)) => confirms.watch(pending),
            (started, _) => Confirmation::from(started),
        }
    }

    /// Holds its `_slot` in the confirm window until it is settled.
    async fn run(
        self,
        prepared: Prepared,
        channel: Arc<ConfirmChannel>,
        _slot: OwnedSemaphorePermit,
    ) -> Result<Receipt> {
        let failure = match self.publish_once(&channel, prepared).await {
            Ok(confirmed) => return self.settle(confirmed),
            Err(failure) => failure,
        };
        // Rare, and boxed: the future of every publish in flight stays the size of one attempt.
        Box::pin(self.republish(failure, channel)).await
    }

    /// Publishes on `channel` and waits for the broker's confirm.
    async fn publish_once(
        &self,
        channel: &ConfirmChannel,
        prepared: Prepared,
    ) -> lapin::Result<lapin::Confirmation> {
        let Prepared {
            routing_key,
            properties,
        } = prepared;
        channel
            .channel
            .basic_publish(
                ShortString::from(&*self.route.exchange),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &self.message.payload,
                properties,
            )
            .await?
            .await
    }

    /// The receipt or error of a confirm.
    fn settle(&self, confirmed: lapin::Confirmation) -> Result<Receipt> {
        match confirmed {
            lapin::Confirmation::Ack(returned) => self.acked(returned),
            lapin::Confirmation::Nack(_) => Err(self.nacked()),
            lapin::Confirmation::NotRequested => Err(Error::new(
                ErrorKind::Other,
                "the channel did not have publisher confirms enabled",
            )
            .backend(BACKEND)
            .operation("publish")),
        }
    }

    /// The channel or the connection went away before the confirm: publishes again on a new
    /// channel, until confirmed, refused, or `retry_timeout` after the first failure.
    async fn republish(
        &self,
        mut failure: lapin::Error,
        mut channel: Arc<ConfirmChannel>,
    ) -> Result<Receipt> {
        let deadline = Instant::now() + self.shared.retry_timeout;
        loop {
            if let Some(own) = self.own_fault(&failure).await {
                return Err(own);
            }
            if self.shared.link.is_closed() {
                return Err(error::closed("publish"));
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
                .await?;
            match self.publish_once(&channel, prepare(&self.message)?).await {
                Ok(confirmed) => return self.settle(confirmed),
                Err(again) => failure = again,
            }
        }
    }

    fn acked(&self, returned: Option<BasicReturnMessage>) -> Result<Receipt> {
        let id = self.message.id.as_str();
        match returned {
            None if !self.route.orphans.claim(id) => Ok(Receipt {
                message_id: self.message.id.clone(),
                position: Position::Unknown,
            }),
            None => Err(self.unroutable(reply_code::NO_ROUTE, "NO_ROUTE")),
            Some(returned) => {
                let own = returned.delivery.exchange.as_str() == &*self.route.exchange
                    && returned
                        .delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .is_some_and(|returned_id| returned_id.as_str() == id);
                if own {
                    Err(self.unroutable(returned.reply_code, returned.reply_text.as_str()))
                } else {
                    // lapin pairs a returned message with the first confirm of the broker's
                    // (multiple) ack; it belongs to another publish of this channel.
                    if let Some(owner) = returned.delivery.properties.message_id() {
                        self.route.orphans.keep(owner.as_str());
                    }
                    Ok(Receipt {
                        message_id: self.message.id.clone(),
                        position: Position::Unknown,
                    })
                }
            }
        }
    }

    fn unroutable(&self, code: u16, text: &str) -> Error {
        Error::new(
            ErrorKind::Rejected,
            format!(
                "no group queue is bound to exchange {}: RabbitMQ returned message {} ({code} \
                 {text}); declare the topic's groups ([topics.{}] groups = [...]) or subscribe \
                 a group before publishing",
                self.route.exchange, self.message.id, self.route.exchange
            ),
        )
        .backend(BACKEND)
        .operation("publish")
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
    /// again. A deleted exchange is declared again when auto-provisioning is on.
    async fn own_fault(&self, failure: &lapin::Error) -> Option<Error> {
        let amqp = error::amqp_error(failure)?;
        let text = amqp.get_message().as_str();
        let exchange = &*self.route.exchange;
        let names_exchange = text.contains(&format!("exchange '{exchange}'"));
        match amqp.get_id() {
            reply_code::NOT_FOUND if names_exchange => {
                // The broker closed the channel with this error: there is none to close.
                drop(self.shared.forget(exchange));
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
