//! Reads the payment service's dead letters and prints them with their reasons, leaving them
//! where they are (unacknowledged) so that `brokerctl consume orders.payments.dlq --group
//! payments` shows them too.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use broker::runner::dead_letter_headers;
use broker::{naming, Broker, Incoming, Metadata, Topic};
use futures::StreamExt as _;

use crate::orders::{orders, OrderPlaced};
use crate::payments::GROUP;

/// Prints the dead letters of the `payments` group until those of `expected` orders were seen
/// (or `patience` passed), and returns the ids of the orders seen.
pub async fn print_dead_letters(
    broker: &Broker,
    expected: &BTreeSet<String>,
    patience: Duration,
) -> anyhow::Result<BTreeSet<String>> {
    let name = naming::dead_letter_topic(orders().name(), GROUP);
    println!("dead letters in {name} (read as group {GROUP}):");
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
        while !expected.is_subset(&seen) {
            let Some(letter) = letters.next().await else {
                break;
            };
            let letter = letter.with_context(|| format!("reading {name}"))?;
            match letter.value() {
                Ok(order) => {
                    let earlier = if expected.contains(&order.id) {
                        ""
                    } else {
                        " (earlier run)"
                    };
                    if seen.insert(order.id.clone()) {
                        println!("  order {}{earlier}: {}", order.id, order.amount());
                        print_reason(letter.metadata());
                    }
                }
                Err(e) => println!("  a dead letter that is not an order: {e}"),
            }
            held.push(letter);
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
        Err(_) => println!("  (no more dead letters after {patience:?})"),
    }
    println!("they stay there: brokerctl consume {name} --group {GROUP}");
    Ok(seen)
}

fn print_reason(metadata: &Metadata) {
    let header = |name| metadata.headers.get(name).unwrap_or("?");
    println!(
        "    reason: {}\n    from topic {} as group {} after {} attempt(s)",
        header(dead_letter_headers::REASON),
        header(dead_letter_headers::TOPIC),
        header(dead_letter_headers::GROUP),
        header(dead_letter_headers::ATTEMPTS),
    );
}
