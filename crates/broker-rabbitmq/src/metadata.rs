//! The wire mapping of messages: library [`Message`]s to AMQP properties, and AMQP deliveries
//! back to [`Metadata`].
//!
//! | library | AMQP 0-9-1 |
//! | --- | --- |
//! | topic | exchange |
//! | key | routing key (`""` when absent) |
//! | headers | `headers` table, long-string values |
//! | message id | `message_id` property |
//! | content type | `content_type` property |
//! | timestamp | `timestamp` property (seconds) |
//! | — | `delivery_mode` 2 (persistent) |

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_api::{
    AmqpPosition, Error, ErrorKind, Headers, Key, Message, MessageId, Metadata, Position, Result,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::error::BACKEND;

/// `delivery_mode` of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// The header quorum queues set on redelivered messages: how many times it was delivered before.
pub(crate) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// A short string (at most 255 bytes, the protocol's limit), or a `Rejected` error naming `what`.
pub(crate) fn short_string(what: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| {
        Error::new(
            ErrorKind::Rejected,
            format!(
                "the {what} is {} bytes long; AMQP allows at most 255",
                value.len()
            ),
        )
        .backend(BACKEND)
        .operation("publish")
    })
}

/// The routing key of `message`: its key, or `""` (which the group bindings `#` still match).
pub(crate) fn routing_key(message: &Message) -> Result<ShortString> {
    match &message.key {
        Some(key) => short_string("message key (the routing key)", key),
        None => Ok(ShortString::default()),
    }
}

/// The AMQP properties of `message`: id, content type, timestamp, headers, persistent.
/// [`header_frame_size`] counts what this writes: change both together.
pub(crate) fn properties(message: &Message) -> Result<BasicProperties> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short_string("message id", message.id.as_str())?)
        .with_timestamp(seconds_since_epoch(message.timestamp));
    if let Some(content_type) = &message.content_type {
        properties = properties.with_content_type(short_string("content type", content_type)?);
    }
    if !message.headers.is_empty() {
        let mut table = FieldTable::default();
        for (name, value) in message.headers.iter() {
            table.insert(
                short_string("header name", name)?,
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
        properties = properties.with_headers(table);
    }
    Ok(properties)
}

/// The size of the content header frame that carries `message`'s [`properties`]: AMQP sends
/// them in that one frame, which may not exceed the connection's negotiated `frame_max`.
pub(crate) fn header_frame_size(message: &Message) -> usize {
    /// Frame type, channel, size and frame end.
    const FRAME: usize = 1 + 2 + 4 + 1;
    /// Class id, weight, body size and property flags.
    const CONTENT_HEADER: usize = 2 + 2 + 8 + 2;
    /// Delivery mode and timestamp.
    const FIXED_PROPERTIES: usize = 1 + 8;
    let short_string = |text: &str| 1 + text.len();
    let mut size = FRAME + CONTENT_HEADER + FIXED_PROPERTIES + short_string(message.id.as_str());
    if let Some(content_type) = &message.content_type {
        size += short_string(content_type);
    }
    if !message.headers.is_empty() {
        // The table's length, then each name, the value's type and the long string.
        size += 4 + message
            .headers
            .iter()
            .map(|(name, value)| short_string(name) + 1 + 4 + value.len())
            .sum::<usize>();
    }
    size
}

fn seconds_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What a delivery says besides its payload, in the library's terms.
pub(crate) struct DeliveryFields<'a> {
    /// The exchange it was published to.
    pub(crate) exchange: &'a str,
    /// The routing key it was published with.
    pub(crate) routing_key: &'a str,
    /// The channel's delivery tag.
    pub(crate) delivery_tag: u64,
    /// Whether RabbitMQ delivered it before.
    pub(crate) redelivered: bool,
    /// Its properties.
    pub(crate) properties: &'a BasicProperties,
}

/// The metadata of a delivery read by a subscription of `topic`.
///
/// `topic` is reused when the exchange is the topic itself (or the default exchange, for
/// messages another program sent straight to the group queue), so the common case does not
/// allocate a name. With `counts_deliveries` (quorum queues) the attempt comes from
/// `x-delivery-count`; otherwise a first delivery is attempt 1 and a redelivery is unknown.
pub(crate) fn metadata(
    topic: &Arc<str>,
    fields: &DeliveryFields<'_>,
    counts_deliveries: bool,
) -> Metadata {
    let properties = fields.properties;
    let topic = if fields.exchange.is_empty() || fields.exchange == &**topic {
        topic.clone()
    } else {
        Arc::from(fields.exchange)
    };
    let mut delivery_count = None;
    let mut headers = Headers::new();
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            if counts_deliveries && name.as_str() == DELIVERY_COUNT_HEADER {
                delivery_count = integer(value);
                continue;
            }
            if let Some(text) = header_text(value) {
                headers.insert(name.as_str(), text);
            }
        }
    }
    // A first delivery is attempt 1 whatever its headers say: a message shovelled or re-driven
    // may carry another queue's count. A count that is not a delivery count (negative) says
    // nothing.
    let attempt = match delivery_count.and_then(|count| u32::try_from(count).ok()) {
        _ if !fields.redelivered => Some(1),
        Some(count) => Some(count.saturating_add(1)),
        None => None,
    };
    Metadata {
        topic,
        key: (!fields.routing_key.is_empty()).then(|| Key::from(fields.routing_key)),
        headers,
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| MessageId::from(id.as_str())),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|content_type| content_type_of(content_type.as_str())),
        // Set by whoever published: a value past what `SystemTime` holds is left out, not a
        // panic on every member of the group.
        publish_time: properties
            .timestamp()
            .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds))),
        attempt,
        position: Position::Amqp(Box::new(AmqpPosition {
            delivery_tag: fields.delivery_tag,
            redelivered: fields.redelivered,
            exchange: fields.exchange.to_owned(),
            routing_key: fields.routing_key.to_owned(),
        })),
    }
}

/// The content type, without allocating for the library's own codecs' types.
fn content_type_of(text: &str) -> Cow<'static, str> {
    const COMMON: [&str; 4] = [
        "application/json",
        "text/plain; charset=utf-8",
        "application/octet-stream",
        "text/plain",
    ];
    match COMMON.iter().find(|common| **common == text) {
        Some(common) => Cow::Borrowed(common),
        None => Cow::Owned(text.to_owned()),
    }
}

/// A header value as text: strings as they are (invalid UTF-8 replaced), numbers and booleans
/// written out; tables, arrays and voids have no text form and are left out.
fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::ByteArray(bytes) => String::from_utf8_lossy(bytes.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(d) => d.to_string(),
        AMQPValue::DecimalValue(d) => format!("{}e-{}", d.value, d.scale),
        other => integer(other)?.to_string(),
    })
}

fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        AMQPValue::Timestamp(n) => n.into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(properties: &'a BasicProperties, redelivered: bool) -> DeliveryFields<'a> {
        DeliveryFields {
            exchange: "orders",
            routing_key: "user-1",
            delivery_tag: 7,
            redelivered,
            properties,
        }
    }

    #[test]
    fn messages_map_to_properties_and_back() {
        let message = Message::new("x")
            .with_key("user-1")
            .with_header("trace-id", "abc")
            .with_header("x-empty", "")
            .with_content_type("application/json")
            .with_id("id-1");
        let properties = properties(&message).unwrap();
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(routing_key(&message).unwrap().as_str(), "user-1");

        let topic: Arc<str> = Arc::from("orders");
        let meta = metadata(&topic, &fields(&properties, false), true);
        assert!(Arc::ptr_eq(&meta.topic, &topic), "the topic name is shared");
        assert_eq!(meta.key.as_deref(), Some("user-1"));
        assert_eq!(meta.headers.get("trace-id"), Some("abc"));
        assert_eq!(meta.headers.get("x-empty"), Some(""));
        assert_eq!(meta.headers.len(), 2);
        assert_eq!(meta.message_id, Some(MessageId::from("id-1")));
        assert_eq!(meta.content_type.as_deref(), Some("application/json"));
        let published = meta.publish_time.unwrap();
        let skew = message
            .timestamp
            .duration_since(published)
            .unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "seconds precision: {skew:?}");
        assert_eq!(meta.attempt, Some(1));
        assert_eq!(
            meta.position,
            Position::Amqp(Box::new(AmqpPosition {
                delivery_tag: 7,
                redelivered: false,
                exchange: "orders".into(),
                routing_key: "user-1".into()
            }))
        );
    }

    #[test]
    fn keyless_messages_use_the_empty_routing_key() {
        let message = Message::new("x");
        assert_eq!(routing_key(&message).unwrap().as_str(), "");
        let properties = properties(&message).unwrap();
        assert!(properties.headers().is_none(), "no table without headers");
        let mut f = fields(&properties, false);
        f.routing_key = "";
        let meta = metadata(&Arc::from("orders"), &f, false);
        assert_eq!(meta.key, None);
    }

    #[test]
    fn foreign_messages_without_id_or_properties_are_mapped() {
        let properties = BasicProperties::default();
        let mut f = fields(&properties, true);
        f.exchange = "";
        let topic: Arc<str> = Arc::from("orders");
        let meta = metadata(&topic, &f, false);
        assert_eq!(meta.message_id, None);
        assert_eq!(meta.content_type, None);
        assert_eq!(meta.publish_time, None);
        assert_eq!(meta.attempt, None, "a classic redelivery has no count");
        assert_eq!(&*meta.topic, "orders");
    }

    #[test]
    fn a_timestamp_out_of_range_is_left_out() {
        let properties = BasicProperties::default().with_timestamp(u64::MAX);
        let meta = metadata(&Arc::from("orders"), &fields(&properties, false), false);
        assert_eq!(meta.publish_time, None);
    }

    #[test]
    fn quorum_delivery_count_becomes_the_attempt() {
        let mut table = FieldTable::default();
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        table.insert("retries".into(), AMQPValue::LongInt(3));
        table.insert("ok".into(), AMQPValue::Boolean(true));
        table.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let properties = BasicProperties::default().with_headers(table);
        let meta = metadata(&Arc::from("orders"), &fields(&properties, true), true);
        assert_eq!(meta.attempt, Some(3));
        assert_eq!(meta.headers.get(DELIVERY_COUNT_HEADER), None);
        assert_eq!(meta.headers.get("retries"), Some("3"));
        assert_eq!(meta.headers.get("ok"), Some("true"));
        assert_eq!(meta.headers.get("nested"), None);
        // Classic queues do not count: the header, if any, is an ordinary one.
        let meta = metadata(&Arc::from("orders"), &fields(&properties, true), false);
        assert_eq!(meta.attempt, None);
        assert_eq!(meta.headers.get(DELIVERY_COUNT_HEADER), Some("2"));
    }

    #[test]
    fn a_carried_or_negative_count_is_not_the_attempt() {
        let with_count = |count: i64| {
            let mut table = FieldTable::default();
            table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(count));
            BasicProperties::default().with_headers(table)
        };
        // A first delivery carrying another queue's count (shovelled, re-driven).
        let meta = metadata(&Arc::from("orders"), &fields(&with_count(5), false), true);
        assert_eq!(meta.attempt, Some(1));
        let meta = metadata(&Arc::from("orders"), &fields(&with_count(-1), false), true);
        assert_eq!(meta.attempt, Some(1));
        // Redelivered with a count that is not one: unknown, not u32::MAX.
        let meta = metadata(&Arc::from("orders"), &fields(&with_count(-1), true), true);
        assert_eq!(meta.attempt, None);
    }

    #[test]
    fn over_long_names_are_refused_not_panicked() {
        let long = "k".repeat(256);
        let err = routing_key(&Message::new("x").with_key(long.clone())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.to_string().contains("routing key"), "{err}");
        let err = properties(&Message::new("x").with_header(long, "v")).unwrap_err();
        assert!(err.to_string().contains("header name"), "{err}");
        assert!(routing_key(&Message::new("x").with_key("k".repeat(255))).is_ok());
    }
}
