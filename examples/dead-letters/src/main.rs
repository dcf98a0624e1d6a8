//! At least once, when handling fails: an order service and a payment service that talk only
//! through the broker.
//!
//! The order service publishes `OrderPlaced` events keyed by customer. The payment service
//! charges them at least once as group `payments`, with a short retry policy (50 ms to
//! 500 ms, 3 attempts). Some charges fail for a while and succeed when retried; some never
//! succeed and end, with the reason, in the dead-letter topic `orders.payments.dlq`, which the
//! example reads at the end (leaving the dead letters there for `brokerctl`). Nothing here
//! names a broker: `broker.toml` / `BROKER__KIND` decide.
//!
//! ```text
//! cargo run -p dead-letters                 # everything in one process, in-memory broker
//! BROKER__KIND=kafka cargo run -p dead-letters --features kafka
//! cargo run -p dead-letters -- payments     # only the payment service (until Ctrl-C)
//! cargo run -p dead-letters -- orders       # only the order service
//! cargo run -p dead-letters -- report       # only print the dead letters
//! ```

/// `println!` that leaves a closed stdout (`| head`) alone: in a message handler, `println!`'s
/// panic would fail the message (and dead-letter it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod orders;
mod payments;
mod report;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::orders::{order_service, todays_orders};
use crate::payments::{declare_topology, payment_service, Ledger};
use crate::report::{print_dead_letters, Earlier};

/// How long the example waits for the payment service and for its dead letters.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let broker = broker::connect().await.context("connecting the broker")?;
    say!("connected to {} at {}", broker.kind(), broker.endpoint());
    declare_topology(&broker).await?;
    // Order ids are unique per run, so this run's orders are told from earlier ones.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let orders = todays_orders(&run);

    match mode.as_str() {
        "all" => {
            let ledger = Arc::new(Ledger::default());
            let payments = payment_service(&broker, ledger.clone()).await?;
            order_service(&broker, &orders).await?;
            let ids: BTreeSet<String> = orders.iter().map(|order| order.id.clone()).collect();
            tokio::time::timeout(PATIENCE, ledger.settled(&ids))
                .await
                .context("the payment service did not settle every order in time")?;
            // Closing lets the last handlers finish and their dead letters be published.
            payments
                .close()
                .await
                .context("stopping the payment service")?;
            let charged = ledger.charged();
            let given_up = ledger.given_up();
            say!(
                "payments:      {} of {} orders charged, {} dead-lettered",
                charged.len(),
                orders.len(),
                given_up.len()
            );
            let seen =
                print_dead_letters(&broker, &given_up, PATIENCE, Earlier::Acknowledge).await?;
            anyhow::ensure!(
                given_up.is_subset(&seen),
                "dead letters missing from the dead-letter topic: {:?}",
                given_up.difference(&seen).collect::<Vec<_>>()
            );
        }
        "orders" => order_service(&broker, &orders).await?,
        "payments" => {
            let payments = payment_service(&broker, Arc::new(Ledger::default())).await?;
            say!("payments:      waiting for orders; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            payments.close().await?;
        }
        "report" => {
            let patience = Duration::from_secs(5);
            print_dead_letters(&broker, &BTreeSet::new(), patience, Earlier::Keep).await?;
        }
        other => anyhow::bail!("unknown mode {other:?}: expected all, orders, payments or report"),
    }
    broker.close().await?;
    Ok(())
}
