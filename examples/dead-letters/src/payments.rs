//! The payment service: charges every order, at least once, as group `payments`.
//!
//! Its handler fails in two ways. The (simulated) payment gateway's fraud check times out the
//! first time it sees a large order: a transient failure, and the retry succeeds. An order in
//! a currency without an exchange rate fails on every attempt: a poison message, retried
//! `MAX_ATTEMPTS` times with backoff and then moved to the dead-letter topic
//! `orders.payments.dlq` with the reason. An order with a negative amount can never succeed,
//! and the handler says so (`HandlerError::permanent`): it is dead-lettered without retries.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use broker::{Broker, HandlerError, HandlerResult, Received, RetryPolicy, Running, TopicSpec};
use tokio::sync::Notify;

use crate::orders::{orders, OrderPlaced};

/// The consumer group of the payment service.
pub const GROUP: &str = "payments";

/// Handler calls per message, the first included, before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 3;

/// Orders above this amount (in cents) trip the gateway's slow fraud check on first sight.
const FRAUD_CHECK_CENTS: i64 = 50_000;

/// Currencies the payment service can convert.
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// A short retry policy, so that the example finishes quickly: 50 ms, then 100 ms, ...
/// at most 500 ms between attempts, 3 attempts, then the dead-letter topic.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        jitter: 0.2,
        max_attempts: MAX_ATTEMPTS,
        dead_letter: true,
    }
}

/// What the payment service did, by order id.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
    changed: Notify,
}

#[derive(Default)]
struct LedgerState {
    attempts: HashMap<String, u32>,
    charged: BTreeSet<String>,
    given_up: BTreeSet<String>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Orders charged so far.
    pub fn charged(&self) -> BTreeSet<String> {
        self.lock().charged.clone()
    }

    /// Orders the service gave up on (they go to the dead-letter topic).
    pub fn given_up(&self) -> BTreeSet<String> {
        self.lock().given_up.clone()
    }

    /// Waits until every order in `ids` was either charged or given up on.
    pub async fn settled(&self, ids: &BTreeSet<String>) {
        loop {
            let changed = self.changed.notified();
            {
                let state = self.lock();
                if ids
                    .iter()
                    .all(|id| state.charged.contains(id) || state.given_up.contains(id))
                {
                    return;
                }
            }
            changed.await;
        }
    }

    /// Counts one more attempt at `order` and returns its number (1 for the first).
    fn attempt(&self, order: &str) -> u32 {
        let mut state = self.lock();
        let attempts = state.attempts.entry(order.to_owned()).or_insert(0);
        *attempts += 1;
        *attempts
    }

    fn record(&self, order: &str, charged: bool) {
        let mut state = self.lock();
        if charged {
            state.charged.insert(order.to_owned());
        } else {
            state.given_up.insert(order.to_owned());
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// Charges one order; `Err` is a failure the runner retries (or dead-letters).
async fn charge(ledger: &Ledger, order: &OrderPlaced) -> HandlerResult {
    let attempt = ledger.attempt(&order.id);
    let failure = if order.amount_cents <= 0 {
        // Retrying cannot fix this: dead-letter it now.
        let reason = format!("invalid amount {}", order.amount());
        say!(
            "payments:      order {} refused: {reason}; straight to the dead-letter topic",
            order.id
        );
        ledger.record(&order.id, false);
        return Err(HandlerError::permanent(reason));
    } else if !CURRENCIES.contains(&order.currency.as_str()) {
        format!("no exchange rate for {}", order.currency)
    } else if order.amount_cents > FRAUD_CHECK_CENTS && attempt == 1 {
        "payment gateway timed out (fraud check still running)".to_owned()
    } else {
        // The gateway call would go here.
        tokio::time::sleep(Duration::from_millis(5)).await;
        say!(
            "payments:      charged order {} ({} for {}) on attempt {attempt}",
            order.id,
            order.amount(),
            order.customer
        );
        ledger.record(&order.id, true);
        return Ok(());
    };
    if attempt < MAX_ATTEMPTS {
        say!(
            "payments:      order {} failed on attempt {attempt} of {MAX_ATTEMPTS}: {failure}; \
             will retry",
            order.id
        );
    } else {
        say!(
            "payments:      order {} failed on attempt {attempt} of {MAX_ATTEMPTS}: {failure}; \
             giving up, to the dead-letter topic",
            order.id
        );
        ledger.record(&order.id, false);
    }
    Err(failure.into())
}

/// Declares the orders topic with the payment group, whichever service starts first: brokers
/// that keep messages only for groups that exist (RabbitMQ, Pub/Sub) then keep the orders
/// placed before the payment service first subscribed.
pub async fn declare_topology(broker: &Broker) -> anyhow::Result<()> {
    broker
        .ensure_topic(&TopicSpec::new(orders().name()).group(GROUP))
        .await
        .context("declaring the orders topic")
}

/// Starts the payment service.
pub async fn payment_service(broker: &Broker, ledger: Arc<Ledger>) -> anyhow::Result<Running> {
    let running = broker
        .subscriber(&orders(), GROUP)
        .retry(retry_policy())
        .concurrency(4) // other customers' orders flow while one is being retried
        .at_least_once(move |order: Received<OrderPlaced>| {
            let ledger = ledger.clone();
            async move { charge(&ledger, &order.value).await }
        })
        .await?;
    Ok(running)
}
