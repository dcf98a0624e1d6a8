//! Helpers the cases share: backends, `rabbitmqctl`, changes made behind a backend's back.

use std::time::Duration;

use broker_api::ConnectOptions;
use broker_rabbitmq::lapin::options::{
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use broker_rabbitmq::lapin::{Channel, Connection, ConnectionProperties};
use broker_rabbitmq::{QueueType, RabbitMqBackend, RabbitMqConfig};
use broker_testkit::live;

/// Set to `classic` to run everything on classic queues instead of quorum queues.
pub(crate) const QUEUE_TYPE_VAR: &str = "BROKER_TEST_RABBITMQ_QUEUE_TYPE";

pub(crate) async fn backend(
    uri: &str,
    auto_provision: bool,
) -> broker_api::Result<RabbitMqBackend> {
    backend_with(uri, auto_provision, |_| {}).await
}

/// [`backend`], with `adjust` applied to its configuration.
pub(crate) async fn backend_with(
    uri: &str,
    auto_provision: bool,
    adjust: impl FnOnce(&mut RabbitMqConfig),
) -> broker_api::Result<RabbitMqBackend> {
    let queue_type = match std::env::var(QUEUE_TYPE_VAR).as_deref() {
        Ok("classic") => QueueType::Classic,
        _ => QueueType::Quorum,
    };
    let mut config = RabbitMqConfig {
        uri: uri.to_owned(),
        queue_type,
        ..RabbitMqConfig::default()
    };
    adjust(&mut config);
    RabbitMqBackend::connect(
        config,
        ConnectOptions::default().auto_provision(auto_provision),
    )
    .await
}

pub(crate) async fn close_all_connections() {
    rabbitmqctl(&["close_all_connections", "test: dropped connection"]).await;
}

pub(crate) async fn rabbitmqctl(args: &[&str]) -> String {
    let script = live::repository_root().join("scripts").join("brokers.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many messages of `queue` RabbitMQ sent to consumers that did not acknowledge them yet.
pub(crate) async fn unacknowledged(queue: &str) -> u64 {
    let listing = rabbitmqctl(&[
        "list_queues",
        "--quiet",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])
    .await;
    listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("queue {queue} not in {listing:?}"))
}

/// Runs `operation` on a channel of a raw lapin connection to `uri`, then closes it: changes
/// made behind the backend's back.
///
/// Each step is bounded, so that a case waiting on the broker behind the back fails naming the
/// step instead of hanging until the case guard (a hang here was seen once, in a full CI run,
/// and not reproduced); closing the connection is given a few seconds and then dropped.
async fn behind_the_back<T, F>(uri: &str, operation: impl FnOnce(Channel) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let raw = bounded(
        "connecting",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("raw lapin connection");
    let channel = bounded("opening a channel", raw.create_channel())
        .await
        .expect("channel");
    let outcome = bounded("the operation", operation(channel)).await;
    let _ = tokio::time::timeout(CLOSE_LIMIT, raw.close(200, "done".into())).await;
    outcome
}

/// How long one step of [`behind_the_back`] may take.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// How long [`behind_the_back`] waits for its connection to close before dropping it.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

async fn bounded<T>(step: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{step} behind the backend's back took over {STEP_LIMIT:?}"))
}

pub(crate) async fn delete_queue(uri: &str, name: &str) {
    behind_the_back(uri, |channel| async move {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .expect("delete queue");
    })
    .await;
}

pub(crate) async fn queue_exists(uri: &str, name: &str) -> bool {
    behind_the_back(uri, |channel| async move {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), passive, Default::default())
            .await
            .is_ok()
    })
    .await
}

pub(crate) async fn delete_exchange(uri: &str, name: &str) {
    behind_the_back(uri, |channel| async move {
        channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    })
    .await;
}

/// Runs `rabbitmqctl` with its arguments when dropped: undoes a change to the broker's
/// settings also when its case fails or hangs, so that the cases after it run on the defaults.
pub(crate) struct RestoreWith(pub(crate) &'static [&'static str]);

impl Drop for RestoreWith {
    fn drop(&mut self) {
        let script = live::repository_root().join("scripts").join("brokers.sh");
        let restored = std::process::Command::new("bash")
            .arg(&script)
            .arg("rabbitmqctl")
            .args(self.0)
            .output();
        if !restored.is_ok_and(|output| output.status.success()) {
            eprintln!(
                "could not restore RabbitMQ's settings: run `scripts/brokers.sh rabbitmqctl {}`",
                self.0.join(" ")
            );
        }
    }
}
