//! One consumer per subscription, polled by the subscription's stream.
//!
//! The stream polls librdkafka without blocking (which also runs the rebalance callbacks:
//! offsets of revoked partitions are committed there, asynchronously, and librdkafka finishes
//! those commits before the group rebalances), reads while fewer than `max_in_flight`
//! deliveries are unsettled, stores the handled prefix of each partition (committed by
//! librdkafka every `auto.commit.interval.ms`) and rewinds partitions on nack. While the stream
//! does not read, [`crate::keep_alive`] polls the consumer with its partitions
//! paused. Closing commits synchronously and leaves the group on a thread of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Delivery, Error, ErrorKind, Result, StartFrom};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::ack::Shared;
use crate::context::ClientLog;
use crate::error::{from_kafka, BACKEND};
use crate::inbound::{self, PayloadBuffer};
use crate::keep_alive;

/// How often handled offsets are stored at most (librdkafka commits stored offsets later).
pub(crate) const STORE_INTERVAL: Duration = Duration::from_millis(100);

/// The consumer type of a subscription.
pub(crate) type KafkaConsumer = BaseConsumer<Hooks>;

/// The callbacks of a subscription's consumer: logs, and commits on rebalance.
pub(crate) struct Hooks {
    log: ClientLog,
    shared: Arc<Shared>,
}

impl Hooks {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Hooks {
            log: ClientLog::new("consumer"),
            shared,
        }
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(self.shared.topic())
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for Hooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl ConsumerContext for Hooks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = self.partitions(list);
                let positions = self.shared.revoked(&partitions);
                tracing::info!(topic = %self.shared.topic(), group = self.shared.group(), ?partitions,
                    "partitions revoked; committing what was handled");
                if consumer.assignment_lost() {
                    tracing::warn!(topic = %self.shared.topic(), group = self.shared.group(),
                        "assignment lost (session timed out): unacknowledged messages will be delivered again");
                    return;
                }
                commit(consumer, &self.shared, &positions, CommitMode::Async);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.shared.topic(), group = self.shared.group(), %error,
                    "rebalance failed; librdkafka retries");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.partitions(list);
            tracing::info!(topic = %self.shared.topic(), group = self.shared.group(), ?partitions,
                "partitions assigned");
            self.shared.assigned(&partitions);
            keep_alive::assigned(consumer, &self.shared, list);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(topic = %self.shared.topic(), group = self.shared.group(),
                offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(error) => tracing::warn!(topic = %self.shared.topic(), group = self.shared.group(),
                %error, "offset commit failed; a later commit covers it while this member owns the partition, else its messages are delivered again"),
        }
    }
}

/// Stores `positions` and commits them.
fn commit(consumer: &KafkaConsumer, shared: &Shared, positions: &[(i32, i64)], mode: CommitMode) {
    if positions.is_empty() {
        return;
    }
    let Some(list) = position_list(shared.topic(), positions) else {
        return;
    };
    if let Err(error) = consumer.store_offsets(&list) {
        tracing::debug!(topic = %shared.topic(), %error, "offsets not stored (partitions no longer assigned)");
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::warn!(topic = %shared.topic(), group = shared.group(), %error, ?positions,
            "commit failed; messages after the last commit will be delivered again");
    }
}

/// Stores `positions` for librdkafka's next automatic commit.
pub(crate) fn store(consumer: &KafkaConsumer, shared: &Shared, positions: &[(i32, i64)]) {
    if positions.is_empty() {
        return;
    }
    if let Some(list) = position_list(shared.topic(), positions) {
        if let Err(error) = consumer.store_offsets(&list) {
            tracing::debug!(topic = %shared.topic(), %error,
                "offsets not stored (partitions no longer assigned); they will be delivered again");
        }
    }
}

fn position_list(topic: &str, positions: &[(i32, i64)]) -> Option<TopicPartitionList> {
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for &(partition, offset) in positions {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .ok()?;
    }
    Some(list)
}

/// For a new group that starts from the latest message: commits the current end of every
/// partition that has no committed offset yet, before joining, so that every message
/// published after `subscribe` returned is delivered (librdkafka would otherwise look the end
/// up only once partitions are assigned, missing what was published in between). When the
/// commit is refused (the group has members already), `auto.offset.reset=latest` decides.
pub(crate) fn start_at_end(consumer: &KafkaConsumer, topic: &str, timeout: Duration) -> Result<()> {
    let fail = |e: KafkaError| {
        from_kafka(
            "subscribe",
            format!("cannot read the end of topic {topic}"),
            e,
        )
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(fail)?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(list.clone(), timeout)
        .map_err(fail)?;
    let mut found = Vec::new();
    for element in committed.elements_for_topic(topic) {
        if element.offset() == Offset::Invalid {
            let (_, high) = consumer
                .fetch_watermarks(topic, element.partition(), timeout)
                .map_err(fail)?;
            found.push((element.partition(), high));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    // Another new member may have committed its start meanwhile (it looked the ends up
    // earlier, so they may be lower): those partitions keep it, and nothing published between
    // the two looks is skipped. Looked at again just before committing, to keep that window
    // short.
    let committed = consumer.committed_offsets(list, timeout).map_err(fail)?;
    let mut ends = TopicPartitionList::new();
    for (partition, high) in found {
        let still_none = committed
            .find_partition(topic, partition)
            .is_none_or(|element| element.offset() == Offset::Invalid);
        if still_none {
            ends.add_partition_offset(topic, partition, Offset::Offset(high))
                .map_err(fail)?;
        }
    }
    if ends.count() > 0 {
        if let Err(error) = consumer.commit(&ends, CommitMode::Sync) {
            tracing::debug!(topic, %error, "start position not committed; auto.offset.reset=latest applies");
        }
    }
    Ok(())
}

/// The start position setting, for logs.
pub(crate) fn describe(start_from: StartFrom) -> &'static str {
    match start_from {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    }
}

/// The most records read in one go: bounds the time between two looks at a stop or a rewind.
const MAX_BATCH: usize = 64;

/// Reads what librdkafka has ready, up to `room` records (and [`MAX_BATCH`]), without
/// blocking, and appends them to `out` as deliveries with their epochs, their payloads copied
/// through `payloads`. Returns how many records were read (zero when nothing is ready; records of a
/// partition about to be rewound are read but not handed out); fails only when the consumer
/// cannot continue.
///
/// Each record becomes a delivery and is released as soon as it is polled: librdkafka
/// allocates a record's handle when it is polled and its parsed headers when they are first
/// read, and frees both with the record, so holding one record at a time reuses the same
/// memory (the allocator's per-thread cache) where a batch of live records would miss it.
pub(crate) fn read_ready(
    consumer: &KafkaConsumer,
    shared: &Arc<Shared>,
    room: usize,
    payloads: &mut PayloadBuffer,
    out: &mut VecDeque<(u64, Delivery)>,
) -> Result<usize> {
    let limit = room.min(MAX_BATCH);
    let topic = shared.topic();
    let mut read = 0;
    // A poll that served an event (rebalance, commit result) also returns nothing: only two
    // empty polls in a row say that the queue is empty.
    let mut empty_polls = 0;
    while read < limit && empty_polls < 2 {
        match consumer.poll(Duration::ZERO) {
            None => empty_polls += 1,
            Some(Ok(record)) => {
                empty_polls = 0;
                read += 1;
                if let Some((epoch, acker)) =
                    shared.admit_in_epoch(record.partition(), record.offset())
                {
                    let payload = payloads.copy(record.payload().unwrap_or_default());
                    let metadata = inbound::metadata(&record, topic);
                    out.push_back((epoch, Delivery::new(payload, metadata, acker)));
                }
            }
            Some(Err(error)) if ends_subscription(&error) => return Err(ended(shared, error)),
            // Transient: logged by the client context; librdkafka retries by itself.
            Some(Err(_)) => empty_polls = 0,
        }
    }
    Ok(read)
}

/// Whether a consumer error ends the subscription: librdkafka's fatal errors, and the broker
/// refusing these credentials the group or the topic, which librdkafka would retry for ever
/// (and report only once) while the subscription waited for records in silence.
pub(crate) fn ends_subscription(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            C::GroupAuthorizationFailed
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
        ),
        _ => false,
    }
}

/// The error ending a subscription whose consumer failed for good or was refused.
pub(crate) fn ended(shared: &Shared, error: KafkaError) -> Error {
    let (kind, what) = match error {
        KafkaError::MessageConsumptionFatal(_) => (ErrorKind::Other, "failed and cannot continue"),
        _ => (
            ErrorKind::Rejected,
            "was refused by the broker: check what these credentials may do on that group and topic",
        ),
    };
    Error::new(
        kind,
        format!(
            "the consumer of group {} on topic {} {what}",
            shared.group(),
            shared.topic()
        ),
    )
    .backend(BACKEND)
    .operation("consume")
    .source(error)
}

/// Does the seeks back that nacks (or records the keeper read while paused) asked for: stores
/// the oldest unsettled offsets, then seeks (without waiting: records read before the seek are
/// dropped by librdkafka).
pub(crate) fn rewind(consumer: &KafkaConsumer, shared: &Shared) {
    let rewinds = shared.take_rewinds();
    if rewinds.seeks.is_empty() {
        return;
    }
    store(consumer, shared, &rewinds.positions);
    for (partition, offset) in rewinds.seeks {
        if let Err(error) = consumer.seek(
            shared.topic(),
            partition,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            // Reading on past the records to read again would let later acks commit past them.
            tracing::warn!(topic = %shared.topic(), partition, offset, %error,
                "seek back failed; trying again before the partition is read further");
            shared.rewind_again(partition, offset);
        }
    }
}

/// Commits what was handled, synchronously, and leaves the group. Blocks: call it on a
/// thread of its own.
pub(crate) fn finish(consumer: KafkaConsumer, shared: &Shared) {
    let positions = shared.close();
    commit(&consumer, shared, &positions, CommitMode::Sync);
    tracing::debug!(topic = %shared.topic(), group = shared.group(), ?positions, "consumer leaving its group");
    // Dropping the consumer closes it: it leaves the group, running the revoke callback.
    drop(consumer);
}
