//! Incoming messages: payload, metadata and the handle that acknowledges them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::acker::Acker;
use crate::completion::Completion;
use crate::key::Key;
use crate::message::{Headers, MessageId};

/// Where a delivery sits in the broker, in the broker's own terms.
///
/// Sixteen bytes: the variants with text keep it boxed, so that every delivery, metadata and
/// receipt stays small to move on the per-message paths of the backends that have none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// The in-memory backend: the message's index in its topic.
    Memory {
        /// Zero-based index in the topic.
        offset: u64,
    },
    /// Kafka: partition and offset.
    Kafka {
        /// The partition.
        partition: i32,
        /// The offset in the partition.
        offset: i64,
    },
    /// RabbitMQ (AMQP 0-9-1).
    Amqp(Box<AmqpPosition>),
    /// Google Cloud Pub/Sub.
    PubSub(Box<PubSubPosition>),
    /// The backend does not report a position.
    Unknown,
}

/// Where a RabbitMQ delivery sits: [`Position::Amqp`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AmqpPosition {
    /// The channel's delivery tag.
    pub delivery_tag: u64,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
}

/// Where a Pub/Sub message sits: [`Position::PubSub`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PubSubPosition {
    /// The server-assigned message id.
    pub message_id: String,
    /// The ordering key, when the message has one.
    pub ordering_key: Option<Key>,
}

/// What a consumer knows about a delivered message besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The topic it was published to.
    pub topic: Arc<str>,
    /// The partition/ordering key.
    pub key: Option<Key>,
    /// Application headers (the wire's id and content-type entries are moved to their fields).
    pub headers: Headers,
    /// The message id; absent when another program published without one.
    pub message_id: Option<MessageId>,
    /// The payload's MIME type, when known.
    pub content_type: Option<Cow<'static, str>>,
    /// When the message was published, when the broker says.
    pub publish_time: Option<SystemTime>,
    /// Which delivery this is, starting at 1, when the broker counts.
    pub attempt: Option<u32>,
    /// The broker's own position of the message.
    pub position: Position,
}

impl Metadata {
    /// Metadata for a message on `topic` with nothing else known.
    pub fn new(topic: Arc<str>) -> Self {
        Metadata {
            topic,
            key: None,
            headers: Headers::new(),
            message_id: None,
            content_type: None,
            publish_time: None,
            attempt: None,
            position: Position::Unknown,
        }
    }

    /// The message id as text for errors and logs: `(no id)` when the message has none.
    pub(crate) fn id_text(&self) -> &str {
        self.message_id
            .as_ref()
            .map_or("(no id)", MessageId::as_str)
    }
}

/// A message received from a subscription, not yet decoded, with its acknowledgement handle.
pub struct Delivery {
    /// The payload as published.
    pub payload: Bytes,
    /// Topic, key, headers, ids and the broker position.
    pub metadata: Metadata,
    acker: Acker,
}

impl Delivery {
    /// A delivery that settles through `acker`.
    pub fn new(payload: Bytes, metadata: Metadata, acker: Acker) -> Self {
        Delivery {
            payload,
            metadata,
            acker,
        }
    }

    /// Acknowledges the message; resolves when the backend has recorded it. Fails when the
    /// acknowledgement cannot count, the delivery being no longer [live](Self::is_live) (a
    /// `Connection` or `Closed` error): the broker delivers the message again.
    pub fn ack(self) -> Completion<'static, ()> {
        self.acker.ack()
    }

    /// Rejects the message so that it is delivered again.
    pub fn nack(self) -> Completion<'static, ()> {
        self.acker.nack()
    }

    /// Whether settling it still counts (see [`Acker::is_live`]): false once the backend will
    /// deliver the message again whatever happens here (a revoked Kafka partition, a closed
    /// RabbitMQ channel, an ended Pub/Sub streaming pull). Work on a delivery that is no longer
    /// live is done again when the message comes back.
    pub fn is_live(&self) -> bool {
        self.acker.is_live()
    }

    /// Takes the acknowledgement handle, leaving one that is settled already: a runner settles
    /// a delivery it keeps in place without moving all of it.
    pub(crate) fn take_acker(&mut self) -> Acker {
        std::mem::replace(&mut self.acker, Acker::settled())
    }

    /// Splits the delivery into payload, metadata and acknowledgement handle.
    pub fn into_parts(self) -> (Bytes, Metadata, Acker) {
        (self.payload, self.metadata, self.acker)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("metadata", &self.metadata)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_stays_small() {
        // Every delivery, metadata and receipt carries one; the text variants are boxed.
        assert!(std::mem::size_of::<Position>() <= 16);
    }
}
