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
    let config = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        ..KafkaConfig::default()
    };
    let backend = KafkaBackend::connect(config, ConnectOptions::default()).await?;
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let run = std::process::id();

    for size in [100usize, 1024] {
        let topic = format!("throughput-{run}-{size}");
        backend.ensure_topic(&TopicSpec::new(&topic)).await?;
        let payload = vec![b'x'; size];
        let (mut raw_rates, mut raw_id_rates, mut our_rates) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let took = raw_publish(&raw, &topic, &payload, messages, false).await?;
            raw_rates.push(rate(messages, took));
            let took = raw_publish(&raw, &topic, &payload, messages, true).await?;
            raw_id_rates.push(rate(messages, took));
            let took = our_publish(&backend, &topic, &payload, messages).await?;
            our_rates.push(rate(messages, took));
        }
        report(
            &format!("publish {size} B"),
            &mut raw_rates,
            &mut our_rates.clone(),
        );
        report(
            &format!("vs raw + id {size} B"),
            &mut raw_id_rates,
            &mut our_rates,
        );

        let (mut raw_rates, mut our_rates) = (Vec::new(), Vec::new());
        let total = messages * rounds * 3;
        for round in 0..rounds {
            let group = format!("raw-{run}-{size}-{round}");
            let took = tokio::task::spawn_blocking({
                let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
                move || raw_consume(&bootstrap, &topic, &group, total)
            })
            .await??;
            raw_rates.push(rate(total, took));
            let group = format!("ours-{run}-{size}-{round}");
            our_rates.push(rate(
                total,
                our_consume(&backend, &topic, &group, total).await?,
            ));
        }
        report(&format!("consume {size} B"), &mut raw_rates, &mut our_rates);
        backend.delete_topic(&topic).await?;
    }
    backend.close().await?;
    Ok(())
}

fn rate(messages: usize, took: Duration) -> f64 {
    messages as f64 / took.as_secs_f64()
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn report(what: &str, raw: &mut [f64], ours: &mut [f64]) {
    let (raw, ours) = (median(raw), median(ours));
    println!(
        "{what:>16}: raw {raw:>10.0} msg/s, adapter {ours:>10.0} msg/s, ratio {:.1}%",
        100.0 * ours / raw
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
