//! What a delivery takes from a Kafka record: its payload, copied out of librdkafka's memory,
//! and its metadata per the wire conventions.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_api::{Key, MessageId, Metadata, Position};
use bytes::{Bytes, BytesMut};
use rdkafka::message::{Headers, Message};

use crate::publisher::{CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};

/// Payloads up to this size are copied into a shared buffer and handed out as slices of it
/// (two allocations per [`CHUNK`], the buffer and its reference count, instead of one per
/// message); larger ones get a buffer of their own, so that a small delivery never keeps a
/// large one's memory alive.
const SHARED_PAYLOAD_MAX: usize = 16 * 1024;
/// The size of one shared payload buffer: a delivery still held keeps at most this much alive.
const CHUNK: usize = 64 * 1024;

/// Copies payloads out of librdkafka's records: small ones into the free end of a shared
/// buffer, a new one started when it is full.
#[derive(Default)]
pub(crate) struct PayloadBuffer {
    free: BytesMut,
}

impl PayloadBuffer {
    /// An owned copy of `payload`.
    pub(crate) fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.is_empty() {
            return Bytes::new();
        }
        if payload.len() > SHARED_PAYLOAD_MAX {
            return Bytes::copy_from_slice(payload);
        }
        if self.free.capacity() < payload.len() {
            self.free = BytesMut::with_capacity(CHUNK);
        }
        self.free.extend_from_slice(payload);
        self.free.split().freeze()
    }
}

/// Payload and metadata of `record`, the payload copied on its own.
#[cfg(test)]
fn payload_and_metadata<M: Message>(record: &M, topic: &Arc<str>) -> (Bytes, Metadata) {
    let payload = record
        .payload()
        .map_or_else(Bytes::new, Bytes::copy_from_slice);
    (payload, metadata(record, topic))
}

/// The metadata of `record`: the key and header values as UTF-8 (lossy for binary values),
/// the `message-id` and `content-type` headers moved to their fields, the record timestamp as
/// publish time, partition and offset as position. Records written by other programs without
/// those headers are read all the same.
pub(crate) fn metadata<M: Message>(record: &M, topic: &Arc<str>) -> Metadata {
    let mut metadata = Metadata::new(topic.clone());
    metadata.key = record
        .key()
        .map(|key| Key::from(&*String::from_utf8_lossy(key)));
    if let Some(headers) = record.headers() {
        let unreadable = read_headers(headers, &mut metadata);
        if unreadable > 0 {
            tracing::warn!(topic = %topic, partition = record.partition(), offset = record.offset(),
                unreadable, "headers whose names are not UTF-8 were left out of the metadata");
        }
    }
    metadata.publish_time = record.timestamp().to_millis().and_then(time_of);
    metadata.position = Position::Kafka {
        partition: record.partition(),
        offset: record.offset(),
    };
    metadata
}

/// Moves `headers` into `metadata`; returns how many were left out because their names are
/// not UTF-8.
///
/// rdkafka panics reading such a name (`Headers::try_get` unwraps it), and any program may
/// write one: caught here, so that the record is delivered without that header instead of
/// panicking the stream of every member that reads it (the default panic hook still prints
/// it).
fn read_headers<H: Headers + ?Sized>(headers: &H, metadata: &mut Metadata) -> usize {
    let mut unreadable = 0;
    for index in 0..headers.count() {
        let read = std::panic::catch_unwind(AssertUnwindSafe(|| headers.try_get(index)));
        let Ok(Some(header)) = read else {
            unreadable += 1;
            continue;
        };
        let value = header.value.map_or(Cow::Borrowed(""), text);
        match header.key {
            MESSAGE_ID_HEADER => metadata.message_id = Some(MessageId::from(&*value)),
            CONTENT_TYPE_HEADER => metadata.content_type = Some(content_type(value)),
            name => metadata.headers.insert(name, value.into_owned()),
        }
    }
    unreadable
}

/// A header value as text: borrowed when it is UTF-8 (checked the fast way), replaced
/// characters otherwise.
fn text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// The content type, without allocating for the ones the library's codecs write.
fn content_type(value: Cow<'_, str>) -> Cow<'static, str> {
    const KNOWN: [&str; 3] = [
        "application/json",
        "application/octet-stream",
        "text/plain; charset=utf-8",
    ];
    match KNOWN.iter().find(|known| **known == value) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(value.into_owned()),
    }
}

fn time_of(millis: i64) -> Option<SystemTime> {
    let millis = u64::try_from(millis).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn wire_headers_become_fields() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "message-id",
                value: Some("id-7"),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "trace",
                value: Some("abc"),
            })
            .insert(Header {
                key: "binary",
                value: Some(&[0xff_u8, b'a'][..]),
            });
        let record = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"user-1".to_vec()),
            "orders".into(),
            Timestamp::CreateTime(1_700_000_000_123),
            2,
            41,
            Some(headers),
        );
        let (payload, metadata) = payload_and_metadata(&record, &Arc::from("orders"));
        assert_eq!(&payload[..], b"{}");
        assert_eq!(&*metadata.topic, "orders");
        assert_eq!(metadata.key.as_deref(), Some("user-1"));
        assert_eq!(
            metadata.message_id.as_ref().map(MessageId::as_str),
            Some("id-7")
        );
        assert_eq!(metadata.content_type.as_deref(), Some("application/json"));
        assert_eq!(metadata.headers.get("trace"), Some("abc"));
        assert_eq!(metadata.headers.get("binary"), Some("\u{fffd}a"));
        assert_eq!(metadata.headers.get("message-id"), None);
        assert_eq!(
            metadata.publish_time,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(metadata.attempt, None);
        assert_eq!(
            metadata.position,
            Position::Kafka {
                partition: 2,
                offset: 41
            }
        );
    }

    #[test]
    fn small_payloads_share_a_buffer_large_ones_do_not() {
        let mut buffer = PayloadBuffer::default();
        let large = vec![7u8; SHARED_PAYLOAD_MAX + 1];
        let one = buffer.copy(b"one");
        let empty = buffer.copy(b"");
        let own = buffer.copy(&large);
        let three = buffer.copy(b"three");
        assert_eq!(&one[..], b"one");
        assert!(empty.is_empty());
        assert_eq!(own[..], large[..]);
        assert_eq!(&three[..], b"three");
        let address = |bytes: &Bytes| bytes.as_ptr() as usize;
        assert_eq!(
            address(&three),
            address(&one) + 3,
            "small payloads are adjacent"
        );
        let shared = address(&one)..address(&one) + CHUNK;
        assert!(
            !shared.contains(&address(&own)),
            "a large payload has a buffer of its own"
        );
    }

    #[test]
    fn a_full_buffer_is_replaced_and_earlier_payloads_stay_intact() {
        let mut buffer = PayloadBuffer::default();
        let payload = vec![1u8; SHARED_PAYLOAD_MAX];
        let copies: Vec<Bytes> = (0..CHUNK / SHARED_PAYLOAD_MAX + 2)
            .map(|i| {
                let mut payload = payload.clone();
                payload[0] = i as u8;
                buffer.copy(&payload)
            })
            .collect();
        for (i, copy) in copies.iter().enumerate() {
            assert_eq!(copy.len(), SHARED_PAYLOAD_MAX);
            assert_eq!(copy[0], i as u8);
            assert!(copy[1..].iter().all(|&b| b == 1));
        }
    }

    /// Headers as rdkafka reads them, one of which has a name that is not UTF-8: reading it
    /// panics as rdkafka's `try_get` does.
    struct WithUnreadableName;

    impl Headers for WithUnreadableName {
        fn count(&self) -> usize {
            3
        }

        fn try_get(&self, index: usize) -> Option<Header<'_, &[u8]>> {
            match index {
                0 => Some(Header {
                    key: "message-id",
                    value: Some(b"id-9"),
                }),
                // What rdkafka's `CStr::to_str(..).unwrap()` does with the name.
                1 => panic!("called `Result::unwrap()` on an `Err` value: Utf8Error"),
                2 => Some(Header {
                    key: "trace",
                    value: Some(b"abc"),
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_left_out() {
        let mut metadata = Metadata::new(Arc::from("t"));
        assert_eq!(read_headers(&WithUnreadableName, &mut metadata), 1);
        assert_eq!(
            metadata.message_id.as_ref().map(MessageId::as_str),
            Some("id-9")
        );
        assert_eq!(metadata.headers.get("trace"), Some("abc"));
        assert_eq!(metadata.headers.len(), 1);
    }

    #[test]
    fn foreign_records_without_headers_are_read() {
        let record = OwnedMessage::new(
            None,
            Some(vec![0xfe, 0xff]),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        let (payload, metadata) = payload_and_metadata(&record, &Arc::from("t"));
        assert!(payload.is_empty());
        assert_eq!(metadata.message_id, None);
        assert_eq!(metadata.key.as_deref(), Some("\u{fffd}\u{fffd}"));
        assert_eq!(metadata.publish_time, None);
        assert!(metadata.headers.is_empty());
    }
}
