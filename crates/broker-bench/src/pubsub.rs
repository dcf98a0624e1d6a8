//! Pub/Sub: the adapter against the raw `google-cloud-pubsub` client on the same emulator
//! (`BROKER_TEST_PUBSUB`, default `http://127.0.0.1:8085`), every round on a fresh topic with one
//! subscription, deleted afterwards.
//!
//! - Publish: `Publisher::send` of every message, then every confirmation awaited, against the
//!   client's batching `Publisher` with the adapter's batching (100 messages / 1 MB / 10 ms),
//!   every message in flight, then every response awaited. Raw messages carry the attributes
//!   ours carry (`message-id`, `content-type`); bare raw messages none. Once without ordering
//!   keys, once with 16 keys taken in turn (the client batches each key on its own).
//! - Consume: a backlog drained by `at_least_once` (`max_in_flight` 256) against the client's
//!   streaming pull with the adapter's flow control (256 messages, 100 MiB, same leases),
//!   acknowledging each message; then stamped messages at a steady pace measure
//!   publish-to-handler latency. The emulator hands out messages slowly (about 100 per stream
//!   every 50 ms), so consuming measures the emulator as much as the clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use broker_api::{Broker, ConnectOptions, MessageId, TopicSpec};
use broker_pubsub::google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use broker_pubsub::google_cloud_pubsub::client::{BasePublisher, Publisher, Subscriber};
use broker_pubsub::google_cloud_pubsub::model::Message as PubsubMessage;
use broker_pubsub::google_cloud_pubsub::subscriber::ShutdownBehavior;
use broker_pubsub::{PubSubBackend, PubSubConfig};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::common::{
    endpoint, fresh_name, key, paced, plain_payload, publish_keyed_round, tallied_subscription,
    Pending, Tally, Window,
};
use crate::report::{Sample, Scenario};

const GROUP: &str = "bench";
const IN_FLIGHT: usize = 256;
const LATENCY_MESSAGES: usize = 500;
const LATENCY_RATE: usize = 1_000;
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);
/// Ordering keys of the keyed publish scenario.
const KEYS: usize = 16;

/// The Pub/Sub scenarios: `messages` published per round (default 100 000: shorter rounds
/// mostly measure the emulator's hiccups), a twentieth of them consumed (the emulator hands
/// out about 1 800 messages a second).
pub async fn scenarios(messages: Option<usize>) -> anyhow::Result<Vec<Box<dyn Scenario>>> {
    let bench = Arc::new(Bench::connect().await?);
    let messages = messages.unwrap_or(100_000);
    Ok(vec![
        Box::new(Publish {
            bench: bench.clone(),
            messages,
            size: 100,
            keys: 0,
        }),
        Box::new(Publish {
            bench: bench.clone(),
            messages,
            size: 100,
            keys: KEYS,
        }),
        Box::new(Consume {
            bench,
            messages: (messages / 20).max(1),
            size: 100,
        }),
    ])
}

struct Bench {
    config: PubSubConfig,
    broker: Broker,
    base: BasePublisher,
    subscriber: Subscriber,
}

impl Bench {
    async fn connect() -> anyhow::Result<Bench> {
        let url = endpoint("BROKER_TEST_PUBSUB", "http://127.0.0.1:8085");
        let config = PubSubConfig {
            endpoint: Some(url.clone()),
            ..PubSubConfig::default()
        };
        let backend = PubSubBackend::connect(config.clone(), ConnectOptions::default())
            .await
            .context("no Pub/Sub emulator (scripts/brokers.sh start pubsub)")?;
        let base = BasePublisher::builder()
            .with_endpoint(&url)
            .with_credentials(Anonymous::new().build())
            .build()
            .await?;
        let subscriber = Subscriber::builder()
            .with_endpoint(&url)
            .with_credentials(Anonymous::new().build())
            .build()
            .await?;
        Ok(Bench {
            config,
            broker: Broker::new(backend),
            base,
            subscriber,
        })
    }

    /// A fresh topic, with its group's subscription when `with_group`. Publish rounds use
    /// none: the emulator (512 MiB of heap as `scripts/brokers.sh` starts it) would keep every
    /// message of every round for it.
    async fn topic(&self, what: &str, with_group: bool) -> anyhow::Result<String> {
        let name = fresh_name(what);
        let mut spec = TopicSpec::new(&name);
        if with_group {
            spec = spec.group(GROUP);
        }
        self.broker.ensure_topic(&spec).await?;
        Ok(name)
    }

    async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        self.broker.backend().delete_topic(topic).await?;
        Ok(())
    }

    /// A raw publisher of `topic` with the adapter's batching.
    fn publisher(&self, topic: &str) -> Publisher {
        self.base
            .publisher(format!("projects/{}/topics/{topic}", self.config.project))
            .set_message_count_threshold(self.config.batch_max_messages)
            .set_byte_threshold(self.config.batch_max_bytes)
            .set_delay_threshold(self.config.batch_max_delay)
            .build()
    }
}

/// A raw message, with ordering key `key` unless empty: with the attributes ours carry unless
/// `bare`.
fn message(payload: Bytes, key: String, bare: bool) -> PubsubMessage {
    let mut message = PubsubMessage::new().set_data(payload).set_ordering_key(key);
    if !bare {
        message
            .attributes
            .insert("message-id".to_owned(), MessageId::random().to_string());
        message.attributes.insert(
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        );
    }
    message
}

/// Publishes `count` raw messages, keyed in turn by `keys` ordering keys (none when 0), all in
/// flight, and waits for every response.
async fn raw_publish(
    publisher: &Publisher,
    payload: &Bytes,
    count: usize,
    keys: usize,
    bare: bool,
) -> anyhow::Result<Sample> {
    let window = Window::start();
    let pending: Vec<_> = (0..count)
        .map(|sent| {
            let ordering_key = match keys {
                0 => String::new(),
                keys => key(sent % keys),
            };
            publisher.publish(message(payload.clone(), ordering_key, bare))
        })
        .collect();
    for response in pending {
        response.await?;
    }
    Ok(window.sample(count, payload.len()))
}

/// Publish throughput.
struct Publish {
    bench: Arc<Bench>,
    messages: usize,
    size: usize,
    /// Ordering keys the messages take in turn; none when 0.
    keys: usize,
}

impl Publish {
    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let topic = self.bench.topic("ppub", false).await?;
        let publisher = self.bench.publisher(&topic);
        let payload = plain_payload(self.size);
        let sample = raw_publish(&publisher, &payload, self.messages, self.keys, bare).await;
        self.bench.delete(&topic).await?;
        sample
    }
}

impl Scenario for Publish {
    fn name(&self) -> String {
        match self.keys {
            0 => format!("pubsub publish {} B (emulator)", self.size),
            keys => format!(
                "pubsub publish {} B, {keys} ordering keys (emulator)",
                self.size
            ),
        }
    }

    fn raw_side(&self) -> &'static str {
        "google-cloud-pubsub Publisher, same batching"
    }

    fn goal(&self) -> f64 {
        0.95
    }

    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        self.raw_round(bare).boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let name = self.bench.topic("ppub", false).await?;
            let sample = publish_keyed_round(
                &self.bench.broker,
                &name,
                self.size,
                self.messages,
                self.keys,
                Pending::all(),
            )
            .await;
            self.bench.delete(&name).await?;
            sample
        }
        .boxed()
    }
}

/// Consume throughput with acks, and end-to-end latency.
struct Consume {
    bench: Arc<Bench>,
    messages: usize,
    size: usize,
}

impl Consume {
    async fn prepare(&self, bare: bool) -> anyhow::Result<(String, Publisher)> {
        let topic = self.bench.topic("psub", true).await?;
        let publisher = self.bench.publisher(&topic);
        raw_publish(
            &publisher,
            &plain_payload(self.size),
            self.messages,
            0,
            bare,
        )
        .await?;
        Ok((topic, publisher))
    }

    /// Once the backlog is drained, publishes the stamped messages and waits for them.
    async fn measure_latency(
        &self,
        publisher: &Publisher,
        tally: &Tally,
        bare: bool,
    ) -> anyhow::Result<()> {
        tally.drained(ROUND_TIMEOUT).await?;
        paced(LATENCY_MESSAGES, self.size, LATENCY_RATE, |payload| {
            // The client queues the message at once; its response is not awaited.
            drop(publisher.publish(message(payload, String::new(), bare)));
            Ok(())
        })
        .await?;
        tally.done(ROUND_TIMEOUT).await
    }

    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let (topic, publisher) = self.prepare(bare).await?;
        let tally = Arc::new(Tally::new(self.messages, self.messages + LATENCY_MESSAGES));
        let config = &self.bench.config;
        let mut stream = self
            .bench
            .subscriber
            .subscribe(format!(
                "projects/{}/subscriptions/{topic}.{GROUP}",
                config.project
            ))
            .set_max_outstanding_messages(IN_FLIGHT as i64)
            .set_max_outstanding_bytes(config.max_outstanding_bytes)
            .set_max_lease_extension(config.ack_deadline)
            .set_max_lease(config.max_lease)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        let shutdown = stream.shutdown_token();
        let reading = {
            let tally = tally.clone();
            let total = self.messages + LATENCY_MESSAGES;
            tokio::spawn(async move {
                while tally.seen() < total {
                    let Some(next) = stream.next().await else {
                        anyhow::bail!("the stream ended");
                    };
                    let (message, handler) = next?;
                    tally.record(&message.data);
                    handler.ack();
                }
                Ok(())
            })
        };
        let measured = self.measure_latency(&publisher, &tally, bare).await;
        if measured.is_err() {
            reading.abort();
        }
        let read = reading.await;
        shutdown.shutdown().await;
        self.bench.delete(&topic).await?;
        measured?;
        read??;
        tally.sample()
    }
}

impl Scenario for Consume {
    fn name(&self) -> String {
        format!("pubsub consume {} B, acks (emulator)", self.size)
    }

    fn raw_side(&self) -> &'static str {
        "google-cloud-pubsub streaming pull, same flow control"
    }

    fn goal(&self) -> f64 {
        0.95
    }

    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        self.raw_round(bare).boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let (topic, publisher) = self.prepare(false).await?;
            let tally = Arc::new(Tally::new(self.messages, self.messages + LATENCY_MESSAGES));
            let running =
                tallied_subscription(&self.bench.broker, &topic, GROUP, IN_FLIGHT, &tally).await?;
            let measured = self.measure_latency(&publisher, &tally, false).await;
            let closed = running.close().await;
            self.bench.delete(&topic).await?;
            measured?;
            closed?;
            tally.sample()
        }
        .boxed()
    }
}
