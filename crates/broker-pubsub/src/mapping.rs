//! The wire conventions: how a [`Message`] becomes a Pub/Sub message and a received Pub/Sub
//! message becomes [`Metadata`].
//!
//! | broker | Pub/Sub |
//! | --- | --- |
//! | payload | `data` |
//! | key | ordering key (empty means none) |
//! | headers | attributes |
//! | message id | attribute `message-id` |
//! | content type | attribute `content-type` |
//!
//! A received message without a `message-id` attribute (published by another program) is
//! delivered with no message id.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use broker_api::{Headers, Key, Message, MessageId, Metadata, Position, PubSubPosition};
use bytes::Bytes;
use google_cloud_pubsub::model::Message as PubsubMessage;

/// The attribute that carries the message id.
pub const MESSAGE_ID_ATTRIBUTE: &str = broker_api::MESSAGE_ID_HEADER;
/// The attribute that carries the content type.
pub const CONTENT_TYPE_ATTRIBUTE: &str = broker_api::CONTENT_TYPE_HEADER;

/// The size the service counts for `message`: data, ordering key and every attribute name and
/// value, the id and content type included.
pub(crate) fn message_size(message: &Message) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    let content_type = message
        .content_type
        .as_ref()
        .map_or(0, |ct| CONTENT_TYPE_ATTRIBUTE.len() + ct.len());
    message.payload.len()
        + message.key.as_deref().map_or(0, str::len)
        + headers
        + MESSAGE_ID_ATTRIBUTE.len()
        + message.id.as_str().len()
        + content_type
}

/// Most attributes a message may carry (headers, id and content type): Pub/Sub's limit.
pub(crate) const MAX_ATTRIBUTES: usize = 100;
/// Longest attribute name, in bytes: Pub/Sub's limit.
pub(crate) const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;
/// Longest attribute value, in bytes: Pub/Sub's limit.
pub(crate) const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest ordering key, in bytes: Pub/Sub's limit.
pub(crate) const MAX_ORDERING_KEY_BYTES: usize = 1024;

/// What of `message` breaks Pub/Sub's limits on attributes and ordering keys, if anything. The
/// service refuses such a message, and with it every message the client batched with it, so
/// it is refused before it is sent.
pub(crate) fn over_limits(message: &Message) -> Option<String> {
    let attributes = message.headers.len() + 1 + usize::from(message.content_type.is_some());
    if attributes > MAX_ATTRIBUTES {
        return Some(format!(
            "it has {attributes} attributes (headers, id and content type); Pub/Sub allows \
             {MAX_ATTRIBUTES}"
        ));
    }
    if let Some(key) = message
        .key
        .as_ref()
        .filter(|k| k.len() > MAX_ORDERING_KEY_BYTES)
    {
        return Some(format!(
            "its key is {} bytes; Pub/Sub ordering keys are at most {MAX_ORDERING_KEY_BYTES}",
            key.len()
        ));
    }
    let id = (MESSAGE_ID_ATTRIBUTE, message.id.as_str());
    let content_type = message
        .content_type
        .as_deref()
        .map(|ct| (CONTENT_TYPE_ATTRIBUTE, ct));
    for (name, value) in message.headers.iter().chain([id]).chain(content_type) {
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Some(format!(
                "a header name is {} bytes; Pub/Sub attribute names are at most \
                 {MAX_ATTRIBUTE_NAME_BYTES}",
                name.len()
            ));
        }
        if name.starts_with("goog") {
            return Some(format!(
                "header {name:?} starts with \"goog\", which Pub/Sub reserves"
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Some(format!(
                "the value of {name:?} is {} bytes; Pub/Sub attribute values are at most \
                 {MAX_ATTRIBUTE_VALUE_BYTES}",
                value.len()
            ));
        }
    }
    None
}

/// The Pub/Sub message published for `message`.
pub(crate) fn to_pubsub(message: &Message) -> PubsubMessage {
    let extra = 1 + usize::from(message.content_type.is_some());
    let mut attributes = HashMap::with_capacity(message.headers.len() + extra);
    // Headers under the wire's names (refused by `Publisher`, possible through `Backend::send`)
    // are left out, as on Kafka: the message's own id and content type win.
    for (name, value) in message.headers.without_wire_names() {
        attributes.insert(name.to_owned(), value.to_owned());
    }
    attributes.insert(
        MESSAGE_ID_ATTRIBUTE.to_owned(),
        message.id.as_str().to_owned(),
    );
    if let Some(content_type) = &message.content_type {
        attributes.insert(CONTENT_TYPE_ATTRIBUTE.to_owned(), content_type.to_string());
    }
    let mut out = PubsubMessage::new();
    out.data = message.payload.clone();
    out.attributes = attributes;
    if let Some(key) = &message.key {
        out.ordering_key = key.as_str().to_owned();
    }
    out
}

/// Payload and metadata of a received message of `topic`.
pub(crate) fn from_pubsub(
    topic: &Arc<str>,
    message: PubsubMessage,
    delivery_attempt: Option<i32>,
) -> (Bytes, Metadata) {
    let PubsubMessage {
        data,
        attributes,
        message_id,
        publish_time,
        ordering_key,
        ..
    } = message;
    let mut metadata = Metadata::new(Arc::clone(topic));
    let mut headers = Headers::new();
    for (name, value) in attributes {
        match name.as_str() {
            MESSAGE_ID_ATTRIBUTE => metadata.message_id = Some(MessageId::from(value)),
            CONTENT_TYPE_ATTRIBUTE => metadata.content_type = Some(Cow::Owned(value)),
            _ => headers.insert(name, value),
        }
    }
    metadata.headers = headers;
    let ordering_key = (!ordering_key.is_empty()).then(|| Key::from(ordering_key));
    metadata.key.clone_from(&ordering_key);
    // A time before 1970 (a service's bug) is left out, as Kafka's records without one are.
    metadata.publish_time = publish_time
        .and_then(|time| SystemTime::try_from(time).ok())
        .filter(|time| *time >= UNIX_EPOCH);
    metadata.attempt = delivery_attempt
        .filter(|attempt| *attempt > 0)
        .and_then(|attempt| u32::try_from(attempt).ok());
    metadata.position = Position::PubSub(Box::new(PubSubPosition {
        message_id,
        ordering_key,
    }));
    (data, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_messages_follow_the_wire_conventions() {
        let message = Message::new("hello")
            .with_key("customer-7")
            .with_header("trace", "abc")
            .with_id("id-1")
            .with_content_type("text/plain");
        let out = to_pubsub(&message);
        assert_eq!(out.data, Bytes::from("hello"));
        assert_eq!(out.ordering_key, "customer-7");
        assert_eq!(out.attributes.get("trace").map(String::as_str), Some("abc"));
        assert_eq!(
            out.attributes.get("message-id").map(String::as_str),
            Some("id-1")
        );
        assert_eq!(
            out.attributes.get("content-type").map(String::as_str),
            Some("text/plain")
        );
        assert_eq!(out.attributes.len(), 3);
        assert_eq!(
            message_size(&message),
            5 + 10 + 8 + 10 + 4 + 12 + 10,
            "data + key + header + message-id + content-type"
        );
    }

    #[test]
    fn messages_without_key_or_content_type() {
        let out = to_pubsub(&Message::new(Bytes::new()).with_id("x"));
        assert!(out.ordering_key.is_empty());
        assert!(out.data.is_empty());
        assert_eq!(out.attributes.len(), 1);
    }

    #[test]
    fn headers_under_wire_names_do_not_replace_the_fields() {
        let message = Message::new(Bytes::new())
            .with_id("real")
            .with_header(MESSAGE_ID_ATTRIBUTE, "spoofed")
            .with_header(CONTENT_TYPE_ATTRIBUTE, "application/evil");
        let out = to_pubsub(&message);
        assert_eq!(out.attributes.len(), 1, "{:?}", out.attributes);
        assert_eq!(out.attributes[MESSAGE_ID_ATTRIBUTE], "real");
    }

    #[test]
    fn incoming_messages_fill_the_metadata() {
        let topic: Arc<str> = Arc::from("orders");
        let publish_time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut message = PubsubMessage::new()
            .set_data("payload")
            .set_message_id("server-42")
            .set_ordering_key("k")
            .set_publish_time(google_cloud_wkt::Timestamp::try_from(publish_time).unwrap());
        message.attributes = [
            ("message-id", "id-1"),
            ("content-type", "application/json"),
            ("trace", "abc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (payload, metadata) = from_pubsub(&topic, message, Some(3));
        assert_eq!(payload, Bytes::from("payload"));
        assert_eq!(&*metadata.topic, "orders");
        assert_eq!(metadata.key.as_deref(), Some("k"));
        assert_eq!(metadata.message_id, Some(MessageId::from("id-1")));
        assert_eq!(metadata.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            metadata.headers.iter().collect::<Vec<_>>(),
            [("trace", "abc")]
        );
        assert_eq!(metadata.publish_time, Some(publish_time));
        assert_eq!(metadata.attempt, Some(3));
        assert_eq!(
            metadata.position,
            Position::PubSub(Box::new(PubSubPosition {
                message_id: "server-42".into(),
                ordering_key: Some("k".into())
            }))
        );
    }

    #[test]
    fn a_publish_time_before_1970_is_left_out() {
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(5);
        let message = PubsubMessage::new()
            .set_message_id("server-1")
            .set_publish_time(google_cloud_wkt::Timestamp::try_from(before).unwrap());
        let (_, metadata) = from_pubsub(&Arc::from("t"), message, None);
        assert_eq!(metadata.publish_time, None);
    }

    #[test]
    fn messages_over_the_attribute_limits_are_named() {
        let within = Message::new("x")
            .with_key("k".repeat(MAX_ORDERING_KEY_BYTES))
            .with_header("n".repeat(MAX_ATTRIBUTE_NAME_BYTES), "v".repeat(1024))
            .with_content_type("application/json");
        assert_eq!(over_limits(&within), None);
        let refused = |message: Message, expected: &str| {
            let problem = over_limits(&message).expect("over a limit");
            assert!(problem.contains(expected), "{problem}");
        };
        refused(
            Message::new("x").with_key("k".repeat(MAX_ORDERING_KEY_BYTES + 1)),
            "its key is 1025 bytes",
        );
        refused(
            Message::new("x").with_header("baggage", "v".repeat(2048)),
            "the value of \"baggage\" is 2048 bytes",
        );
        refused(
            Message::new("x").with_header("n".repeat(257), "v"),
            "a header name is 257 bytes",
        );
        refused(
            Message::new("x").with_header("goog-trace", "v"),
            "header \"goog-trace\" starts with \"goog\"",
        );
        refused(
            Message::new("x").with_id("i".repeat(1025)),
            "the value of \"message-id\" is 1025 bytes",
        );
        let many = (0..100).fold(Message::new("x"), |m, i| {
            m.with_header(format!("h{i}"), "v")
        });
        refused(many, "it has 101 attributes");
    }

    #[test]
    fn foreign_messages_without_id_are_delivered() {
        let topic: Arc<str> = Arc::from("orders");
        let message = PubsubMessage::new()
            .set_data("x")
            .set_message_id("server-1");
        let (_, metadata) = from_pubsub(&topic, message, None);
        assert_eq!(metadata.message_id, None);
        assert_eq!(metadata.key, None);
        assert_eq!(metadata.attempt, None);
        assert!(metadata.headers.is_empty());
        assert_eq!(
            metadata.position,
            Position::PubSub(Box::new(PubSubPosition {
                message_id: "server-1".into(),
                ordering_key: None
            }))
        );
    }
}
