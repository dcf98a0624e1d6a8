//! Numeric settings read strictly: `#[serde(deserialize_with = "number")]` (and
//! [`optional_number`] for an `Option`).
//!
//! Configuration comes from `broker.toml`, where numbers are numbers, and from `BROKER__*`
//! environment variables, where they are text. The `config` crate reads the text `true`,
//! `yes` or `on` as 1 (and `false`, `no`, `off` as 0) for a numeric setting: a setting of
//! `BROKER__SUBSCRIBER__RETRY__MAX_ATTEMPTS=yes` would silently mean one attempt. These
//! read a number, or text that parses as one, and refuse anything else.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};

/// A numeric setting's type.
pub trait Number: FromStr + Sized {
    /// What the setting takes, for errors.
    const EXPECTED: &'static str;
    /// The value of an integer, when it fits.
    fn from_i128(value: i128) -> Option<Self>;
    /// The value of a floating-point number, when it is one this type takes.
    fn from_f64(value: f64) -> Option<Self>;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Number for $t {
            const EXPECTED: &'static str = concat!("a whole number (", stringify!($t), ")");
            fn from_i128(value: i128) -> Option<Self> {
                <$t>::try_from(value).ok()
            }
            fn from_f64(_: f64) -> Option<Self> {
                None
            }
        }
    )*};
}

integer!(u16, u32, u64, usize, i64);

impl Number for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_i128(value: i128) -> Option<Self> {
        Some(value as f64)
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(value)
    }
}

/// Reads a number, or text that parses as one (see the module docs).
pub fn number<'de, D: Deserializer<'de>, T: Number>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_any(NumberVisitor(PhantomData))
}

/// [`number`] for an optional setting.
pub fn optional_number<'de, D: Deserializer<'de>, T: Number>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    number(deserializer).map(Some)
}

struct NumberVisitor<T>(PhantomData<T>);

impl<T: Number> NumberVisitor<T> {
    fn integer<E: de::Error>(value: i128, unexpected: de::Unexpected<'_>) -> Result<T, E> {
        T::from_i128(value).ok_or_else(|| E::invalid_value(unexpected, &T::EXPECTED))
    }
}

impl<T: Number> Visitor<'_> for NumberVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(T::EXPECTED)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        Self::integer(value.into(), de::Unexpected::Signed(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        Self::integer(value.into(), de::Unexpected::Unsigned(value))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<T, E> {
        Self::integer(value, de::Unexpected::Other("a 128-bit integer"))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<T, E> {
        let value = i128::try_from(value).map_err(|_| {
            E::invalid_value(de::Unexpected::Other("a 128-bit integer"), &T::EXPECTED)
        })?;
        Self::integer(value, de::Unexpected::Other("a 128-bit integer"))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        T::from_f64(value).ok_or_else(|| E::invalid_value(de::Unexpected::Float(value), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.trim()
            .parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{
        BoolDeserializer, Error, F64Deserializer, StrDeserializer, U64Deserializer,
    };
    use serde::de::IntoDeserializer;

    fn from_text<T: Number>(text: &str) -> Result<T, Error> {
        let deserializer: StrDeserializer<'_, Error> = text.into_deserializer();
        number(deserializer)
    }

    #[test]
    fn numbers_and_text_of_numbers_are_read() {
        assert_eq!(
            number::<_, u32>(7u64.into_deserializer()),
            Ok::<_, Error>(7)
        );
        assert_eq!(from_text::<usize>("256"), Ok(256));
        assert_eq!(from_text::<f64>("0.25"), Ok(0.25));
        let float: F64Deserializer<Error> = 0.5f64.into_deserializer();
        assert_eq!(number::<_, f64>(float), Ok(0.5));
    }

    #[test]
    fn words_that_the_config_crate_reads_as_numbers_are_refused() {
        for word in ["true", "yes", "on", "off", "2.5", ""] {
            let err = from_text::<u32>(word).unwrap_err().to_string();
            assert!(err.contains("a whole number (u32)"), "{word}: {err}");
        }
        assert!(from_text::<f64>("on").is_err());
        let boolean: BoolDeserializer<Error> = true.into_deserializer();
        assert!(number::<_, u32>(boolean).is_err());
        let large: U64Deserializer<Error> = 70_000u64.into_deserializer();
        assert!(number::<_, u16>(large).is_err());
        let float: F64Deserializer<Error> = 2.5f64.into_deserializer();
        assert!(number::<_, usize>(float).is_err());
    }
}
