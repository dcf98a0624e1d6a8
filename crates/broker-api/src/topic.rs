//! Typed topics: a name, a codec and an optional key function.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, Json, Raw, Text};
use crate::error::{panic_text, Error, ErrorKind, Result};
use crate::key::Key;
use crate::message::Message;

type KeyFn<T> = dyn Fn(&T) -> Key + Send + Sync;

/// A named stream of values of `T`.
///
/// The codec turns values into payloads (JSON by default); the optional key function picks the
/// partition/ordering key of each value, so that values with the same key are handled in publish
/// order (Lagom's partition key strategy). Cloning is cheap.
///
/// ```
/// # use broker_api::Topic;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct GreetingChanged { user: String, message: String }
///
/// let greetings = Topic::<GreetingChanged>::json("greetings").with_key(|e| e.user.clone());
/// assert_eq!(greetings.name(), "greetings");
/// ```
pub struct Topic<T> {
    name: Arc<str>,
    codec: Arc<dyn Codec<T>>,
    key: Option<Arc<KeyFn<T>>>,
}

impl<T: Serialize + DeserializeOwned + 'static> Topic<T> {
    /// A topic of JSON values.
    pub fn json(name: impl Into<Arc<str>>) -> Self {
        Topic::with_codec(name, Json::<T>::default())
    }
}

impl Topic<Bytes> {
    /// A topic of raw payloads.
    pub fn bytes(name: impl Into<Arc<str>>) -> Self {
        Topic::with_codec(name, Raw)
    }
}

impl Topic<String> {
    /// A topic of UTF-8 text.
    pub fn text(name: impl Into<Arc<str>>) -> Self {
        Topic::with_codec(name, Text)
    }
}

impl<T: 'static> Topic<T> {
    /// A topic with a codec of your own.
    pub fn with_codec(name: impl Into<Arc<str>>, codec: impl Codec<T>) -> Self {
        Topic {
            name: name.into(),
            codec: Arc::new(codec),
            key: None,
        }
    }

    /// Keys every value with `key`: values with the same key are handled in publish order.
    ///
    /// The function may return a [`Key`], a `String` or a `&'static str`.
    pub fn with_key<K: Into<Key>>(mut self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(move |value: &T| key(value).into()));
        self
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The codec.
    pub fn codec(&self) -> &dyn Codec<T> {
        &*self.codec
    }

    /// The message for `value`: encoded payload, key, content type, fresh id.
    pub fn message(&self, value: &T) -> Result<Message> {
        let mut message = Message::new(self.codec.encode(value)?);
        message.key = self.key.as_ref().map(|key| key(value));
        message.content_type = self.codec.content_type().map(Into::into);
        Ok(message)
    }

    /// Decodes a payload of this topic. A codec that panics (a `Deserialize` implementation
    /// that unwraps, say) fails with a [`Decode`](crate::ErrorKind::Decode) error instead, so
    /// that the message is dead-lettered like any payload that cannot be decoded, instead of
    /// ending the subscription at every delivery of it.
    pub fn decode(&self, payload: &Bytes) -> Result<T> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.codec.decode(payload))).unwrap_or_else(
            |panic| {
                Err(Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the codec of topic {} panicked decoding a payload of {} bytes: {}",
                        self.name,
                        payload.len(),
                        panic_text(&*panic)
                    ),
                ))
            },
        )
    }
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Topic {
            name: self.name.clone(),
            codec: self.codec.clone(),
            key: self.key.clone(),
        }
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("value", &std::any::type_name::<T>())
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Event {
        user: String,
    }

    #[test]
    fn message_carries_key_and_content_type() {
        let topic = Topic::<Event>::json("events").with_key(|e| e.user.clone());
        let message = topic.message(&Event { user: "ann".into() }).unwrap();
        assert_eq!(message.key.as_deref(), Some("ann"));
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            topic.decode(&message.payload).unwrap(),
            Event { user: "ann".into() }
        );
    }
}
