//! One member of a group: the stream of deliveries it hands out and their acknowledgements.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use broker_api::completion::{self, Completion};
use broker_api::{Acknowledge, Delivery, DeliveryStream, Metadata, Position, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::Notify;

use crate::group::{Group, Handout};
use crate::topic::{Record, Topic};

/// Most deliveries taken from the group under one lock.
const BATCH: usize = 64;

/// A member of a group: what it may hold and whether it still reads.
#[derive(Debug)]
pub(crate) struct Member {
    topic: Arc<Topic>,
    group: Arc<Group>,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    room: Notify,
    stopped: AtomicBool,
}

impl Member {
    pub(crate) fn new(topic: Arc<Topic>, group: Arc<Group>, max_in_flight: usize) -> Self {
        Member {
            topic,
            group,
            max_in_flight: max_in_flight.max(1),
            in_flight: AtomicUsize::new(0),
            room: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// Stops intake: the stream ends at its next poll.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.topic.changed.notify_waiters();
        self.room.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.topic.is_deleted()
    }

    /// Waits for the next deliveries this member may hold; `None` once stopped.
    async fn next_batch(self: Arc<Self>) -> Option<Vec<Delivery>> {
        loop {
            let changed = self.topic.changed.notified();
            let room_freed = self.room.notified();
            tokio::pin!(changed, room_freed);
            changed.as_mut().enable();
            room_freed.as_mut().enable();
            if self.is_stopped() {
                return None;
            }
            let room = self
                .max_in_flight
                .saturating_sub(self.in_flight.load(Ordering::SeqCst));
            if room == 0 {
                room_freed.await;
                continue;
            }
            let mut handouts = Vec::new();
            self.topic.with_records(|records| {
                self.group.take(records, room.min(BATCH), &mut handouts);
            });
            if handouts.is_empty() {
                changed.await;
                continue;
            }
            self.in_flight.fetch_add(handouts.len(), Ordering::SeqCst);
            return Some(
                handouts
                    .into_iter()
                    .map(|handout| self.delivery(handout))
                    .collect(),
            );
        }
    }

    fn delivery(self: &Arc<Self>, Handout { record, attempt }: Handout) -> Delivery {
        let metadata = Metadata {
            topic: self.topic.name.clone(),
            key: record.key.clone(),
            headers: record.headers.clone(),
            message_id: Some(record.id.clone()),
            content_type: record.content_type.clone(),
            publish_time: Some(record.timestamp),
            attempt: Some(attempt),
            position: Position::Memory {
                offset: record.offset,
            },
        };
        let payload = record.payload.clone();
        Delivery::new(
            payload,
            metadata,
            Box::new(MemoryAcker {
                member: self.clone(),
                record,
                settled: false,
            }),
        )
    }

    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == self.max_in_flight {
            self.room.notify_one();
        }
    }
}

/// Settles one delivery with its group. Dropped unsettled, it nacks.
struct MemoryAcker {
    member: Arc<Member>,
    record: Arc<Record>,
    settled: bool,
}

impl MemoryAcker {
    fn settle(&mut self, handled: bool) {
        self.settled = true;
        let member = &self.member;
        if handled {
            if member.group.ack(&self.record) {
                member.topic.changed.notify_waiters();
            }
        } else {
            member.group.nack(&self.record);
            member.topic.changed.notify_waiters();
        }
        member.release();
    }
}

impl Acknowledge for MemoryAcker {
    fn ack(mut self: Box<Self>) -> Completion<'static, ()> {
        self.settle(true);
        completion::ready(Ok(()))
    }

    fn nack(mut self: Box<Self>) -> Completion<'static, ()> {
        self.settle(false);
        completion::ready(Ok(()))
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(false);
        }
    }
}

/// The deliveries of one member, in the order the group hands them out.
pub(crate) struct MemoryStream {
    member: Arc<Member>,
    buffered: VecDeque<Delivery>,
    fetching: Option<BoxFuture<'static, Option<Vec<Delivery>>>>,
}

impl MemoryStream {
    pub(crate) fn new(member: Arc<Member>) -> Self {
        MemoryStream {
            member,
            buffered: VecDeque::new(),
            fetching: None,
        }
    }
}

impl Stream for MemoryStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(delivery) = self.buffered.pop_front() {
                return Poll::Ready(Some(Ok(delivery)));
            }
            let member = self.member.clone();
            let fetching = self
                .fetching
                .get_or_insert_with(|| member.next_batch().boxed());
            match fetching.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(batch) => {
                    self.fetching = None;
                    match batch {
                        Some(batch) => self.buffered.extend(batch),
                        None => return Poll::Ready(None),
                    }
                }
            }
        }
    }
}

impl DeliveryStream for MemoryStream {
    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        self.member.stop();
        self.fetching = None;
        self.buffered.clear(); // dropped unsettled: delivered again to the group
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        self.member.stop();
    }
}
