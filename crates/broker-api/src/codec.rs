//! Codecs turn typed values into payloads and back.

mod non_finite;

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
/// JSON has no NaN or infinity: serde_json would write a non-finite `f32` or `f64` as `null`,
/// which decodes back only into an `Option` (or a field with a default), so every consumer
/// would fail to decode the message or read another value. Encoding refuses such a value with
/// [`ErrorKind::Encode`] naming where the float is (`$.readings[3]`); nothing is published.
/// Values whose JSON holds no `null` are not looked at again.
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
        let type_name = std::any::type_name::<T>();
        let json = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!("cannot encode a {type_name} as JSON"),
            )
            .source(e)
        })?;
        if json.windows(4).any(|w| w == b"null") {
            if let Some(path) = non_finite::find(value) {
                return Err(Error::new(
                    ErrorKind::Encode,
                    format!(
                        "cannot encode a {type_name} as JSON: the float at {path} is NaN or \
                         infinite, which JSON cannot carry (it would be written as null)"
                    ),
                ));
            }
        }
        Ok(Bytes::from(json))
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

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Reading {
        sensor: String,
        value: f64,
        history: Vec<f32>,
        by_unit: std::collections::BTreeMap<String, f64>,
        note: Option<String>,
    }

    fn reading() -> Reading {
        Reading {
            sensor: "s1".into(),
            value: 21.5,
            history: vec![20.0, 21.0],
            by_unit: [("celsius".to_owned(), 21.5)].into(),
            note: None,
        }
    }

    #[test]
    fn json_refuses_non_finite_floats_and_says_where() {
        let codec = Json::<Reading>::default();
        let mut nan = reading();
        nan.value = f64::NAN;
        let mut infinite = reading();
        infinite.history.push(f32::INFINITY);
        let mut in_map = reading();
        in_map.by_unit.insert("kelvin".into(), f64::NEG_INFINITY);
        for (value, path) in [
            (nan, "$.value"),
            (infinite, "$.history[2]"),
            (in_map, "$.by_unit[\"kelvin\"]"),
        ] {
            let err = codec.encode(&value).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Encode);
            assert!(err.to_string().contains(path), "{path}: {err}");
            assert!(err.to_string().contains("Reading"), "{err}");
        }
        // Nulls of their own (the `None`) and finite floats encode and decode as before.
        let fine = reading();
        let bytes = codec.encode(&fine).unwrap();
        assert!(bytes.windows(4).any(|w| w == b"null"));
        assert_eq!(codec.decode(&bytes).unwrap(), fine);
        // The value itself, in an option, and in an enum variant.
        let err = Json::<Option<f64>>::default()
            .encode(&Some(f64::NAN))
            .unwrap_err();
        assert!(err.to_string().contains("at $ is"), "{err}");
        let err = Json::<Result<f64, String>>::default()
            .encode(&Ok(f64::INFINITY))
            .unwrap_err();
        assert!(err.to_string().contains("at $.Ok is"), "{err}");
        #[derive(Serialize, serde::Deserialize)]
        enum Shape {
            Circle { radius: f64 },
            Segment(f64, f64),
        }
        let codec = Json::<Vec<Shape>>::default();
        let shapes = vec![Shape::Circle { radius: 1.0 }, Shape::Segment(0.0, f64::NAN)];
        let err = codec.encode(&shapes).unwrap_err();
        assert!(err.to_string().contains("at $[1].Segment[1] is"), "{err}");
        let err = codec
            .encode(&vec![Shape::Circle { radius: f64::NAN }])
            .unwrap_err();
        assert!(
            err.to_string().contains("at $[0].Circle.radius is"),
            "{err}"
        );
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
