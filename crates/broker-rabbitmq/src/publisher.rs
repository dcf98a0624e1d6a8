//! Publishing with publisher confirms, many in flight.
//!
//! Each topic gets its own confirm channel (so a broker-side channel error, such as a publish
//! to an exchange deleted behind our back, only touches that topic). A send checks the message,
//! takes a slot in the confirm window (waiting only when `confirm_window` publishes are
//! unconfirmed), hands the frames to lapin and returns the confirmation future. The rest of the
//! publish (waiting for the confirm, publishing again after a dropped channel) is driven by the
//! backend's confirm task ([`crate::confirms`]), which frees the window slot when the broker
//! answered, whether or not the caller polls its confirmation. Messages are
//! published with `mandatory`: a message no group queue takes comes back (`basic.return`) and
//! fails its publish, as does a `basic.nack`. A publish whose channel or connection dropped
//! before its confirm arrived is published again on the next channel within
//! `retry_timeout` (at least once: the broker may have kept the first copy), or fails. It is
//! never reported published without a confirm.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use broker_api::completion::{self, Completion};
use broker_api::{Confirmation, Error, ErrorKind, Message, Position, Receipt, Result};
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use rustc_hash::FxHashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::confirms::Confirms;
use crate::error::{self, reply_code, BACKEND};
use crate::link::Link;
use crate::metadata;
use crate::poll;
use crate::topology::{scratch_channel, Topology};

/// How long to wait before opening a channel again after the broker refused to.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// The most returned messages kept for the publish they belong to (see [`Orphans`]).
const MAX_ORPHANS: usize = 1024;

/// The publishing side of the backend.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    link: Arc<Link>,
    /// The task that drives publishes to their confirm; absent outside a Tokio runtime, where
    /// the caller's confirmation drives its publish.
    confirms: Option<Confirms>,
    topology: Arc<Topology>,
    auto_provision: bool,
    window: Arc<Semaphore>,
    window_size: u32,
    max_payload: usize,
    retry_timeout: Duration,
    closing: AtomicBool,
    /// Looked up on every publish (FxHash: cheap on short names, which are not untrusted input).
    routes: RwLock<FxHashMap<String, Arc<Route>>>,
    serials: AtomicU64,
}

/// One topic's confirm channel, reopened when it fails.
struct Route {
    exchange: Arc<str>,
    channel: RwLock<Option<Arc<ConfirmChannel>>>,
    reopen: tokio::sync::Mutex<()>,
    orphans: Orphans,
}

struct ConfirmChannel {
    channel: Channel,
    serial: u64,
}

/// A message the broker needs to hand over: what the first attempt publishes.
struct Prepared {
    routing_key: ShortString,
    properties: BasicProperties,
}

impl Publisher {
    /// A publisher over `link`, with `confirm_window` publishes in flight at most.
    pub(crate) fn new(link: Arc<Link>, topology: Arc<Topology>, auto_provision: bool) -> Self {
        let config = &link.settings().config;
        let window_size = u32::try_from(config.confirm_window)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let shared = Shared {
            confirms: tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| Confirms::start(&runtime)),
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
            max_payload: config.max_message_size,
            retry_timeout: config.retry_timeout,
            link,
            topology,
            auto_provision,
            closing: AtomicBool::new(false),
            routes: RwLock::new(FxHashMap::default()),
            serials: AtomicU64::new(0),
        };
        Publisher {
            shared: Arc::new(shared),
        }
    }

    /// Hands `message` over for `topic` and returns its confirmation (see the module docs).
    pub(crate) fn send<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> Completion<'a, Confirmation> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) || shared.link.is_closed() {
            return completion::ready(Err(error::closed("publish")));
        }
        if message.payload.len() > shared.max_payload {
            return completion::ready(Err(too_large(&message, shared.max_payload)));
        }
        let prepared = match prepare(&message) {
            Ok(prepared) => prepared,
            Err(e) => return completion::ready(Err(e)),
        };
        // The fast path: a known topic, room in the window, an open channel.
        let mut permit = None;
        if let Some(route) = shared.route(topic) {
            if let Ok(slot) = shared.window.clone().try_acquire_owned() {
                if let Some(channel) = route.current() {
                    let pending = Pending {
                        shared: shared.clone(),
                        route,
                        message,
                    };
                    return completion::ready(Ok(pending.start(prepared, channel, slot)));
                }
                permit = Some(slot);
            }
        }
        completion::boxed(shared.clone().send_slowly(topic, message, prepared, permit))
    }

    /// Forgets the topic's channel and exchange, after it was deleted.
    pub(crate) fn forget(&self, topic: &str) {
        self.shared.forget(topic);
    }

    /// Stops new publishes and waits up to `timeout` for pending confirms. Returns whether
    /// every pending publish was settled.
    pub(crate) async fn close(&self, timeout: Duration) -> bool {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        let drained = tokio::time::timeout(timeout, shared.window.acquire_many(shared.window_size))
            .await
            .is_ok_and(|acquired| acquired.is_ok());
        shared.window.close();
        drained
    }
}

impl Shared {
    fn route(&self, topic: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    fn forget(&self, topic: &str) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        self.topology.forget_topic(topic);
    }

    async fn send_slowly(
        self: Arc<Self>,
        topic: &str,
        message: Message,
        prepared: Prepared,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Confirmation> {
        let deadline = Instant::now() + self.retry_timeout;
        let route = error::within(deadline, "publish", self.route_or_open(topic, deadline)).await?;
        let permit = match permit {
            Some(permit) => permit,
            None => self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| error::closed("publish"))?,
        };
        let channel = route.channel(&self, None, deadline).await?;
        let pending = Pending {
            shared: self,
            route,
            message,
        };
        Ok(pending.start(prepared, channel, permit))
    }

    /// The topic's route, checking or declaring its exchange the first time.
    async fn route_or_open(&self, topic: &str, deadline: Instant) -> Result<Arc<Route>> {
        if let Some(route) = self.route(topic) {
            return Ok(route);
        }
        let session = self.link.session(deadline).await?;
        let channel = scratch_channel(&session.connection).await?;
        let ensured = self.topology.ensure_exchange(&channel, topic).await;
        drop(channel);
        ensured.map_err(|e| e.operation("publish"))?;
        let route = Arc::new(Route {
            exchange: Arc::from(topic),
            channel: RwLock::new(None),
            reopen: tokio::sync::Mutex::new(()),
            orphans: Orphans::default(),
        });
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        Ok(routes.entry(topic.to_owned()).or_insert(route).clone())
    }
}

impl Route {
    /// The open confirm channel, if any.
    fn current(&self) -> Option<Arc<ConfirmChannel>> {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|open| open.channel.status().connected())
            .cloned()
    }

    /// An open confirm channel other than `stale`, opening one (waiting for a connection until
    /// `deadline`) when needed.
    async fn channel(
        &self,
        shared: &Shared,
        stale: Option<u64>,
        deadline: Instant,
    ) -> Result<Arc<ConfirmChannel>> {
        let usable =
            |open: Option<Arc<ConfirmChannel>>| open.filter(|open| Some(open.serial) != stale);
        loop {
            if let Some(open) = usable(self.current()) {
                return Ok(open);
            }
            let _reopening = self.reopen.lock().await;
            if let Some(open) = usable(self.current()) {
                return Ok(open);
            }
            let session = shared.link.session(deadline).await?;
            let opening = open_confirm_channel(&session.connection);
            match error::within(deadline, "publish", opening).await {
                Ok(channel) => {
                    let open = Arc::new(ConfirmChannel {
                        channel,
                        serial: shared.serials.fetch_add(1, Ordering::Relaxed) + 1,
                    });
                    *self.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(open.clone());
                    return Ok(open);
                }
                Err(e) if !session.is_open() => {
                    tracing::debug!(error = %e, "opening a confirm channel failed: the connection is down");
                    shared.link.report_broken();
                }
                Err(e) if Instant::now() >= deadline => return Err(e.operation("publish")),
                Err(e) => {
                    tracing::warn!(exchange = %self.exchange, error = %e, "opening a confirm channel failed; retrying");
                    tokio::time::sleep(REOPEN_PAUSE).await;
                }
            }
        }
    }
}

async fn open_confirm_channel(connection: &lapin::Connection) -> Result<Channel> {
    let channel = scratch_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| error::from_lapin("publish", "cannot enable publisher confirms", e))?;
    Ok(channel)
}

/// One publish on its way: published, then confirmed, published again after a drop, or failed.
struct Pending {
    shared: Arc<Shared>,
    route: Arc<Route>,
    message: Message,
}

impl Pending {
    /// Queues the first attempt's frames now (so publishes keep their call order) and returns
    /// the confirmation; the confirm task drives the rest.
    fn start(
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
                self.shared.forget(exchange);
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

/// The routing key and properties of `message`, or why it cannot be sent.
fn prepare(message: &Message) -> Result<Prepared> {
    Ok(Prepared {
        routing_key: metadata::routing_key(message)?,
        properties: metadata::properties(message)?,
    })
}

fn too_large(message: &Message, max: usize) -> Error {
    Error::new(
        ErrorKind::Rejected,
        format!(
            "message {} is {} bytes, over the {max} bytes RabbitMQ accepts \
             (rabbitmq.max_message_size)",
            message.id,
            message.payload.len()
        ),
    )
    .backend(BACKEND)
    .operation("publish")
}

/// Returned messages lapin handed to another publish's confirm.
///
/// When RabbitMQ confirms several publishes with one `multiple` ack, lapin gives a returned
/// message to whichever of them it completes first. The publish that received someone else's
/// returned message keeps the owner's id here, and the owner, confirmed without one, finds it.
#[derive(Default)]
struct Orphans {
    count: AtomicUsize,
    ids: Mutex<VecDeque<String>>,
}

impl Orphans {
    fn keep(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() == MAX_ORPHANS {
            ids.pop_front();
        }
        ids.push_back(id.to_owned());
        self.count.store(ids.len(), Ordering::Release);
    }

    /// Whether a returned message for `id` was kept (and takes it).
    fn claim(&self, id: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let Some(index) = ids.iter().position(|kept| kept == id) else {
            return false;
        };
        ids.remove(index);
        self.count.store(ids.len(), Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_returns_are_claimed_once() {
        let orphans = Orphans::default();
        assert!(!orphans.claim("a"));
        orphans.keep("a");
        orphans.keep("b");
        assert!(orphans.claim("a"));
        assert!(!orphans.claim("a"));
        assert!(orphans.claim("b"));
        for i in 0..MAX_ORPHANS + 10 {
            orphans.keep(&i.to_string());
        }
        assert!(!orphans.claim("0"), "the oldest are dropped");
        assert!(orphans.claim(&(MAX_ORPHANS + 9).to_string()));
    }

    #[test]
    fn over_limit_payloads_name_the_setting() {
        let err = too_large(&Message::new(vec![0u8; 10]).with_id("m1"), 5);
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let text = err.to_string();
        assert!(
            text.contains("m1")
                && text.contains("10 bytes")
                && text.contains("rabbitmq.max_message_size"),
            "{text}"
        );
    }
}
