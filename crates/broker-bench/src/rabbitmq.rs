//! RabbitMQ: the adapter against raw lapin on the same broker (`BROKER_TEST_RABBITMQ`, default
//! the local node as guest), every round on a fresh topic exchange with one group queue (the
//! adapter's topology: durable quorum queue bound with `#`), deleted afterwards.
//!
//! - Publish with confirms: `Publisher::send` of every message, 1024 confirmations pending
//!   (the adapter's confirm window), awaiting the oldest before sending the next, against raw
//!   lapin keeping 1024 publishes in flight, pipelined (each `basic_publish` future polled
//!   alongside the others, not awaited one by one). Both publish persistent, `mandatory` messages; the raw messages carry what ours
//!   carry (`message_id`, `content_type`, `timestamp`), bare raw messages none of them.
//! - Consume with acks: a backlog drained by `at_least_once` (prefetch = `max_in_flight` =
//!   256, one `basic.ack` per handled message) against a raw lapin consumer with prefetch 256
//!   acknowledging each delivery without waiting for the ack's write; then stamped messages
//!   at a steady pace measure publish-to-handler latency.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use broker_api::naming::group_resource;
use broker_api::{Broker, ConnectOptions, MessageId, TopicSpec};
use broker_rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use broker_rabbitmq::lapin::types::{FieldTable, ShortString};
use broker_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use broker_rabbitmq::{RabbitMqBackend, RabbitMqConfig};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::common::{
    endpoint, fresh_name, paced, plain_payload, publish_round, tallied_subscription, Pending,
    Tally, Window,
};
use crate::report::{Sample, Scenario};

/// Publishes in flight at once: the adapter's default confirm window.
const WINDOW: usize = 1024;
/// Unacknowledged deliveries: the adapter's default `max_in_flight`, hence its prefetch.
const PREFETCH: u16 = 256;
const GROUP: &str = "bench";
const LATENCY_MESSAGES: usize = 2_000;
const LATENCY_RATE: usize = 2_000;
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// The RabbitMQ scenarios, `messages` per round (default 50 000).
pub async fn scenarios(messages: Option<usize>) -> anyhow::Result<Vec<Box<dyn Scenario>>> {
    let bench = Arc::new(Bench::connect().await?);
    let messages = messages.unwrap_or(50_000);
    Ok(vec![
        Box::new(Publish {
            bench: bench.clone(),
            messages,
            size: 100,
        }),
        Box::new(Publish {
            bench: bench.clone(),
            messages,
            size: 1024,
        }),
        Box::new(Consume {
            bench,
            messages,
            size: 100,
        }),
    ])
}

struct Bench {
    uri: String,
    broker: Broker,
    raw: tokio::sync::Mutex<Option<Raw>>,
}

/// The raw client's connection and its publishing channel (with confirms).
#[derive(Clone)]
struct Raw {
    connection: Arc<Connection>,
    publishing: Channel,
}

impl Raw {
    async fn connect(uri: &str) -> anyhow::Result<Raw> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let publishing = connection.create_channel().await?;
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Raw {
            connection: Arc::new(connection),
            publishing,
        })
    }
}

impl Bench {
    async fn connect() -> anyhow::Result<Bench> {
        let uri = endpoint("BROKER_TEST_RABBITMQ", broker_rabbitmq::DEFAULT_URI);
        let config = RabbitMqConfig {
            uri: uri.clone(),
            ..RabbitMqConfig::default()
        };
        let backend = RabbitMqBackend::connect(config, ConnectOptions::default())
            .await
            .context("no RabbitMQ (scripts/brokers.sh start rabbitmq)")?;
        let raw = Raw::connect(&uri).await?;
        Ok(Bench {
            uri,
            broker: Broker::new(backend),
            raw: tokio::sync::Mutex::new(Some(raw)),
        })
    }

    /// The raw connection, connected again when it was dropped (other programs' fault tests
    /// close every connection of the broker now and then).
    async fn raw(&self) -> anyhow::Result<Raw> {
        let mut raw = self.raw.lock().await;
        if let Some(open) = &*raw {
            if open.connection.status().connected() && open.publishing.status().connected() {
                return Ok(open.clone());
            }
        }
        let open = Raw::connect(&self.uri).await?;
        *raw = Some(open.clone());
        Ok(open)
    }

    /// A fresh topic with its group queue.
    async fn topic(&self, what: &str) -> anyhow::Result<String> {
        let name = fresh_name(what);
        self.broker
            .ensure_topic(&TopicSpec::new(&name).group(GROUP))
            .await?;
        Ok(name)
    }

    async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        self.broker.backend().delete_topic(topic).await?;
        Ok(())
    }
}

/// The properties of a raw message: what the adapter sends, or (`bare`) persistence only.
fn properties(bare: bool) -> BasicProperties {
    let persistent = BasicProperties::default().with_delivery_mode(2);
    if bare {
        return persistent;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    persistent
        .with_message_id(ShortString::from(MessageId::random().as_str()))
        .with_content_type(ShortString::from("application/octet-stream"))
        .with_timestamp(now)
}

const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// Publishes `count` messages with raw lapin, [`WINDOW`] in flight, and checks every confirm.
async fn raw_publish(
    channel: &Channel,
    exchange: &str,
    payload: &[u8],
    count: usize,
    bare: bool,
) -> anyhow::Result<Sample> {
    let window = Window::start();
    let mut pending = FuturesUnordered::new();
    let confirmed = |result: Option<broker_rabbitmq::lapin::Result<_>>| -> anyhow::Result<()> {
        match result {
            Some(Ok(broker_rabbitmq::lapin::Confirmation::Ack(None))) => Ok(()),
            other => anyhow::bail!("publish not confirmed: {other:?}"),
        }
    };
    for _ in 0..count {
        if pending.len() >= WINDOW {
            confirmed(pending.next().await)?;
        }
        let properties = properties(bare);
        pending.push(async move {
            channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::default(),
                    MANDATORY,
                    payload,
                    properties,
                )
                .await?
                .await
        });
    }
    while !pending.is_empty() {
        confirmed(pending.next().await)?;
    }
    Ok(window.sample(count, payload.len()))
}

/// Publish throughput with confirms.
struct Publish {
    bench: Arc<Bench>,
    messages: usize,
    size: usize,
}

impl Publish {
    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let topic = self.bench.topic("rpub").await?;
        let payload = plain_payload(self.size);
        let raw = self.bench.raw().await?;
        let sample = raw_publish(&raw.publishing, &topic, &payload, self.messages, bare).await;
        self.bench.delete(&topic).await?;
        sample
    }
}

impl Scenario for Publish {
    fn name(&self) -> String {
        format!("rabbitmq publish {} B, confirms", self.size)
    }

    fn raw_side(&self) -> &'static str {
        "lapin, 1024 publishes in flight, pipelined"
    }

    fn goal(&self) -> f64 {
        0.97
    }

    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        self.raw_round(bare).boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let name = self.bench.topic("rpub").await?;
            let sample = publish_round(
                &self.bench.broker,
                &name,
                self.size,
                self.messages,
                Pending::sliding(WINDOW),
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
    async fn prepare(&self, bare: bool) -> anyhow::Result<String> {
        let topic = self.bench.topic("rsub").await?;
        let payload = plain_payload(self.size);
        raw_publish(
            &self.bench.raw().await?.publishing,
            &topic,
            &payload,
            self.messages,
            bare,
        )
        .await?;
        Ok(topic)
    }

    /// Once the backlog is drained, publishes the stamped messages and waits for them.
    async fn measure_latency(&self, topic: &str, tally: &Tally, bare: bool) -> anyhow::Result<()> {
        tally.drained(ROUND_TIMEOUT).await?;
        let channel = &self.bench.raw().await?.publishing;
        paced(LATENCY_MESSAGES, self.size, LATENCY_RATE, |payload| {
            // Polled once: lapin queues the frames at the first poll (the confirm is not
            // awaited; the next round's checks would see a failed channel).
            let _ = channel
                .basic_publish(
                    ShortString::from(topic),
                    ShortString::default(),
                    MANDATORY,
                    &payload,
                    properties(bare),
                )
                .now_or_never();
            Ok(())
        })
        .await?;
        tally.done(ROUND_TIMEOUT).await
    }

    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let topic = self.prepare(bare).await?;
        let tally = Arc::new(Tally::new(self.messages, self.messages + LATENCY_MESSAGES));
        let channel = self.bench.raw().await?.connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await?;
        let mut consumer = channel
            .basic_consume(
                group_resource(&topic, GROUP).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let reading = {
            let tally = tally.clone();
            let channel = channel.clone();
            let total = self.messages + LATENCY_MESSAGES;
            tokio::spawn(async move {
                let mut acks = FuturesUnordered::new();
                while tally.seen() < total {
                    let Some(delivery) = consumer.next().await else {
                        anyhow::bail!("the consumer ended");
                    };
                    let delivery = delivery?;
                    tally.record(&delivery.data);
                    acks.push(channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default()));
                    while let Some(Some(acked)) = acks.next().now_or_never() {
                        acked?;
                    }
                }
                while let Some(acked) = acks.next().await {
                    acked?;
                }
                Ok(())
            })
        };
        let measured = self.measure_latency(&topic, &tally, bare).await;
        if measured.is_err() {
            reading.abort();
        }
        let read = reading.await;
        channel.close(200, "done".into()).await?;
        self.bench.delete(&topic).await?;
        measured?;
        read??;
        tally.sample()
    }
}

impl Scenario for Consume {
    fn name(&self) -> String {
        format!("rabbitmq consume {} B, acks", self.size)
    }

    fn raw_side(&self) -> &'static str {
        "lapin consumer, prefetch 256, one ack per message"
    }

    fn goal(&self) -> f64 {
        0.95
    }

    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        self.raw_round(bare).boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let topic = self.prepare(false).await?;
            let tally = Arc::new(Tally::new(self.messages, self.messages + LATENCY_MESSAGES));
            let running = tallied_subscription(
                &self.bench.broker,
                &topic,
                GROUP,
                usize::from(PREFETCH),
                &tally,
            )
            .await?;
            let measured = self.measure_latency(&topic, &tally, false).await;
            let closed = running.close().await;
            self.bench.delete(&topic).await?;
            measured?;
            closed?;
            tally.sample()
        }
        .boxed()
    }
}
