//! Exchanges, group queues and bindings: declared once, cached, declared again after a
//! reconnect, deleted on request.
//!
//! A topic is a durable `topic` exchange named after it. A group is a durable queue
//! [`group_resource`]`(topic, group)` (`<topic>.<group>`) bound to it with `#`, so that every
//! routing key (every message key, and the empty key) reaches every group. Group queues are
//! quorum queues by default (`x-queue-type`) and have `x-single-active-consumer` set, so one
//! member of a group consumes at a time and same-key messages stay in order.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use broker_api::naming::group_resource;
use broker_api::{Error, ErrorKind, Result, TopicSpec};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};

use crate::channel::{close_channel, scratch_channel};
use crate::config::QueueType;
use crate::error::{self, BACKEND};

use self::declarations::{bind, declare_exchange, missing_or};

mod declarations;
mod deletion;

/// What this process knows exists on the broker.
#[derive(Default)]
struct Known {
    /// Exchanges this process declared: declared again after a reconnect.
    declared_exchanges: HashSet<String>,
    /// Exchanges found to exist without declaring them (auto-provisioning off).
    verified_exchanges: HashSet<String>,
    /// Group queues this process declared, with their topic: declared (and bound) again after
    /// a reconnect, deleted with their topic.
    declared_queues: HashMap<String, String>,
    /// Group queues found to exist, with their topic.
    verified_queues: HashMap<String, String>,
    /// Topics this process is deleting: their subscriptions, cancelled by the broker as their
    /// queues go, end instead of declaring them again.
    deleting: HashSet<String>,
    /// Topics a subscription of which RabbitMQ cancelled (its queue deleted behind this
    /// process's back, maybe with the exchange and every binding): the next subscription to
    /// consume again binds the topic's other known queues again too.
    bindings_in_doubt: HashSet<String>,
}

/// The topology cache and the declarations behind it.
pub(crate) struct Topology {
    queue_type: QueueType,
    auto_provision: bool,
    known: Mutex<Known>,
    /// Held while this process changes the topology: declaring a topic or a group,
    /// re-declaring after a reconnect, deleting a topic. Each link re-declares on its own
    /// connection, and one re-declaring from a list taken before a deletion would bring the
    /// deleted topic back; a group declared while its topic is deleted could be left unbound
    /// (its queue declared after the deletion listed the topic's queues, bound to the exchange
    /// the deletion then removed).
    changing: tokio::sync::Mutex<()>,
}

impl Topology {
    /// Whether missing exchanges and group queues are declared.
    pub(crate) fn auto_provision(&self) -> bool {
        self.auto_provision
    }

    /// A cache that declares group queues of `queue_type`; with `auto_provision` off, topics
    /// and groups are only checked, never created, on first use.
    pub(crate) fn new(queue_type: QueueType, auto_provision: bool) -> Self {
        Topology {
            queue_type,
            auto_provision,
            known: Mutex::new(Known::default()),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether group queues count deliveries (quorum queues).
    pub(crate) fn counts_deliveries(&self) -> bool {
        self.queue_type == QueueType::Quorum
    }

    /// The queue holding `group`'s messages of `topic`, checked against AMQP's name limit.
    pub(crate) fn queue_name(topic: &str, group: &str) -> Result<ShortString> {
        let name = group_resource(topic, group);
        ShortString::try_new(name.as_str()).map_err(|_| {
            Error::config(format!(
                "the queue name {name:?} of group {group:?} on topic {topic:?} is longer than \
                 AMQP's 255 bytes: use shorter topic or group names"
            ))
            .backend(BACKEND)
        })
    }

    /// Makes sure the exchange of `topic` exists before publishing to it: declares it with
    /// auto-provisioning on, checks it (a `NotFound` error when missing) with it off. Returns
    /// whether it declared it now.
    ///
    /// `channel` is a scratch channel: a failed check closes it.
    pub(crate) async fn ensure_exchange(&self, channel: &Channel, topic: &str) -> Result<bool> {
        {
            let known = self.known();
            if known.declared_exchanges.contains(topic) || known.verified_exchanges.contains(topic)
            {
                return Ok(false);
            }
        }
        if self.auto_provision {
            declare_exchange(channel, topic, false).await?;
            self.known().declared_exchanges.insert(topic.to_owned());
            Ok(true)
        } else {
            declare_exchange(channel, topic, true).await?;
            self.known().verified_exchanges.insert(topic.to_owned());
            Ok(false)
        }
    }

    /// Makes sure `group`'s queue on `topic` exists before consuming from it: declares the
    /// exchange, the queue and the binding with auto-provisioning on (idempotent, also when
    /// cached, since a restarted broker may have lost a queue), checks the queue with it off.
    pub(crate) async fn ensure_group(
        &self,
        channel: &Channel,
        topic: &str,
        group: &str,
    ) -> Result<ShortString> {
        let queue = Self::queue_name(topic, group)?;
        let _changing = self.changing.lock().await;
        self.check_owner(queue.as_str(), topic, "subscribe")?;
        if self.auto_provision {
            self.declare_exchange(channel, topic).await?;
            self.declare_bound_queue(channel, topic, &queue).await?;
        } else {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.clone(), options, FieldTable::default())
                .await
                .map_err(|e| {
                    missing_or(
                        e,
                        "group",
                        &format!("group {group:?} of topic {topic:?} (queue {queue})"),
                    )
                })?;
            self.known()
                .verified_queues
                .insert(queue.to_string(), topic.to_owned());
        }
        Ok(queue)
    }

    /// Creates the topic and its groups when they do not exist (always, whatever the
    /// auto-provisioning setting: this is the explicit way to create them).
    pub(crate) async fn ensure_topic(&self, channel: &Channel, spec: &TopicSpec) -> Result<()> {
        let queues = spec
            .groups
            .iter()
            .map(|group| Self::queue_name(&spec.name, group))
            .collect::<Result<Vec<_>>>()?;
        let _changing = self.changing.lock().await;
        for queue in &queues {
            self.check_owner(queue.as_str(), &spec.name, "ensure topic")?;
        }
        self.declare_exchange(channel, &spec.name).await?;
        for queue in &queues {
            self.declare_bound_queue(channel, &spec.name, queue).await?;
        }
        Ok(())
    }

    /// Declares the exchange of `topic` and remembers it.
    async fn declare_exchange(&self, channel: &Channel, topic: &str) -> Result<()> {
        declare_exchange(channel, topic, false).await?;
        self.known().declared_exchanges.insert(topic.to_owned());
        Ok(())
    }

    /// Declares `queue`, binds it to the (declared) exchange of `topic` and remembers it.
    async fn declare_bound_queue(
        &self,
        channel: &Channel,
        topic: &str,
        queue: &ShortString,
    ) -> Result<()> {
        self.declare_queue(channel, queue).await?;
        bind(channel, queue, topic).await?;
        self.known()
            .declared_queues
            .insert(queue.to_string(), topic.to_owned());
        Ok(())
    }

    async fn declare_queue(&self, channel: &Channel, queue: &ShortString) -> Result<()> {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(self.queue_type.as_str())),
        );
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.clone(), options, arguments)
            .await
            .map(drop)
            .map_err(|e| {
                error::from_lapin(
                    "declare queue",
                    format!(
                        "cannot declare the durable {} queue {queue} (if it exists with other \
                         arguments, delete it or set rabbitmq.queue_type to match)",
                        self.queue_type.as_str()
                    ),
                    e,
                )
            })
    }

    /// Declares everything this process declared before, on a new connection. Each
    /// declaration may take `patience` (however many there are, they get as long as they need
    /// while RabbitMQ answers). One refused, or not answered in time, is logged and skipped
    /// (see [`skip_failed`]); the whole fails only when the connection is gone or RabbitMQ
    /// answers nothing at all.
    pub(crate) async fn redeclare(
        &self,
        connection: &Connection,
        patience: Duration,
    ) -> Result<()> {
        let deadline = || tokio::time::Instant::now() + patience;
        let _turn = self.changing.lock().await;
        let (exchanges, queues) = {
            let known = self.known();
            let exchanges: Vec<String> = known.declared_exchanges.iter().cloned().collect();
            let queues: Vec<(String, String)> = known
                .declared_queues
                .iter()
                .map(|(queue, topic)| (queue.clone(), topic.clone()))
                .collect();
            (exchanges, queues)
        };
        if exchanges.is_empty() && queues.is_empty() {
            return Ok(());
        }
        // A declaration the broker refuses (a queue changed by someone else) closes the channel
        // and is logged; it must not keep the connection from coming back.
        let mut channel = error::within(deadline(), "connect", scratch_channel(connection)).await?;
        for exchange in &exchanges {
            let declaring = declare_exchange(&channel, exchange, false);
            if let Err(e) = error::within(deadline(), "connect", declaring).await {
                channel = skip_failed(connection, e, patience).await?;
            }
        }
        for (queue, topic) in &queues {
            let queue = ShortString::from(queue.as_str());
            let declaring = async {
                self.declare_queue(&channel, &queue).await?;
                bind(&channel, &queue, topic).await
            };
            if let Err(e) = error::within(deadline(), "connect", declaring).await {
                channel = skip_failed(connection, e, patience).await?;
            }
        }
        close_channel(&channel, "done").await;
        tracing::debug!(
            exchanges = exchanges.len(),
            queues = queues.len(),
            "declared the known topology again"
        );
        Ok(())
    }

    /// Binds again the group queues of `topic` this process declared, after its exchange was
    /// deleted behind this process's back and declared again (the bindings went with it).
    /// Queues deleted too are not created again here (someone removed the topic), but stay
    /// known: a subscription still consuming one declares it again when RabbitMQ cancels its
    /// consumer, and so does the next reconnect. Best effort: a binding that fails is logged;
    /// opening a channel may take `patience`.
    pub(crate) async fn rebind(&self, connection: &Connection, topic: &str, patience: Duration) {
        let queues = self.declared_queues_of(topic);
        if queues.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + patience;
        let opening = error::within(deadline, "open channel", scratch_channel(connection));
        let Ok(mut channel) = opening.await else {
            return;
        };
        for queue in queues {
            let Err(e) = bind(&channel, &queue, topic).await else {
                continue;
            };
            tracing::warn!(%queue, topic, error = %e,
                "group queue not bound again to its re-declared exchange (deleted too?)");
            match skip_failed(connection, e, patience).await {
                Ok(fresh) => channel = fresh,
                Err(_) => return,
            }
        }
        close_channel(&channel, "done").await;
    }

    /// Notes that the bindings of `topic` may be gone (see `Known::bindings_in_doubt`).
    pub(crate) fn doubt_bindings(&self, topic: &str) {
        self.known().bindings_in_doubt.insert(topic.to_owned());
    }

    /// Whether the bindings of `topic` were in doubt; clears it.
    pub(crate) fn take_doubt(&self, topic: &str) -> bool {
        self.known().bindings_in_doubt.remove(topic)
    }

    /// Refuses `queue` for `topic` when this process knows it as the queue of a group of
    /// another topic: queues are named `<topic>.<group>`, so `X.a`/`b` and `X`/`a.b` share one,
    /// which would then be bound to both exchanges and hold both topics' messages. AMQP cannot
    /// list a queue's bindings: a queue another process bound to another topic goes unnoticed.
    fn check_owner(&self, queue: &str, topic: &str, operation: &'static str) -> Result<()> {
        let known = self.known();
        let owner = known
            .declared_queues
            .get(queue)
            .or_else(|| known.verified_queues.get(queue));
        match owner {
            Some(owner) if owner != topic => Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "queue {queue} for topic {topic} holds a group of topic {owner}: queues are \
                     named <topic>.<group>, so this topic and group collide with another pair; \
                     choose another group name"
                ),
            )
            .backend(BACKEND)
            .operation(operation)),
            _ => Ok(()),
        }
    }

    /// Whether this process knows the group queue `queue` of `topic` (declared or checked it,
    /// and is not deleting, nor deleted, its topic).
    pub(crate) fn knows_queue(&self, topic: &str, queue: &str) -> bool {
        let known = self.known();
        !known.deleting.contains(topic)
            && (known.declared_queues.contains_key(queue)
                || known.verified_queues.contains_key(queue))
    }

    /// The group queues of `topic` this process declared.
    fn declared_queues_of(&self, topic: &str) -> Vec<ShortString> {
        self.known()
            .declared_queues
            .iter()
            .filter(|(_, t)| t.as_str() == topic)
            .map(|(queue, _)| ShortString::from(queue.as_str()))
            .collect()
    }

    /// The topic's exchange was found missing (deleted behind this process's back): it is
    /// declared, or checked, again on next use; the group queues declared here are kept, to be
    /// bound again.
    pub(crate) fn exchange_lost(&self, topic: &str) {
        let mut known = self.known();
        known.declared_exchanges.remove(topic);
        known.verified_exchanges.remove(topic);
    }

    /// Forgets the topic's exchange and queues (deleted by this process).
    pub(crate) fn forget_topic(&self, topic: &str) {
        let mut known = self.known();
        known.declared_exchanges.remove(topic);
        known.verified_exchanges.remove(topic);
        known.declared_queues.retain(|_, t| t != topic);
        known.verified_queues.retain(|_, t| t != topic);
    }
}

/// After a re-declaration RabbitMQ refused (it closes the channel), or did not answer within
/// `patience` (a quorum queue that lost the majority of its members, say): logs it and opens a
/// fresh channel for the next one, so that one resource cannot keep the connection, and every
/// topic on it, from coming back. The subscription of a skipped queue finds out when it
/// consumes again. Gives up when the connection itself is gone, or when RabbitMQ does not
/// answer the fresh channel's opening within `patience` either: it answers nothing at all.
async fn skip_failed(connection: &Connection, e: Error, patience: Duration) -> Result<Channel> {
    if !connection.status().connected() {
        return Err(e);
    }
    tracing::warn!(error = %e, "declaring the known topology again failed for one resource; skipped");
    let deadline = tokio::time::Instant::now() + patience;
    error::within(deadline, "open channel", scratch_channel(connection)).await
}
