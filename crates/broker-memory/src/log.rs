//! The records of a topic: an append-only log in fixed-size segments, so that appending never
//! moves what is already stored.

use std::borrow::Cow;
use std::time::SystemTime;

use broker_api::{Headers, Message, MessageId};
use bytes::Bytes;

/// Records per segment.
const SEGMENT: usize = 4096;

/// One published message, read by every group of its topic.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) payload: Bytes,
    pub(crate) key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) id: MessageId,
    pub(crate) content_type: Option<Cow<'static, str>>,
    pub(crate) timestamp: SystemTime,
}

/// The records of one topic, by offset.
#[derive(Debug, Default)]
pub(crate) struct Log {
    segments: Vec<Vec<Record>>,
    len: usize,
}

impl Log {
    /// Appends a message and returns its offset.
    pub(crate) fn append(&mut self, message: Message) -> u64 {
        if self.len.is_multiple_of(SEGMENT) {
            self.segments.push(Vec::with_capacity(SEGMENT));
        }
        let record = Record {
            payload: message.payload,
            key: message.key,
            headers: message.headers,
            id: message.id,
            content_type: message.content_type,
            timestamp: message.timestamp,
        };
        if let Some(segment) = self.segments.last_mut() {
            segment.push(record);
        }
        self.len += 1;
        self.len as u64 - 1
    }

    /// The record at `offset`.
    pub(crate) fn get(&self, offset: u64) -> Option<&Record> {
        let offset = usize::try_from(offset).ok()?;
        self.segments.get(offset / SEGMENT)?.get(offset % SEGMENT)
    }

    /// The number of records.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_cross_segments() {
        let mut log = Log::default();
        for i in 0..(SEGMENT * 2 + 3) {
            assert_eq!(log.append(Message::new(i.to_string())), i as u64);
        }
        assert_eq!(log.len(), (SEGMENT * 2 + 3) as u64);
        let last = log.get((SEGMENT * 2 + 2) as u64).unwrap();
        assert_eq!(last.payload, (SEGMENT * 2 + 2).to_string());
        assert!(log.get(log.len()).is_none());
    }
}
