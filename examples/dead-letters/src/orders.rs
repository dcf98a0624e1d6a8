//! The order service: places orders by publishing `OrderPlaced` events.

use anyhow::Context as _;
use broker::{Broker, Topic};
use serde::{Deserialize, Serialize};

/// A customer placed an order. Published by the order service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Unique per order (and per run of the example).
    pub id: String,
    /// Who ordered; the key, so one customer's orders are charged in order.
    pub customer: String,
    /// The amount in cents.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

impl OrderPlaced {
    /// `12.50 EUR`.
    pub fn amount(&self) -> String {
        format!(
            "{}.{:02} {}",
            self.amount_cents / 100,
            (self.amount_cents % 100).abs(),
            self.currency
        )
    }
}

/// The topic: JSON events keyed by customer.
pub fn orders() -> Topic<OrderPlaced> {
    Topic::json("orders").with_key(|order: &OrderPlaced| order.customer.clone())
}

/// Today's orders: most are fine, two are large (the payment gateway's fraud check times out
/// on their first charge), two are in a currency the payment service cannot convert (they
/// fail on every attempt), one has a negative amount (refused at once).
pub fn todays_orders(run: &str) -> Vec<OrderPlaced> {
    let orders = [
        ("alice", 1250, "EUR"),
        ("bob", 89_900, "EUR"),
        ("carol", 420, "USD"),
        ("alice", 5000, "ZWL"),
        ("dave", 1999, "GBP"),
        ("bob", 730, "EUR"),
        ("erin", 120_000, "USD"),
        ("carol", -500, "USD"),
        ("dave", 300, "XAU"),
        ("erin", 990, "EUR"),
    ];
    orders
        .iter()
        .enumerate()
        .map(|(n, (customer, amount_cents, currency))| OrderPlaced {
            id: format!("{run}-{}", n + 1),
            customer: (*customer).to_owned(),
            amount_cents: *amount_cents,
            currency: (*currency).to_owned(),
        })
        .collect()
}

/// Publishes every order and waits until the broker confirmed each.
pub async fn order_service(broker: &Broker, orders_to_place: &[OrderPlaced]) -> anyhow::Result<()> {
    let publisher = broker.publisher(&orders());
    for order in orders_to_place {
        publisher
            .publish(order)
            .await
            .with_context(|| format!("placing order {}", order.id))?;
        say!(
            "order-service: placed order {} by {}: {}",
            order.id,
            order.customer,
            order.amount()
        );
    }
    Ok(())
}
