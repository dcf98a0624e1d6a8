//! Kafka: the adapter against raw rdkafka on the same broker (`BROKER_TEST_KAFKA`, default
//! `127.0.0.1:9092`), every round on a fresh one-partition topic that is deleted afterwards.
//!
//! - Publish: `Publisher::send` of every message, 100 000 confirmations pending at most (as many
//!   as librdkafka queues), against a `ThreadedProducer` whose delivery callback counts the
//!   reports (no future per message), both idempotent with `acks=all`. The raw records carry what ours carry (a `message-id` header
//!   with a fresh UUID and a `content-type` header); bare raw records carry the payload only.
//! - Consume: a backlog drained by `at_least_once` (offsets stored once handled, committed
//!   periodically) against a `BaseConsumer` loop on a thread of its own storing each offset
//!   with librdkafka's periodic commit, same consumer properties, reading the fields the adapter
//!   hands out (key, headers, timestamp, position); then, with the backlog gone,
//!   time-stamped messages published at a steady pace measure publish-to-handler latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_api::{Broker, ConnectOptions, MessageId, StartFrom, TopicSpec};
use broker_kafka::rdkafka::client::ClientContext;
use broker_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use broker_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use broker_kafka::rdkafka::message::{Header, OwnedHeaders};
use broker_kafka::rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use broker_kafka::rdkafka::{ClientConfig, Message as _};
use broker_kafka::{KafkaBackend, KafkaConfig};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::common::{
    endpoint, fresh_name, paced, plain_payload, publish_round, tallied_subscription, Pending,
    Tally, Window,
};
use crate::report::{Sample, Scenario};

/// Stamped messages per consume round, and their pace.
const LATENCY_MESSAGES: usize = 5_000;
const LATENCY_RATE: usize = 5_000;
/// Unsettled deliveries of the consume scenario: the default `max_in_flight`, whose prefetch
/// bound both sides' consumers get.
const IN_FLIGHT: usize = 256;
/// Confirmations our publishing rounds keep pending: as many messages as the raw side keeps
/// queued in librdkafka (`queue.buffering.max.messages`, 100 000 by default), so that both
/// hand the broker equally large batches.
const PENDING: Pending = Pending::bursts(100_000);
/// How long a round may take before it fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// The Kafka scenarios, `messages` per round (default 1 000 000: a round of 200 000 lasts a
/// quarter of a second, and the broker's own pauses then swing the ratios by 2x).
pub async fn scenarios(messages: Option<usize>) -> anyhow::Result<Vec<Box<dyn Scenario>>> {
    let bench = Arc::new(Bench::connect().await?);
    let messages = messages.unwrap_or(1_000_000);
    Ok(vec![
        Box::new(Publish {
            bench: bench.clone(),
            messages,
            size: 100,
        }),
        Box::new(Publish {
            bench: bench.clone(),
            messages: messages / 2,
            size: 1024,
        }),
        Box::new(Consume {
            bench,
            messages,
            size: 100,
        }),
    ])
}

/// What every Kafka scenario shares: our broker and the raw producer.
pub(crate) struct Bench {
    config: KafkaConfig,
    pub(crate) broker: Broker,
    producer: Arc<ThreadedProducer<Counting>>,
}

impl Bench {
    pub(crate) async fn connect() -> anyhow::Result<Bench> {
        let config = config()?;
        let bootstrap = config.bootstrap_servers.clone();
        let backend = KafkaBackend::connect(config.clone(), ConnectOptions::default())
            .await
            .with_context(|| format!("no Kafka at {bootstrap} (scripts/brokers.sh start kafka)"))?;
        // The adapter's producer settings: idempotent, acks=all, 60 s delivery timeout.
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000")
            .create_with_context(Counting::default())?;
        Ok(Bench {
            config,
            broker: Broker::new(backend),
            producer: Arc::new(producer),
        })
    }

    /// A fresh one-partition topic.
    pub(crate) async fn topic(&self, what: &str) -> anyhow::Result<String> {
        let name = fresh_name(what);
        self.broker
            .ensure_topic(&TopicSpec::new(&name).partitions(1))
            .await?;
        Ok(name)
    }

    pub(crate) async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        self.broker.backend().delete_topic(topic).await?;
        Ok(())
    }

    /// Publishes `count` raw records of `payload` (with our headers unless `bare`) and waits
    /// for every delivery report.
    pub(crate) async fn raw_publish(
        &self,
        topic: &str,
        payload: Bytes,
        count: usize,
        bare: bool,
    ) -> anyhow::Result<Sample> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let before = producer.context().settled();
            let window = Window::start();
            for _ in 0..count {
                send_raw(&producer, &topic, &payload, bare)?;
            }
            producer.context().wait(before + count)?;
            Ok(window.sample(count, payload.len()))
        })
        .await?
    }
}

/// Hands one record to librdkafka, waiting while its queue is full.
fn send_raw(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    payload: &[u8],
    bare: bool,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<(), [u8]>::to(topic).payload(payload);
    if !bare {
        let id = MessageId::random();
        record = record.headers(
            OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "message-id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/octet-stream"),
                }),
        );
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    delivered: AtomicUsize,
    failed: AtomicUsize,
    error: Mutex<Option<String>>,
}

impl Counting {
    fn settled(&self) -> usize {
        self.delivered.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }

    /// Waits until `target` reports arrived; fails if one of them was an error.
    fn wait(&self, target: usize) -> anyhow::Result<()> {
        let failed = self.failed.load(Ordering::Acquire);
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while self.settled() < target {
            anyhow::ensure!(Instant::now() < deadline, "delivery reports missing");
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.failed.load(Ordering::Acquire) > failed {
            let error = self.error.lock().unwrap_or_else(PoisonError::into_inner);
            anyhow::bail!("a raw delivery failed: {error:?}");
        }
        Ok(())
    }
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::AcqRel);
            }
            Err((error, _)) => {
                *self.error.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(error.to_string());
                self.failed.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Publish throughput.
struct Publish {
    bench: Arc<Bench>,
    messages: usize,
    size: usize,
}

impl Publish {
    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let topic = self.bench.topic("kpub").await?;
        let payload = plain_payload(self.size);
        let sample = self
            .bench
            .raw_publish(&topic, payload, self.messages, bare)
            .await;
        self.bench.delete(&topic).await?;
        sample
    }
}

impl Scenario for Publish {
    fn name(&self) -> String {
        format!("kafka publish {} B, acks=all, 1 partition", self.size)
    }

    fn raw_side(&self) -> &'static str {
        "rdkafka ThreadedProducer, delivery reports counted"
    }

    fn goal(&self) -> f64 {
        if self.size >= 1024 {
            0.98
        } else {
            0.95
        }
    }

    fn raw(&self, bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        self.raw_round(bare).boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let name = self.bench.topic("kpub").await?;
            let sample =
                publish_round(&self.bench.broker, &name, self.size, self.messages, PENDING).await;
            self.bench.delete(&name).await?;
            sample
        }
        .boxed()
    }
}

/// At-least-once consume throughput and end-to-end latency.
struct Consume {
    bench: Arc<Bench>,
    messages: usize,
    size: usize,
}

impl Consume {
    /// A fresh topic holding the backlog.
    async fn prepare(&self, bare: bool) -> anyhow::Result<String> {
        let topic = self.bench.topic("ksub").await?;
        self.bench
            .raw_publish(&topic, plain_payload(self.size), self.messages, bare)
            .await?;
        Ok(topic)
    }

    /// Once the backlog is drained, publishes the stamped messages and waits for them.
    async fn measure_latency(&self, topic: &str, tally: &Tally, bare: bool) -> anyhow::Result<()> {
        tally.drained(ROUND_TIMEOUT).await?;
        let producer = &self.bench.producer;
        paced(LATENCY_MESSAGES, self.size, LATENCY_RATE, |payload| {
            send_raw(producer, topic, &payload, bare)
        })
        .await?;
        tally.done(ROUND_TIMEOUT).await
    }

    async fn raw_round(&self, bare: bool) -> anyhow::Result<Sample> {
        let topic = self.prepare(bare).await?;
        let tally = Arc::new(Tally::new(self.messages, self.messages + LATENCY_MESSAGES));
        let consumer: BaseConsumer = self
            .bench
            .config
            .consumer_client_config(&fresh_name("g"), StartFrom::Earliest, IN_FLIGHT)
            .create()?;
        consumer.subscribe(&[&topic])?;
        let reading = {
            let tally = tally.clone();
            let total = self.messages + LATENCY_MESSAGES;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let deadline = Instant::now() + ROUND_TIMEOUT;
                // The clock is read only when a poll comes back empty: reading it per record
                // cost the loop ~4 % of its time (perf), which a raw consumer would not pay.
                while tally.seen() < total {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(record) => {
                            let record = record?;
                            tally.record(record.payload().unwrap_or_default());
                            read_fields(&record);
                            consumer.store_offset_from_message(&record)?;
                        }
                        None if Instant::now() >= deadline => break,
                        None => {}
                    }
                }
                consumer.commit_consumer_state(CommitMode::Sync)?;
                Ok(())
            })
        };
        let measured = self.measure_latency(&topic, &tally, bare).await;
        let read = reading.await;
        self.bench.delete(&topic).await?;
        measured?;
        read??;
        tally.sample()
    }
}

/// Reads what the adapter hands a handler besides the payload (key, headers, timestamp,
/// position), borrowed, as a raw consumer needing the same information would.
fn read_fields<M: broker_kafka::rdkafka::Message>(record: &M) {
    use broker_kafka::rdkafka::message::Headers as _;
    std::hint::black_box((
        record.key(),
        record.timestamp(),
        record.partition(),
        record.offset(),
    ));
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            std::hint::black_box((header.key, header.value.map(std::str::from_utf8)));
        }
    }
}

/// The adapter's configuration for the broker under test; `BENCH_KAFKA_PROPERTIES`
/// (`name=value,name=value`) adds librdkafka properties, for both sides' consumers.
pub(crate) fn config() -> anyhow::Result<KafkaConfig> {
    let mut config = KafkaConfig {
        bootstrap_servers: endpoint("BROKER_TEST_KAFKA", "127.0.0.1:9092"),
        ..KafkaConfig::default()
    };
    if let Ok(properties) = std::env::var("BENCH_KAFKA_PROPERTIES") {
        for pair in properties.split(',').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("BENCH_KAFKA_PROPERTIES: {pair:?} is not name=value"))?;
            config.properties.insert(name.to_owned(), value.to_owned());
        }
    }
    Ok(config)
}

impl Scenario for Consume {
    fn name(&self) -> String {
        format!(
            "kafka consume {} B, at_least_once, offsets committed",
            self.size
        )
    }

    fn raw_side(&self) -> &'static str {
        "rdkafka BaseConsumer loop, offsets stored, auto-commit"
    }

    fn goal(&self) -> f64 {
        0.90
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
                fresh_name("g"),
                IN_FLIGHT,
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
