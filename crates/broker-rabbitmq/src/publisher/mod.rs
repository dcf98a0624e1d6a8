//! Publishing with publisher confirms, many in flight.
//!
//! Each topic gets its own confirm channel (so a broker-side channel error, such as a publish
//! to an exchange deleted behind our back, only touches that topic). A send checks the message,
//! takes a slot in the confirm window (waiting only when `confirm_window` publishes are
//! unconfirmed) and returns the confirmation future; the publish itself (its frames, the
//! confirm, publishing again after a dropped channel) runs on the backend's publishing task
//! ([`driver`]), which frees the window slot when the broker answered, whether or not the
//! caller polls its confirmation. Messages are
//! published with `mandatory`: a message no group queue takes comes back (`basic.return`) and
//! fails its publish, as does a `basic.nack`. A publish whose channel or connection dropped
//! before its confirm arrived is published again on the next channel within
//! `retry_timeout` (at least once: the broker may have kept the first copy), or fails. It is
//! never reported published without a confirm. A publish still unconfirmed after
//! `publish_timeout`, or a send that found no room in the window for that long, fails with
//! `Timeout`.

mod driver;
mod orphans;
mod pending;
mod watched;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use broker_api::completion::{self, Completion};
use broker_api::{Confirmation, Error, ErrorKind, Message, Result};
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use rustc_hash::FxHashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use self::driver::Driver;
use self::orphans::Orphans;
use self::pending::{Pending, Publish};
use crate::channel::{close_channel, scratch_channel};
use crate::error::{self, BACKEND};
use crate::link::Link;
use crate::metadata;
use crate::topology::Topology;

/// How long to wait before opening a channel again after the broker refused to.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// The publishing side of the backend.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    link: Arc<Link>,
    /// The task that runs publishes; absent outside a Tokio runtime, where the caller's
    /// confirmation drives its publish.
    driver: Option<Driver>,
    topology: Arc<Topology>,
    auto_provision: bool,
    window: Arc<Semaphore>,
    window_size: u32,
    max_payload: usize,
    retry_timeout: Duration,
    publish_timeout: Duration,
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
    /// The connection's negotiated largest frame.
    frame_max: usize,
}

impl ConfirmChannel {
    /// Fails a message whose properties do not fit in one frame of this connection: RabbitMQ
    /// would close the whole connection for it (FRAME_ERROR), and every publish again after the
    /// reconnect would close the next one.
    fn check_header_fits(&self, message: &Message) -> Result<()> {
        let size = metadata::header_frame_size(message);
        if size <= self.frame_max {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Rejected,
            format!(
                "the headers and properties of message {} take {size} bytes; AMQP sends them \
                 in one frame, of at most {} bytes on this connection (frame_max)",
                message.id, self.frame_max
            ),
        )
        .backend(BACKEND)
        .operation("publish"))
    }
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
            driver: tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| Driver::start(&runtime, config.publish_timeout)),
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
            max_payload: config.max_message_size,
            retry_timeout: config.retry_timeout,
            publish_timeout: config.publish_timeout,
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
        if let Some(route) = shared.route(topic) {
            if let Some(channel) = route.current() {
                if let Ok(slot) = shared.window.clone().try_acquire_owned() {
                    return completion::ready(
                        shared.publish(route, message, prepared, channel, slot),
                    );
                }
            }
        }
        // The slow path takes its window slot when first polled: a send future kept without
        // being polled holds none, so that closing does not wait for it.
        completion::boxed(shared.clone().send_slowly(topic, message, prepared))
    }

    /// Drops the topic's route and closes its confirm channel, after the topic was deleted
    /// (the topology forgot its exchange and queues as it deleted them).
    pub(crate) async fn drop_route(&self, topic: &str) {
        let Some(route) = self.shared.drop_route(topic) else {
            return;
        };
        if let Some(open) = route.current() {
            close_channel(&open.channel, "topic deleted").await;
        }
    }

    /// Stops new publishes and waits up to `timeout` for pending confirms; those still
    /// pending then fail (`Closed`), as do sends waiting for a window slot. Returns whether
    /// every pending publish was settled.
    pub(crate) async fn close(&self, timeout: Duration) -> bool {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        let acquired =
            tokio::time::timeout(timeout, shared.window.acquire_many(shared.window_size)).await;
        // The drained window's slots are given back only once it is closed: a send waiting
        // for one would otherwise take it and publish while the connection closes.
        shared.window.close();
        let drained = matches!(acquired, Ok(Ok(_)));
        drop(acquired);
        if !drained {
            if let Some(driver) = &shared.driver {
                driver.abandon();
            }
        }
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

    /// The topic's exchange is gone although this process did not delete it: the next publish
    /// opens a new route and declares the exchange again (binding again the group queues
    /// declared here that still exist) or, with auto-provisioning off, checks it.
    fn exchange_lost(&self, topic: &str) {
        self.drop_route(topic);
        self.topology.exchange_lost(topic);
    }

    fn drop_route(&self, topic: &str) -> Option<Arc<Route>> {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic)
    }

    async fn send_slowly(
        self: Arc<Self>,
        topic: &str,
        message: Message,
        prepared: Prepared,
    ) -> Result<Confirmation> {
        let deadline = Instant::now() + self.retry_timeout;
        let route = error::within(deadline, "publish", self.route_or_open(topic, deadline)).await?;
        let waiting = self.window.clone().acquire_owned();
        let permit = tokio::time::timeout(self.publish_timeout, waiting)
            .await
            .map_err(|_| self.window_full(&message))?
            .map_err(|_| error::closed("publish"))?;
        if self.closing.load(Ordering::Acquire) {
            return Err(error::closed("publish"));
        }
        let channel = route.channel(&self, None, deadline).await?;
        self.publish(route, message, prepared, channel, permit)
    }

    /// The error of a send that found no room in the confirm window within `publish_timeout`.
    fn window_full(&self, message: &Message) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "message {} was not sent: for rabbitmq.publish_timeout = {} all \
                 rabbitmq.confirm_window = {} publishes waited for RabbitMQ's confirm (a \
                 resource alarm, or a quorum queue without a majority?)",
                message.id,
                humantime::format_duration(self.publish_timeout),
                self.window_size
            ),
        )
        .backend(BACKEND)
        .operation("publish")
    }

    /// Starts publishing `message` on `channel`, holding window `slot` until it is settled.
    fn publish(
        self: &Arc<Self>,
        route: Arc<Route>,
        message: Message,
        prepared: Prepared,
        channel: Arc<ConfirmChannel>,
        slot: OwnedSemaphorePermit,
    ) -> Result<Confirmation> {
        channel.check_header_fits(&message)?;
        let id = message.id.clone();
        let publish = Publish {
            pending: Pending {
                shared: self.clone(),
                route,
                message,
            },
            prepared,
            channel,
            slot,
        };
        match &self.driver {
            Some(driver) => driver.drive(&id, publish),
            None => Ok(driver::run_in_caller(publish)),
        }
    }

    /// The topic's route, checking or declaring its exchange the first time.
    async fn route_or_open(&self, topic: &str, deadline: Instant) -> Result<Arc<Route>> {
        if let Some(route) = self.route(topic) {
            return Ok(route);
        }
        let session = self.link.session(deadline).await?;
        let channel = scratch_channel(&session.connection).await?;
        let ensured = self.topology.ensure_exchange(&channel, topic).await;
        close_channel(&channel, "done").await;
        if ensured.map_err(|e| e.operation("publish"))? {
            // Declared again after it was lost (or first declared: nothing to bind then).
            let patience = self.link.settings().config.connect_timeout;
            self.topology
                .rebind(&session.connection, topic, patience)
                .await;
        }
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
                        frame_max: session.connection.configuration().frame_max() as usize,
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

#[cfg(test)]
mod tests {
    use super::*;

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
