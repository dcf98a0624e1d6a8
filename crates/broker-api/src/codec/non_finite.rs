//! Finds a non-finite float (NaN or an infinity) in a value, which JSON cannot carry.
//!
//! serde_json writes such a float as `null` without a word, and that `null` decodes back only
//! into an `Option` (or a defaulted field): the message would be published, then fail to
//! decode on every consumer. [`Json`](super::Json) walks the value with this serializer, which
//! writes nothing, when its output holds a `null`, so that publishing fails instead.
//!
//! serde_json turns the float into `null` before any `Formatter` sees it, and `serde` has no
//! visitor for values being serialized, so this walk is written out here.

use std::fmt::{self, Display};

use serde::ser::{self, Serialize};

/// Where the first non-finite float of `value` is (`$` for the value itself, then fields,
/// indexes and map keys: `$.readings[3]`, `$.by_sensor["s1"]`), or `None` when every float
/// in it is finite.
pub(super) fn find(value: &(impl Serialize + ?Sized)) -> Option<String> {
    match value.serialize(Probe) {
        Err(Found::NonFinite(path)) => Some(format!("${path}")),
        Ok(()) | Err(Found::Failed(_)) => None,
    }
}

/// Why the walk stopped: a non-finite float, with its path built from the float outwards, or
/// a custom `Serialize` that failed (serde_json reports that one with the encoding itself).
#[derive(Debug)]
enum Found {
    NonFinite(String),
    Failed(String),
}

impl Found {
    fn within(self, step: impl Display) -> Self {
        match self {
            Found::NonFinite(path) => Found::NonFinite(format!("{step}{path}")),
            failed => failed,
        }
    }
}

impl Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::NonFinite(path) => write!(f, "a non-finite float at ${path}"),
            Found::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<T: Display>(msg: T) -> Self {
        Found::Failed(msg.to_string())
    }
}

/// Walks a value and writes nothing; fails at the first non-finite float.
struct Probe;

/// Walks the items of a sequence, tuple, map or struct, naming them for the path.
struct Items {
    index: usize,
    /// The key of the map value walked next, as JSON.
    key: Option<String>,
    /// The enum variant whose fields these are.
    variant: Option<&'static str>,
}

impl Items {
    fn new() -> Self {
        Items {
            index: 0,
            key: None,
            variant: None,
        }
    }

    fn of_variant(variant: &'static str) -> Self {
        Items {
            variant: Some(variant),
            ..Items::new()
        }
    }

    /// Walks one part, named `step` within these items.
    fn walk(&self, value: &(impl Serialize + ?Sized), step: impl Display) -> Result<(), Found> {
        value.serialize(Probe).map_err(|found| {
            let found = found.within(step);
            match self.variant {
                Some(variant) => found.within(format_args!(".{variant}")),
                None => found,
            }
        })
    }

    fn item(&mut self, value: &(impl Serialize + ?Sized)) -> Result<(), Found> {
        let index = self.index;
        self.index += 1;
        self.walk(value, format_args!("[{index}]"))
    }

    fn field(&self, name: &str, value: &(impl Serialize + ?Sized)) -> Result<(), Found> {
        self.walk(value, format_args!(".{name}"))
    }
}

fn check(float: f64) -> Result<(), Found> {
    if float.is_finite() {
        Ok(())
    } else {
        Err(Found::NonFinite(String::new()))
    }
}

/// The methods starting a compound value: each returns the [`Items`] that walk its parts.
macro_rules! compound {
    ($($method:ident($($arg:tt: $ty:ty),*) => $items:expr;)*) => {
        $(fn $method(self, $($arg: $ty),*) -> Result<Items, Found> { Ok($items) })*
    };
}

macro_rules! ignore {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), Found> { Ok(()) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Items;
    type SerializeTuple = Items;
    type SerializeTupleStruct = Items;
    type SerializeTupleVariant = Items;
    type SerializeMap = Items;
    type SerializeStruct = Items;
    type SerializeStructVariant = Items;

    ignore!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> Result<(), Found> {
        check(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Found> {
        check(v)
    }

    fn serialize_none(self) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Found> {
        value.serialize(Probe)
    }

    fn serialize_unit(self) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Found> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(Probe)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        Items::new().field(variant, value)
    }

    compound! {
        serialize_seq(_: Option<usize>) => Items::new();
        serialize_tuple(_: usize) => Items::new();
        serialize_tuple_struct(_: &'static str, _: usize) => Items::new();
        serialize_tuple_variant(_: &'static str, _: u32, variant: &'static str, _: usize)
            => Items::of_variant(variant);
        serialize_map(_: Option<usize>) => Items::new();
        serialize_struct(_: &'static str, _: usize) => Items::new();
        serialize_struct_variant(_: &'static str, _: u32, variant: &'static str, _: usize)
            => Items::of_variant(variant);
    }
}

macro_rules! items {
    ($($trait:ident::$method:ident),* $(,)?) => {$(
        impl ser::$trait for Items {
            type Ok = ();
            type Error = Found;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
                self.item(value)
            }

            fn end(self) -> Result<(), Found> {
                Ok(())
            }
        }
    )*};
}

items!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Items {
    type Ok = ();
    type Error = Found;

    /// Keys are only named, not walked: serde_json writes a float key as a string and
    /// refuses a non-finite one itself.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Found> {
        self.key = serde_json::to_string(key).ok();
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        match self.key.take() {
            Some(key) => self.walk(value, format_args!("[{key}]")),
            None => self.item(value),
        }
    }

    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

macro_rules! fields {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for Items {
            type Ok = ();
            type Error = Found;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<(), Found> {
                self.field(name, value)
            }

            fn end(self) -> Result<(), Found> {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);
