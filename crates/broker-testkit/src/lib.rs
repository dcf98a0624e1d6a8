//! # broker-testkit
//!
//! The conformance suite of the broker API: one set of async test cases that every backend must
//! pass, gated by [`Capabilities`](broker_api::Capabilities) where a broker cannot promise
//! something, plus helpers for tests against live brokers.
//!
//! A backend's test file implements [`Harness`] and expands the suite, which generates one
//! `#[tokio::test]` per case so that a failure names the case:
//!
//! ```ignore
//! struct Memory;
//! #[async_trait::async_trait]
//! impl broker_testkit::Harness for Memory {
//!     async fn connect(&self) -> broker_api::Result<broker_api::Broker> { /* ... */ }
//! }
//! broker_testkit::conformance_suite!(Some(Memory));
//! ```
//!
//! The harness expression is evaluated in every test; `None` skips (see [`live::require`]). The
//! broker-restart case is not part of the suite because it disturbs every other test: run it
//! with [`cases::broker_restart_loses_nothing`] on a harness that has the broker to itself
//! ([`live::Endpoint::exclusive`]; `conformance_suite!(@cases ...)` names single cases).

pub mod cases;
mod harness;
pub mod live;
pub mod proxy;
pub mod support;

pub use harness::{Harness, NoRestart};

/// The cases [`conformance_suite!`] runs, in order.
pub const CASES: &[&str] = &[
    "roundtrip_payload_key_headers",
    "concurrent_publishers_lose_nothing",
    "topics_are_isolated",
    "every_group_gets_every_message",
    "group_members_share_work",
    "handler_error_is_retried",
    "resubscribe_after_close_loses_nothing",
    "abandoned_handler_is_redelivered",
    "per_key_order",
    "per_key_order_across_members",
    "poison_message_dead_lettered",
    "panicking_handler_dead_lettered",
    "undecodable_payload_dead_lettered",
    "dead_letter_off_stops_subscription",
    "at_most_once_does_not_redeliver",
    "manual_nack_redelivers",
    "cancel_and_resubscribe",
    "concurrent_close_does_not_deadlock",
    "publish_after_close_fails",
    "delete_topic_removes_it",
    "missing_topic_is_not_found",
    "close_flushes_sent_messages",
    "empty_binary_and_large_payloads",
    "oversized_payload_rejected",
    "new_group_starts_from_earliest",
    "declared_group_keeps_early_messages",
    "start_from_latest",
    "batch_publish",
    "bounded_in_flight",
];

/// Generates one `#[tokio::test]` per conformance case for the harness expression (of type
/// `Option<impl Harness>`; `None` skips). Each case fails after a 3-minute guard instead of
/// hanging. `conformance_suite!(@cases harness; case, ...)` generates only the cases named,
/// e.g. `broker_restart_loses_nothing` with a harness that has the broker to itself.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            roundtrip_payload_key_headers,
            concurrent_publishers_lose_nothing,
            topics_are_isolated,
            every_group_gets_every_message,
            group_members_share_work,
            handler_error_is_retried,
            resubscribe_after_close_loses_nothing,
            abandoned_handler_is_redelivered,
            per_key_order,
            per_key_order_across_members,
            poison_message_dead_lettered,
            panicking_handler_dead_lettered,
            undecodable_payload_dead_lettered,
            dead_letter_off_stops_subscription,
            at_most_once_does_not_redeliver,
            manual_nack_redelivers,
            cancel_and_resubscribe,
            concurrent_close_does_not_deadlock,
            publish_after_close_fails,
            delete_topic_removes_it,
            missing_topic_is_not_found,
            close_flushes_sent_messages,
            empty_binary_and_large_payloads,
            oversized_payload_rejected,
            new_group_starts_from_earliest,
            declared_group_keeps_early_messages,
            start_from_latest,
            batch_publish,
            bounded_in_flight,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(harness) = $harness {
                    $crate::support::run_case(stringify!($case), $crate::cases::$case(&harness)).await;
                }
            }
        )*
    };
}
