//! The records of a topic: an append-only log in fixed-size segments, so that appending never
//! moves what is already stored, and so that old segments can be dropped whole.
//!
//! Retention: when an append starts a segment, the oldest segments are dropped that every group
//! of the topic has read past and acknowledged entirely (their `unsettled` count is zero), as
//! long as the retained number of newer messages remain for groups that join later. A dropped
//! segment's buffer becomes the next segment, so a topic whose groups keep up reuses the same
//! memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use broker_api::Message;

/// Records per segment.
const SEGMENT: usize = 4096;

#[derive(Debug)]
struct Segment {
    /// The published messages, stored as they were handed over.
    records: Vec<Message>,
    /// How many of its records groups have read and not acknowledged yet, summed over the
    /// groups: the segment is kept while it is above zero.
    unsettled: AtomicUsize,
}

/// The records of one topic, by offset.
#[derive(Debug)]
pub(crate) struct Log {
    segments: VecDeque<Segment>,
    /// The offset of the first record kept.
    first: u64,
    /// The offset the next record gets.
    end: u64,
    /// Records kept for groups that join later, at least.
    retained: u64,
    /// A dropped segment's buffer, for the next segment.
    spare: Option<Vec<Message>>,
}

impl Log {
    /// An empty log that keeps at least the last `retained` records.
    pub(crate) fn new(retained: usize) -> Self {
        Log {
            segments: VecDeque::new(),
            first: 0,
            end: 0,
            retained: retained as u64,
            spare: None,
        }
    }

    /// Appends a message and returns its offset, dropping nothing.
    #[cfg(test)]
    fn append(&mut self, message: Message) -> u64 {
        self.append_all(&mut vec![message], || 0);
        self.end - 1
    }

    /// Appends `messages` in order, leaving the vector empty; moves them a segment at a time.
    /// Before it starts a segment, drops the oldest segments retention allows (see
    /// [`Log::trim`]), asking `read_by_all` for the groups' positions once at most.
    pub(crate) fn append_all(
        &mut self,
        messages: &mut Vec<Message>,
        read_by_all: impl FnOnce() -> u64,
    ) {
        let read_by_all = std::cell::LazyCell::new(read_by_all);
        while !messages.is_empty() {
            let last = self.segments.back_mut().map(|segment| &mut segment.records);
            let Some(records) = last.filter(|records| records.len() < SEGMENT) else {
                if self.may_trim() {
                    self.trim(*read_by_all);
                }
                self.start_segment();
                continue;
            };
            let moved = (SEGMENT - records.len()).min(messages.len());
            if moved == messages.len() {
                records.append(messages);
            } else {
                records.extend(messages.drain(..moved));
            }
            self.end += moved as u64;
        }
    }

    fn start_segment(&mut self) {
        let records = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(SEGMENT));
        self.segments.push_back(Segment {
            records,
            unsettled: AtomicUsize::new(0),
        });
    }

    /// Whether the next append starts a segment while the oldest one may be dropped: then
    /// [`Log::trim`] is worth the groups' positions.
    fn may_trim(&self) -> bool {
        self.end.is_multiple_of(SEGMENT as u64) && self.droppable_front(self.end).is_some()
    }

    /// Drops the oldest segments that every group has read (`read_by_all` is the lowest next
    /// offset among the groups) and acknowledged, as long as enough newer records remain.
    /// One dropped segment's buffer is kept for the next segment. Returns how many it dropped.
    fn trim(&mut self, read_by_all: u64) -> usize {
        let mut dropped = 0;
        while let Some(front_end) = self.droppable_front(read_by_all) {
            let Some(segment) = self.segments.pop_front() else {
                break;
            };
            self.first = front_end;
            let mut records = segment.records;
            records.clear();
            self.spare = Some(records);
            dropped += 1;
        }
        dropped
    }

    /// The end offset of the oldest segment when it could be dropped for groups that have read
    /// up to `read_by_all`.
    fn droppable_front(&self, read_by_all: u64) -> Option<u64> {
        let front = self.segments.front()?;
        let front_end = self.first + front.records.len() as u64;
        // The last segment is never dropped: appends go there.
        let full = front.records.len() == SEGMENT && self.segments.len() > 1;
        let settled = front.unsettled.load(Ordering::SeqCst) == 0;
        let enough_after = self.end - front_end >= self.retained;
        (full && settled && enough_after && read_by_all >= front_end).then_some(front_end)
    }

    /// The record at `offset`, and the count its segment keeps of unacknowledged reads.
    pub(crate) fn get(&self, offset: u64) -> Option<(&Message, &AtomicUsize)> {
        let index = usize::try_from(offset.checked_sub(self.first)?).ok()?;
        let segment = self.segments.get(index / SEGMENT)?;
        Some((segment.records.get(index % SEGMENT)?, &segment.unsettled))
    }

    /// The offset of the first record kept: where a group that joins now starts from the
    /// earliest.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// The offset the next record gets: where a group that joins now starts from the latest.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(retained: usize, records: usize) -> Log {
        let mut log = Log::new(retained);
        for i in 0..records {
            assert_eq!(log.append(Message::new(i.to_string())), i as u64);
        }
        log
    }

    #[test]
    fn appending_many_fills_segment_after_segment_in_order() {
        let mut log = filled(usize::MAX, 10);
        let mut messages: Vec<_> = (10..SEGMENT * 2 + 5)
            .map(|i| Message::new(i.to_string()))
            .collect();
        log.append_all(&mut messages, || 0);
        assert!(messages.is_empty());
        assert_eq!(log.end(), (SEGMENT * 2 + 5) as u64);
        assert_eq!(log.segments.len(), 3);
        for offset in [9, 10, SEGMENT - 1, SEGMENT, SEGMENT * 2 + 4] {
            let (record, _) = log.get(offset as u64).unwrap();
            assert_eq!(record.payload, offset.to_string());
        }
    }

    #[test]
    fn offsets_cross_segments() {
        let log = filled(usize::MAX, SEGMENT * 2 + 3);
        assert_eq!(log.end(), (SEGMENT * 2 + 3) as u64);
        let (last, _) = log.get((SEGMENT * 2 + 2) as u64).unwrap();
        assert_eq!(last.payload, (SEGMENT * 2 + 2).to_string());
        assert!(log.get(log.end()).is_none());
    }

    #[test]
    fn a_segment_is_dropped_only_once_read_acknowledged_and_old_enough() {
        let mut log = filled(SEGMENT, SEGMENT * 2);
        let (_, unsettled) = log.get(5).unwrap();
        unsettled.fetch_add(1, Ordering::SeqCst);
        assert_eq!(log.trim(log.end()), 0, "an unacknowledged read keeps it");
        log.get(5).unwrap().1.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(
            log.trim(SEGMENT as u64 - 1),
            0,
            "a group has not read it all"
        );
        assert!(log.may_trim());
        assert_eq!(log.trim(SEGMENT as u64), 1);
        assert_eq!(log.first(), SEGMENT as u64);
        assert!(log.get(0).is_none());
        assert_eq!(
            log.get(SEGMENT as u64).unwrap().0.payload,
            SEGMENT.to_string()
        );
        assert_eq!(log.trim(log.end()), 0, "the retained records stay");
        assert_eq!(log.append(Message::new("next")), (SEGMENT * 2) as u64);
        assert_eq!(log.get((SEGMENT * 2) as u64).unwrap().0.payload, "next");
        assert!(
            log.spare.is_none(),
            "the dropped segment's buffer was reused"
        );
    }

    #[test]
    fn a_caught_up_backlog_is_dropped_at_once_down_to_the_retained() {
        let mut log = filled(SEGMENT, SEGMENT * 6);
        assert_eq!(log.trim(log.end()), 5);
        assert_eq!(log.first(), (SEGMENT * 5) as u64);
        assert_eq!(log.trim(log.end()), 0, "the last segment is never dropped");
    }
}
