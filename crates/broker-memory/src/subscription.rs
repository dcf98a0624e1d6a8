//! One member of a group: the stream of deliveries it hands out and their acknowledgements.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use broker_api::{
    AckKey, AckTable, Acker, Delivery, DeliveryStream, Message, Metadata, Position, Result,
    Settlement,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::Notify;
use tokio_util::sync::ReusableBoxFuture;

use crate::group::{Group, Handout};
use crate::topic::Topic;

/// Most deliveries taken from the group under one lock. The topic's log stays read-locked
/// while they are built. When publishers appended to the log itself and waited for that lock,
/// 32 measured fastest (1->1 at-least-once 2.46 M msg/s against 1.79 M at 64 and 1.98 M at 16;
/// 1->4 1.03 M against 0.81 M at 64); since they append to the topic's inbox, 128 measures
/// the same as 32.
const BATCH: usize = 32;

/// A member of a group: what it may hold and whether it still reads.
#[derive(Debug)]
pub(crate) struct Member {
    topic: Arc<Topic>,
    /// The topic's name for this member's deliveries: a copy of its own, so that members
    /// reading on different cores do not share one reference count per delivery.
    topic_name: Arc<str>,
    group: Arc<Group>,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    room: Notify,
    stopped: AtomicBool,
}

/// [`AckKey::scope`] of a delivery whose message has a key: its acknowledgement frees the key
/// for the next message with it, at once.
const KEYED: u64 = 1;

impl Member {
    pub(crate) fn new(topic: Arc<Topic>, group: Arc<Group>, max_in_flight: usize) -> Self {
        Member {
            topic_name: Arc::from(&*topic.name),
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
        self.flush_deferred();
        self.stopped.store(true, Ordering::SeqCst);
        self.topic.wake_all();
        self.room.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.topic.is_deleted()
    }

    /// How many more deliveries this member may hold.
    fn room(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.in_flight.load(Ordering::SeqCst))
    }

    /// Waits until the member may have work: room was freed, or the group may have messages to
    /// hand out, or the member stopped. Wakes spuriously at most once per change.
    async fn wait(self: Arc<Self>) {
        let changed = self.topic.changed();
        let room_freed = self.room.notified();
        tokio::pin!(changed, room_freed);
        changed.as_mut().enable();
        room_freed.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        if self.room() == 0 {
            // The topic's change wakes a member that stops (the topic deleted) too.
            tokio::select! {
                () = room_freed => {}
                () = changed => {}
            }
            return;
        }
        let _waiting = self.topic.wait_for_change();
        let may_have_work = self.topic.with_log(|log| {
            self.group.apply_deferred(log);
            self.group.may_have_work(log.end())
        });
        if !may_have_work {
            changed.await;
        }
    }

    /// Takes up to `room` messages from the group into `out`; returns how many.
    fn take(&self, room: usize, scratch: &mut Vec<Handout>, out: &mut VecDeque<Taken>) -> usize {
        self.topic.with_log(|log| {
            self.group.apply_deferred(log);
            self.group.take(log, room.min(BATCH), scratch);
            let taken = scratch.len();
            self.in_flight.fetch_add(taken, Ordering::SeqCst);
            for Handout { offset, attempt } in scratch.drain(..) {
                if let Some((record, _)) = log.get(offset) {
                    out.push_back(self.taken(offset, record, attempt));
                }
            }
            taken
        })
    }

    fn taken(&self, offset: u64, record: &Message, attempt: u32) -> Taken {
        let metadata = Metadata {
            topic: self.topic_name.clone(),
            key: record.key.clone(),
            headers: record.headers.clone(),
            message_id: Some(record.id.clone()),
            content_type: record.content_type.clone(),
            publish_time: Some(record.timestamp),
            attempt: Some(attempt),
            position: Position::Memory { offset },
        };
        let scope = if record.key.is_some() { KEYED } else { 0 };
        Taken {
            payload: record.payload.clone(),
            metadata,
            key: AckKey { scope, offset },
        }
    }

    /// Gives back to the group what this member took and never handed out, in order, without
    /// counting it as delivered.
    fn give_back(&self, taken: &mut VecDeque<Taken>) {
        let count = taken.len();
        if count == 0 {
            return;
        }
        self.group
            .give_back(taken.drain(..).map(|message| message.key.offset));
        self.topic.wake();
        self.release(count);
    }

    /// `count` deliveries are no longer held.
    fn release(&self, count: usize) {
        let held = self.in_flight.fetch_sub(count, Ordering::SeqCst);
        if held == self.max_in_flight {
            self.room.notify_one();
        }
    }

    /// Applies the group's deferred acknowledgements, taking the log's lock if there are any.
    fn flush_deferred(&self) {
        if self.group.has_deferred() {
            self.topic.with_log(|log| self.group.apply_deferred(log));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.flush_deferred();
    }
}

/// Each delivery settles with its group by its offset: the key's `offset`. A delivery that is
/// handed out holds its segment (counted unsettled), so the record is there when it settles.
impl AckTable for Member {
    fn settle(&self, key: AckKey, settlement: Settlement) -> Result<()> {
        let offset = key.offset;
        let ready = match settlement {
            Settlement::Ack if key.scope == KEYED => {
                self.topic.with_log(|log| self.group.ack_in(log, offset))
            }
            Settlement::Ack => {
                self.group.defer_ack(offset);
                false
            }
            Settlement::Nack | Settlement::Dropped => {
                self.group.nack(offset);
                true
            }
        };
        if ready {
            self.topic.wake();
        }
        self.release(1);
        Ok(())
    }
}

/// A message taken from the group and not handed out yet: its delivery but for the
/// acknowledgement handle, made when it is handed out, so that one given back unseen (the
/// member stopped first) is not counted as an attempt.
struct Taken {
    payload: Bytes,
    metadata: Metadata,
    key: AckKey,
}

/// The deliveries of one member, in the order the group hands them out.
///
/// Messages already in the topic are taken without waiting or allocating a future; only when
/// there is nothing to take does the stream park on a reusable wait future.
pub(crate) struct MemoryStream {
    member: Arc<Member>,
    buffered: VecDeque<Taken>,
    handouts: Vec<Handout>,
    waiting: ReusableBoxFuture<'static, ()>,
    is_waiting: bool,
}

impl MemoryStream {
    pub(crate) fn new(member: Arc<Member>) -> Self {
        let waiting = ReusableBoxFuture::new(member.clone().wait());
        MemoryStream {
            member,
            buffered: VecDeque::new(),
            handouts: Vec::new(),
            waiting,
            is_waiting: false,
        }
    }
}

impl Stream for MemoryStream {
    type Item = Result<Delivery>;

    /// A yield point of tokio's cooperative scheduling, like its channels: a subscriber
    /// reading a backlog lets the other tasks of its worker (publishers among them) run once
    /// its budget is spent.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        let this = &mut *self;
        loop {
            // Before what is buffered: once the backend closed or the topic was deleted,
            // nothing more is handed out.
            if this.member.is_stopped() {
                this.member.give_back(&mut this.buffered);
                return Poll::Ready(None);
            }
            if let Some(Taken {
                payload,
                metadata,
                key,
            }) = this.buffered.pop_front()
            {
                budget.made_progress();
                let acker = Acker::keyed(this.member.clone(), key);
                return Poll::Ready(Some(Ok(Delivery::new(payload, metadata, acker))));
            }
            if this.is_waiting {
                ready!(this.waiting.poll(cx));
                this.is_waiting = false;
                continue;
            }
            let room = this.member.room();
            if room > 0
                && this
                    .member
                    .take(room, &mut this.handouts, &mut this.buffered)
                    > 0
            {
                continue;
            }
            this.waiting.set(this.member.clone().wait());
            this.is_waiting = true;
        }
    }
}

impl DeliveryStream for MemoryStream {
    /// Stops reading and gives back at once what was taken and not handed out: the group's
    /// other members get it (and its keys) while the handlers still running finish. Each was
    /// the next message of its key (later ones wait behind it), so no key's order changes.
    fn stop_intake(&mut self) {
        self.member.stop();
        self.is_waiting = false;
        self.member.give_back(&mut self.buffered);
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        self.member.stop();
        self.is_waiting = false;
        self.member.give_back(&mut self.buffered);
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        self.member.stop();
        self.member.give_back(&mut self.buffered);
    }
}
