//! Outgoing messages, headers and message ids.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arrayvec::ArrayString;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;

/// A message id: unique per message, kept across redeliveries, generated when absent.
///
/// On the wire it is the `message-id` header (Kafka), the `message_id` property (RabbitMQ) or the
/// `message-id` attribute (Pub/Sub). Ids of up to 40 bytes (generated UUIDs among them) are kept
/// inline, so making and cloning one does not allocate.
#[derive(Clone)]
pub struct MessageId(Repr);

const INLINE_ID: usize = 40;

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE_ID>),
    Shared(Arc<str>),
}

impl MessageId {
    /// A new random id (UUID v4, hyphenated, lower case).
    pub fn random() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        MessageId::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(text) => text,
            Repr::Shared(text) => text,
        }
    }
}

impl From<&str> for MessageId {
    fn from(value: &str) -> Self {
        match ArrayString::from(value) {
            Ok(inline) => MessageId(Repr::Inline(inline)),
            Err(_) => MessageId(Repr::Shared(Arc::from(value))),
        }
    }
}

impl From<String> for MessageId {
    fn from(value: String) -> Self {
        MessageId::from(value.as_str())
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The wire name of the message id: a Kafka header, a Pub/Sub attribute.
pub const MESSAGE_ID_HEADER: &str = "message-id";
/// The wire name of the content type: a Kafka header, a Pub/Sub attribute.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// Whether a header name is one of the wire's ([`MESSAGE_ID_HEADER`], [`CONTENT_TYPE_HEADER`]).
fn is_wire_name(name: &str) -> bool {
    name == MESSAGE_ID_HEADER || name == CONTENT_TYPE_HEADER
}

/// Application headers: ordered name/value pairs with UTF-8 values.
///
/// Names are case-sensitive; [`Headers::insert`] replaces an existing value. Most messages carry
/// none, and an empty set does not allocate. [`MESSAGE_ID_HEADER`] and [`CONTENT_TYPE_HEADER`]
/// are the wire's: a message published with a header of either name is refused (set
/// [`Message::with_id`] and [`Message::with_content_type`] instead), and a delivery's headers
/// never hold them (they are moved to their fields).
#[derive(Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

/// Cloned with every delivery's metadata: the usual empty set is copied without going through
/// `Vec`'s general clone.
impl Clone for Headers {
    fn clone(&self) -> Self {
        if self.0.is_empty() {
            Headers::new()
        } else {
            Headers(self.0.clone())
        }
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Sets `name` to `value`, replacing an existing value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(index).1)
    }

    /// The headers in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers not named like the wire's, for an adapter writing them next to the
    /// message's own id and content type (which win).
    pub fn without_wire_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(name, _)| !is_wire_name(name))
    }

    /// A `Rejected` error when a header uses a wire name: it would be lost on Kafka, become
    /// the content type on Pub/Sub and stay a header on RabbitMQ.
    pub(crate) fn check_not_wire(&self) -> Result<()> {
        let Some((name, _)) = self.iter().find(|(name, _)| is_wire_name(name)) else {
            return Ok(());
        };
        let field = if name == MESSAGE_ID_HEADER {
            "Message::with_id"
        } else {
            "Message::with_content_type"
        };
        Err(Error::new(
            ErrorKind::Rejected,
            format!("header {name:?} is reserved for the wire: set it with {field}"),
        )
        .operation("publish"))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.insert(name, value);
        }
        headers
    }
}

/// A message on its way to the broker: an encoded payload plus what travels with it.
///
/// Build one with [`Message::new`] and the `with_*` methods, or let a typed
/// [`Publisher`](crate::Publisher) build it from a value.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The encoded payload; may be empty.
    pub payload: Bytes,
    /// The partition/ordering key: messages with the same key are handled in publish order.
    pub key: Option<Key>,
    /// Application headers.
    pub headers: Headers,
    /// The message id; [`MessageId::random`] unless set.
    pub id: MessageId,
    /// The MIME type of the payload, e.g. `application/json`.
    pub content_type: Option<Cow<'static, str>>,
    /// When the message was created.
    pub timestamp: SystemTime,
}

impl Message {
    /// A message with this payload, a fresh id, no key, no headers, created now.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            key: None,
            headers: Headers::new(),
            id: MessageId::random(),
            content_type: None,
            timestamp: SystemTime::now(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds or replaces a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the message id.
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("content_type", &self.content_type)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_under_wire_names_are_refused() {
        let plain: Headers = [("trace", "1"), ("message-ids", "2")].into_iter().collect();
        assert!(plain.check_not_wire().is_ok());
        for (name, hint) in [
            (MESSAGE_ID_HEADER, "with_id"),
            (CONTENT_TYPE_HEADER, "with_content_type"),
        ] {
            let headers: Headers = [("trace", "1"), (name, "x")].into_iter().collect();
            let err = headers.check_not_wire().expect_err(name);
            assert_eq!(err.kind(), ErrorKind::Rejected);
            assert!(
                err.to_string().contains(name) && err.to_string().contains(hint),
                "{err}"
            );
        }
    }

    #[test]
    fn headers_replace_and_keep_order() {
        let mut headers: Headers = [("b", "1"), ("a", "2")].into_iter().collect();
        headers.insert("b", "3");
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("b", "3"), ("a", "2")]);
        assert_eq!(headers.remove("b").as_deref(), Some("3"));
        assert_eq!(headers.get("b"), None);
    }

    #[test]
    fn new_messages_get_distinct_ids() {
        let a = Message::new("x");
        let b = Message::new("x");
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.as_str().len(), 36);
    }

    #[test]
    fn random_ids_are_uuid_v4_and_differ_across_threads() {
        let ids = |n| (0..n).map(|_| MessageId::random()).collect::<Vec<_>>();
        let mut all = ids(1000);
        let others = std::thread::spawn(move || ids(1000));
        all.extend(others.join().expect("the other thread made its ids"));
        for id in &all {
            let parsed = uuid::Uuid::parse_str(id.as_str()).expect("a hyphenated UUID");
            assert_eq!(parsed.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(parsed.hyphenated().to_string(), id.as_str(), "lower case");
        }
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn ids_compare_by_text_whatever_their_length() {
        let short = MessageId::from("id-1");
        let long = MessageId::from("x".repeat(100));
        assert_eq!(short, MessageId::from(String::from("id-1")));
        assert_eq!(long.as_str().len(), 100);
        assert_eq!(long, MessageId::from("x".repeat(100).as_str()));
        assert_ne!(short, long);
        assert_eq!(format!("{short}"), "id-1");
    }
}
