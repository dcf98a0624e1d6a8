//! A quick throughput smoke run: the adapter against raw rdkafka on the same broker, interleaved
//! (raw, ours, raw, ours, ...), median of the rounds. Not a test and not the benchmark: a check
//! that the adapter stays near the raw client.
//!
//! ```text
//! scripts/brokers.sh start kafka
//! cargo run --release -p broker-kafka --example throughput -- [MESSAGES] [ROUNDS]
//! ```
//!
//! `BROKER_TEST_KAFKA` (default `127.0.0.1:9092`) names the broker. Publishing uses `acks=all`
//! and the idempotent producer on both sides; consuming reads a prepared topic with a new group
//! each time (the adapter acknowledges every delivery, the raw loop stores every offset).

use std::time::{Duration, Instant};

use broker_api::{Backend, ConnectOptions, Message, SubscribeRequest, TopicSpec};
use broker_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use broker_kafka::rdkafka::message::{Header, OwnedHeaders};
use broker_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker_kafka::rdkafka::ClientConfig;
use broker_kafka::{KafkaBackend, KafkaConfig};
use futures::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let bootstrap =
        std::env::var("BROKER_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut config = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        ..KafkaConfig::default()
    };
    // THROUGHPUT_PROPS="name=value,name=value" adds librdkafka properties to the adapter.
    for pair in std::env::var("THROUGHPUT_PROPS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, value)) = pair.split_once('=') {
            config.properties.insert(name.into(), value.into());
        }
    }
    let backend = KafkaBackend::connect(config, ConnectOptions::default()).await?;
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let run = std::process::id();
    // THROUGHPUT_ONLY=publish or =consume runs one half (for profiling).
    let only = std::env::var("THROUGHPUT_ONLY").ok();

    for size in [100usize, 1024] {
        let topic = format!("throughput-{run}-{size}");
        backend.ensure_topic(&TopicSpec::new(&topic)).await?;
        let payload = vec![b'x'; size];
        let mut publish = [Sample::default(), Sample::default(), Sample::default()];
        if only.as_deref() == Some("consume") {
            // Fill the topic as the publish rounds would, then only measure consuming.
            for _ in 0..rounds * 3 {
                raw_publish(&raw, &topic, &payload, messages, true).await?;
            }
        }
        for _ in 0..rounds {
            if only.as_deref() == Some("consume") {
                break;
            }
            publish[0].add(
                messages,
                measured(raw_publish(&raw, &topic, &payload, messages, false)).await?,
            );
            publish[1].add(
                messages,
                measured(raw_publish(&raw, &topic, &payload, messages, true)).await?,
            );
            publish[2].add(
                messages,
                measured(our_publish(&backend, &topic, &payload, messages)).await?,
            );
        }
        let [raw_plain, raw_id, ours] = &mut publish;
        if only.as_deref() != Some("consume") {
            report(&format!("publish {size} B"), raw_plain, ours);
            report(&format!("vs raw + id {size} B"), raw_id, ours);
        }
        if only.as_deref() == Some("publish") {
            backend.delete_topic(&topic).await?;
            continue;
        }

        let mut consume = [Sample::default(), Sample::default()];
        let total = messages * rounds * 3;
        for round in 0..rounds {
            let group = format!("raw-{run}-{size}-{round}");
            let (bootstrap, raw_topic) = (bootstrap.clone(), topic.clone());
            consume[0].add(
                total,
                measured(async move {
                    tokio::task::spawn_blocking(move || {
                        raw_consume(&bootstrap, &raw_topic, &group, total)
                    })
                    .await?
                })
                .await?,
            );
            let group = format!("ours-{run}-{size}-{round}");
            consume[1].add(
                total,
                measured(our_consume(&backend, &topic, &group, total)).await?,
            );
        }
        let [raw_loop, ours] = &mut consume;
        report(&format!("consume {size} B"), raw_loop, ours);
        backend.delete_topic(&topic).await?;
    }
    backend.close().await?;
    Ok(())
}

/// CPU time (user + system) this process used so far, from `/proc/self/stat` (Linux; zero
/// elsewhere). With other work on the machine, CPU per message is steadier than wall time.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which ends with ')'): utime and stime are 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// Runs `work` and returns its wall time and the CPU time the process used meanwhile.
async fn measured<F: std::future::Future<Output = anyhow::Result<Duration>>>(
    work: F,
) -> anyhow::Result<(Duration, Duration)> {
    let cpu = cpu_time();
    let took = work.await?;
    Ok((took, cpu_time().saturating_sub(cpu)))
}

/// Rates and CPU use of one variant over the rounds.
#[derive(Default)]
struct Sample {
    rates: Vec<f64>,
    cpu: Duration,
    messages: usize,
}

impl Sample {
    fn add(&mut self, messages: usize, (took, cpu): (Duration, Duration)) {
        self.rates.push(messages as f64 / took.as_secs_f64());
        self.cpu += cpu;
        self.messages += messages;
    }

    fn median(&mut self) -> f64 {
        self.rates.sort_by(f64::total_cmp);
        self.rates[self.rates.len() / 2]
    }

    fn cpu_per_message_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages as f64
    }
}

fn report(what: &str, raw: &mut Sample, ours: &mut Sample) {
    let (raw_rate, our_rate) = (raw.median(), ours.median());
    println!(
        "{what:>20}: raw {raw_rate:>9.0} msg/s {:>5.2} us CPU/msg | adapter {our_rate:>9.0} msg/s \
         {:>5.2} us CPU/msg | ratio {:.1}%",
        raw.cpu_per_message_us(),
        ours.cpu_per_message_us(),
        100.0 * our_rate / raw_rate
    );
}

async fn raw_publish(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    messages: usize,
    with_id: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages);
    for _ in 0..messages {
        let mut record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
        if with_id {
            // What the adapter writes: a `message-id` header holding a UUID.
            let id = broker_api::MessageId::random();
            record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "message-id",
                value: Some(id.as_str()),
            }));
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed())
}

async fn our_publish(
    backend: &KafkaBackend,
    topic: &str,
    payload: &[u8],
    messages: usize,
) -> anyhow::Result<Duration> {
    let payload = bytes::Bytes::copy_from_slice(payload);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages);
    for _ in 0..messages {
        pending.push(backend.send(topic, Message::new(payload.clone())).await?);
    }
    for confirmation in pending {
        confirmation.await?;
    }
    Ok(started.elapsed())
}

fn raw_consume(
    bootstrap: &str,
    topic: &str,
    group: &str,
    messages: usize,
) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        // As the adapter does: a consumer faster than the fetcher is not left waiting 1 s.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut started = None;
    let mut seen = 0;
    while seen < messages {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            started.get_or_insert_with(Instant::now);
            consumer.store_offset_from_message(&message)?;
            seen += 1;
        }
    }
    Ok(started.map_or(Duration::ZERO, |s| s.elapsed()))
}

async fn our_consume(
    backend: &KafkaBackend,
    topic: &str,
    group: &str,
    messages: usize,
) -> anyhow::Result<Duration> {
    let mut stream = backend
        .subscribe(SubscribeRequest::new(topic, group).max_in_flight(1024))
        .await?;
    let mut started = None;
    let mut seen = 0;
    while seen < messages {
        let Some(delivery) = stream.next().await else {
            anyhow::bail!("the subscription ended after {seen} messages");
        };
        started.get_or_insert_with(Instant::now);
        delivery?.ack().await?;
        seen += 1;
    }
    let took = started.map_or(Duration::ZERO, |s| s.elapsed());
    stream.close().await?;
    Ok(took)
}
