//! Codecs turn typed values into payloads and back.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// Encodes values of `T` into payloads and decodes them back.
///
/// A decode failure is not retried: the runners send the message straight to the dead-letter
/// topic.
pub trait Codec<T>: Send + Sync + 'static {
    /// The MIME type written with every message, if any.
    fn content_type(&self) -> Option<&'static str>;
    /// Encodes a value; fails with [`ErrorKind::Encode`].
    fn encode(&self, value: &T) -> Result<Bytes>;
    /// Decodes a payload; fails with [`ErrorKind::Decode`].
    fn decode(&self, payload: &Bytes) -> Result<T>;
}

/// JSON through serde, `application/json`.
///
/// JSON has no NaN or infinity: serde_json writes a non-finite `f32` or `f64` as `null`, which
/// decodes back only into an `Option` (or a field with a default). Such a message is published,
/// then fails to decode and goes to the dead letters: keep floats finite, or give the topic a
/// codec of your own.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Codec<T> for Json<T> {
    fn content_type(&self) -> Option<&'static str> {
        Some("application/json")
    }

    fn encode(&self, value: &T) -> Result<Bytes> {
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!("cannot encode a {} as JSON", std::any::type_name::<T>()),
            )
            .source(e)
        })
    }

    fn decode(&self, payload: &Bytes) -> Result<T> {
        serde_json::from_slice(payload).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "payload of {} bytes is not valid JSON for {}",
                    payload.len(),
                    std::any::type_name::<T>()
                ),
            )
            .source(e)
        })
    }
}

/// Raw bytes, passed through unchanged, `application/octet-stream`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn content_type(&self) -> Option<&'static str> {
        Some("application/octet-stream")
    }

    fn encode(&self, value: &Bytes) -> Result<Bytes> {
        Ok(value.clone())
    }

    fn decode(&self, payload: &Bytes) -> Result<Bytes> {
        Ok(payload.clone())
    }
}

/// UTF-8 text, `text/plain; charset=utf-8`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Text;

impl Codec<String> for Text {
    fn content_type(&self) -> Option<&'static str> {
        Some("text/plain; charset=utf-8")
    }

    fn encode(&self, value: &String) -> Result<Bytes> {
        Ok(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn decode(&self, payload: &Bytes) -> Result<String> {
        String::from_utf8(payload.to_vec()).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("payload of {} bytes is not UTF-8 text", payload.len()),
            )
            .source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Greeting {
        user: String,
        text: String,
    }

    #[test]
    fn json_round_trips_and_names_the_type_on_failure() {
        let codec = Json::<Greeting>::default();
        let value = Greeting {
            user: "ann".into(),
            text: "hi".into(),
        };
        let bytes = codec.encode(&value).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), value);
        let err = codec.decode(&Bytes::from_static(b"{nope")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.to_string().contains("Greeting"), "{err}");
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        let err = Text.decode(&Bytes::from_static(&[0xff, 0xfe])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
