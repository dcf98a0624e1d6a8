//! Closing the RabbitMQ backend closes its connection cleanly, whatever the backend did just
//! before (declared or deleted a topic, published, consumed): lapin reports no connection
//! error. A test binary of its own, because it installs the process's tracing subscriber to
//! count lapin's errors. Needs `BROKER_TEST_RABBITMQ`, like `rabbitmq/main.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker_api::{Broker, ConnectOptions, Topic};
use broker_rabbitmq::{RabbitMqBackend, RabbitMqConfig};
use broker_testkit::live;
use broker_testkit::support::{fresh_topic, run_case, Inbox};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

/// Error events logged by lapin in this process.
static LAPIN_ERRORS: AtomicUsize = AtomicUsize::new(0);

/// Counts lapin's error events.
struct CountLapinErrors;

impl<S: tracing::Subscriber> Layer<S> for CountLapinErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() == tracing::Level::ERROR && metadata.target().starts_with("lapin") {
            LAPIN_ERRORS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What a round does between declaring its topic and deleting it.
#[derive(Debug, Clone, Copy)]
enum Use {
    Nothing,
    Publish,
    PublishAndConsume,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_any_use_is_clean() {
    let Some(uri) = live::require("BROKER_TEST_RABBITMQ") else {
        return;
    };
    let subscriber = tracing_subscriber::registry().with(CountLapinErrors).with(
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
    );
    tracing::subscriber::set_global_default(subscriber)
        .expect("this test binary installs the only tracing subscriber");
    run_case("close_after_any_use_is_clean", async {
        // Each race lost shows up in about half of the rounds: several rounds of each use.
        for round in 0..12 {
            let use_ = [Use::Nothing, Use::Publish, Use::PublishAndConsume][round % 3];
            round_of(&uri, use_).await;
        }
    })
    .await;
    assert_eq!(
        LAPIN_ERRORS.load(Ordering::SeqCst),
        0,
        "lapin logged errors while the backend closed (see the log above)"
    );
}

/// Connects, declares a topic, uses it, deletes it and closes the backend.
async fn round_of(uri: &str, use_: Use) {
    let config = RabbitMqConfig {
        uri: uri.to_owned(),
        ..RabbitMqConfig::default()
    };
    let backend = RabbitMqBackend::connect(config, ConnectOptions::default())
        .await
        .expect("connect");
    let broker = Broker::new(backend);
    let name = fresh_topic(&broker, "clean-close", &["g"]).await;
    let topic = Topic::text(name.as_str());
    if matches!(use_, Use::Publish | Use::PublishAndConsume) {
        let publisher = broker.publisher(&topic);
        for i in 0..20 {
            publisher.publish(&format!("m-{i}")).await.expect("publish");
        }
    }
    if matches!(use_, Use::PublishAndConsume) {
        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe");
        let received = inbox.wait_for(20, Duration::from_secs(30)).await;
        assert_eq!(received.len(), 20, "{use_:?}: every message is received");
        running.close().await.expect("close the subscription");
    }
    broker
        .backend()
        .delete_topic(&name)
        .await
        .expect("delete the topic");
    broker.close().await.expect("close the broker");
}
