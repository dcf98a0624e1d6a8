//! Partition/ordering keys.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

/// A message's partition/ordering key: messages with the same key are handled in publish order.
///
/// Immutable text. Keys of up to 23 bytes are kept inline and longer ones are shared, so that
/// cloning a key never allocates: a keyed message's key is cloned into each delivery's
/// metadata and each handler call. Compares, hashes and orders as its text; derefs to `str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(SmolStr);

impl Key {
    /// A key with this text.
    pub fn new(text: impl AsRef<str>) -> Self {
        Key(SmolStr::new(text))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Key(SmolStr::new(text))
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Self {
        Key::from(text.as_str())
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        Key(SmolStr::from(text))
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.0.into()
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Key {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Key::from)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_keys_keep_their_text_through_clones() {
        let long = "a key longer than twenty-three bytes, shared when cloned";
        for text in ["", "user-42", long] {
            let key = Key::from(text.to_owned());
            let copy = key.clone();
            assert_eq!(copy, text);
            assert_eq!(copy, key);
            assert_eq!(String::from(copy), text);
        }
    }

    #[test]
    fn compares_and_prints_as_its_text() {
        let key = Key::new("b");
        assert!(Key::new("a") < key);
        assert_eq!(key.to_string(), "b");
        assert_eq!(format!("{key:?}"), "\"b\"");
        assert_eq!(&*key, "b");
        let json = serde_json::to_string(&key).expect("a key serializes");
        assert_eq!(json, "\"b\"");
        let back: Key = serde_json::from_str(&json).expect("a key deserializes");
        assert_eq!(back, key);
    }
}
