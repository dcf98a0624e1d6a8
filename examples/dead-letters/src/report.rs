//! Reads the payment service's dead letters and prints them with their reasons, leaving those
//! of this run where they are (unacknowledged) so that `brokerctl consume orders.payments.dlq
//! --group payments` shows them too. After a run of the services, those of earlier runs are
//! acknowledged once printed: held as well, they would pile up from run to run until they
//! filled the subscription's `max_in_flight` and this run's could not be read.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use broker::runner::dead_letter_headers;
use broker::{naming, Broker, Incoming, Metadata, Topic};
use futures::StreamExt as _;

use crate::orders::{orders, OrderPlaced};
use crate::payments::GROUP;

/// What becomes of the dead letters of earlier runs once printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// Left in place, as this run's are (the `report` mode, which only shows).
    Keep,
    /// Acknowledged, so that they do not pile up (after a run of the services).
    Acknowledge,
}

/// Prints the dead letters of the `payments` group until those of `expected` orders were seen
/// (or `patience` passed; with no `expected` order, every dead letter there is, until
/// `patience` passed), and returns the ids of the orders seen.
pub async fn print_dead_letters(
    broker: &Broker,
    expected: &BTreeSet<String>,
    patience: Duration,
    earlier: Earlier,
) -> anyhow::Result<BTreeSet<String>> {
    let name = naming::dead_letter_topic(orders().name(), GROUP);
    say!("dead letters in {name} (read as group {GROUP}):");
    // The dead-letter topic's own group is `payments`, like the subscription that filled it.
    let mut letters = broker
        .subscriber(&Topic::<OrderPlaced>::json(name.as_str()), GROUP)
        .manual()
        .await
        .with_context(|| format!("reading {name}"))?;
    let mut seen = BTreeSet::new();
    // Held unacknowledged until the stream is closed, then given back to the group.
    let mut held: Vec<Incoming<OrderPlaced>> = Vec::new();
    let reading = async {
        while expected.is_empty() || !expected.is_subset(&seen) {
            let Some(letter) = letters.next().await else {
                break;
            };
            let letter = letter.with_context(|| format!("reading {name}"))?;
            let this_run = match letter.value() {
                Ok(order) => {
                    let this_run = expected.contains(&order.id);
                    let earlier = if this_run || expected.is_empty() {
                        ""
                    } else {
                        " (earlier run)"
                    };
                    if seen.insert(order.id.clone()) {
                        say!("  order {}{earlier}: {}", order.id, order.amount());
                        print_reason(letter.metadata());
                    }
                    this_run
                }
                Err(e) => {
                    say!("  a dead letter that is not an order: {e}");
                    false
                }
            };
            if this_run || earlier == Earlier::Keep {
                held.push(letter);
            } else {
                letter
                    .ack()
                    .await
                    .with_context(|| format!("acknowledging an earlier dead letter in {name}"))?;
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(patience, reading).await;
    letters
        .close()
        .await
        .with_context(|| format!("closing {name}"))?;
    drop(held);
    match outcome {
        Ok(result) => result?,
        Err(_) => say!("  (no more dead letters after {patience:?})"),
    }
    say!("they stay there: brokerctl consume {name} --group {GROUP}");
    Ok(seen)
}

fn print_reason(metadata: &Metadata) {
    let header = |name| metadata.headers.get(name).unwrap_or("?");
    say!(
        "    reason: {}\n    from topic {} as group {} after {} attempt(s)",
        header(dead_letter_headers::REASON),
        header(dead_letter_headers::TOPIC),
        header(dead_letter_headers::GROUP),
        header(dead_letter_headers::ATTEMPTS),
    );
}
