//! Lagom's hello world, as two services that talk only through the broker.
//!
//! The greeting service publishes a `GreetingChanged` event, keyed by user, whenever a user
//! changes their greeting. The stats service subscribes at least once as group
//! `greeting-stats` and counts the changes per user. Nothing here names a broker:
//! `broker.toml` / `BROKER__KIND` decide.
//!
//! ```text
//! cargo run -p hello                  # both services in one process, on the in-memory broker
//! BROKER__KIND=kafka cargo run -p hello --features kafka
//! cargo run -p hello -- stats         # only the stats service (until Ctrl-C)
//! cargo run -p hello -- greet         # only the greeting service
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use broker::{Broker, HandlerResult, MessageId, Received, Running, Topic, TopicSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// `println!` that leaves a closed stdout (`| head`) alone: in a message handler, `println!`'s
/// panic would fail the message (and dead-letter it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A user changed their greeting. Published by the greeting service.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GreetingChanged {
    user: String,
    message: String,
}

/// The topic both services share: JSON events keyed by user, so one user's changes stay in
/// order.
fn greetings() -> Topic<GreetingChanged> {
    Topic::json("greetings").with_key(|event: &GreetingChanged| event.user.clone())
}

const STATS_GROUP: &str = "greeting-stats";

/// The greeting service: publishes each change and waits for the broker to confirm it;
/// returns the ids of the events it published.
async fn greeting_service(
    broker: &Broker,
    changes: &[(&str, &str)],
) -> anyhow::Result<BTreeSet<MessageId>> {
    let publisher = broker.publisher(&greetings());
    let mut published = BTreeSet::new();
    for (user, message) in changes {
        let event = GreetingChanged {
            user: (*user).to_owned(),
            message: (*message).to_owned(),
        };
        let receipt = publisher
            .publish(&event)
            .await
            .with_context(|| format!("publishing the greeting of {user}"))?;
        say!(
            "greeting-service: {user} now says {message:?} (message {})",
            receipt.message_id
        );
        published.insert(receipt.message_id);
    }
    Ok(published)
}

/// What the stats service has counted, and the events it has seen (earlier runs' included:
/// a broker that keeps messages hands over what was published while no stats service ran).
#[derive(Default)]
struct Stats {
    changes_per_user: Mutex<BTreeMap<String, u32>>,
    seen: Mutex<BTreeSet<MessageId>>,
    counted: Notify,
}

impl Stats {
    /// How many of `events` were counted.
    fn counted_of(&self, events: &BTreeSet<MessageId>) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().filter(|id| seen.contains(id)).count()
    }
}

/// Declares the topic with the stats group, whichever service starts first: brokers that keep
/// messages only for groups that exist (RabbitMQ, Pub/Sub) then keep the events published
/// before the stats service first subscribed.
async fn declare_topology(broker: &Broker) -> anyhow::Result<()> {
    broker
        .ensure_topic(&TopicSpec::new(greetings().name()).group(STATS_GROUP))
        .await
        .context("declaring the greetings topic")
}

/// The stats service: counts greeting changes per user, at least once.
async fn stats_service(broker: &Broker, stats: Arc<Stats>) -> anyhow::Result<Running> {
    let running = broker
        .subscriber(&greetings(), STATS_GROUP)
        .at_least_once(move |event: Received<GreetingChanged>| {
            let stats = stats.clone();
            async move {
                let count = {
                    let mut counts = stats
                        .changes_per_user
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let count = counts.entry(event.value.user.clone()).or_insert(0);
                    *count += 1;
                    *count
                };
                say!(
                    "greeting-stats:   {} changed their greeting {count} time(s), now {:?}",
                    event.value.user,
                    event.value.message
                );
                if let Some(id) = event.metadata.message_id {
                    stats
                        .seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id);
                }
                stats.counted.notify_waiters();
                HandlerResult::Ok(())
            }
        })
        .await?;
    Ok(running)
}

/// Waits until the stats service counted every one of `events`, or gives up after `patience`.
async fn wait_for(
    stats: &Stats,
    events: &BTreeSet<MessageId>,
    patience: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(patience, async {
        loop {
            let counted = stats.counted.notified();
            if stats.counted_of(events) == events.len() {
                return;
            }
            counted.await;
        }
    })
    .await
    .with_context(|| {
        format!(
            "the stats service counted {} of the {} changes published in {patience:?}",
            stats.counted_of(events),
            events.len()
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "both".to_owned());
    let broker = broker::connect().await.context("connecting the broker")?;
    say!("connected to {} at {}", broker.kind(), broker.endpoint());
    declare_topology(&broker).await?;

    let changes = [
        ("alice", "Hello"),
        ("bob", "Hi"),
        ("alice", "Good morning"),
        ("carol", "Hey"),
        ("bob", "Howdy"),
        ("alice", "Bonjour"),
    ];
    match mode.as_str() {
        "both" => {
            let stats = Arc::new(Stats::default());
            let running = stats_service(&broker, stats.clone()).await?;
            let published = greeting_service(&broker, &changes).await?;
            wait_for(&stats, &published, Duration::from_secs(30)).await?;
            running.close().await?;
            let counts = stats
                .changes_per_user
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            say!("greeting-stats:   final counts {counts:?}");
        }
        "greet" => {
            greeting_service(&broker, &changes).await?;
        }
        "stats" => {
            let running = stats_service(&broker, Arc::new(Stats::default())).await?;
            say!("greeting-stats:   waiting for events; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            running.close().await?;
        }
        other => anyhow::bail!("unknown mode {other:?}: expected both, greet or stats"),
    }
    broker.close().await?;
    Ok(())
}
