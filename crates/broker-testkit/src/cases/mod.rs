//! The conformance cases. Each takes the harness, connects what it needs, and panics with a
//! message naming what went wrong. Cases whose guarantee the backend's capabilities do not
//! promise say they were skipped.

mod failures;
mod flow;
mod groups;
mod lifecycle;
mod topology;

pub use failures::{
    dead_letter_off_stops_subscription, handler_error_is_retried, manual_nack_redelivers,
    panicking_handler_dead_lettered, poison_message_dead_lettered,
    undecodable_payload_dead_lettered,
};
pub use flow::{
    batch_publish, concurrent_publishers_lose_nothing, empty_binary_and_large_payloads,
    oversized_payload_rejected, roundtrip_payload_key_headers, topics_are_isolated,
};
pub use groups::{
    declared_group_keeps_early_messages, every_group_gets_every_message, group_members_share_work,
    new_group_starts_from_earliest, per_key_order, per_key_order_across_members, start_from_latest,
};
pub use lifecycle::{
    abandoned_handler_is_redelivered, at_most_once_does_not_redeliver, bounded_in_flight,
    broker_restart_loses_nothing, cancel_and_resubscribe, capabilities_are,
    close_flushes_sent_messages, concurrent_close_does_not_deadlock, publish_after_close_fails,
    resubscribe_after_close_loses_nothing,
};
pub use topology::{delete_topic_removes_it, missing_topic_is_not_found};

use broker_api::{Broker, Publisher, Topic};

use crate::Harness;

/// Connects or panics with the reason.
async fn connect(harness: &dyn Harness) -> Broker {
    harness
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the broker under test: {e}"))
}

/// Publishes `count` text messages `"<prefix>-<i>"` and waits for every confirmation.
async fn publish_texts(publisher: &Publisher<String>, prefix: &str, count: usize) -> Vec<String> {
    let values: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    publisher
        .publish_batch(&values)
        .await
        .unwrap_or_else(|e| panic!("publishing {count} messages failed: {e}"));
    values
}

/// Sorted values of what arrived, duplicates removed.
fn distinct_values(received: &[broker_api::Received<String>]) -> Vec<String> {
    let mut values: Vec<String> = received.iter().map(|r| r.value.clone()).collect();
    values.sort();
    values.dedup();
    values
}

/// The text topic called `name`.
fn text_topic(name: &str) -> Topic<String> {
    Topic::text(name)
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}
