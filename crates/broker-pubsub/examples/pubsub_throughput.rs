//! Throughput smoke run: this backend against the raw `google-cloud-pubsub` client on the same
//! emulator, same batching and flow control, interleaved (raw, ours, raw, ours...), medians
//! printed. A program that prints numbers, not a test.
//!
//! ```text
//! scripts/brokers.sh start pubsub
//! cargo run --release -p broker-pubsub --example pubsub_throughput -- [ENDPOINT] [PUBLISH] [CONSUME] [ROUNDS]
//! ```
//!
//! Defaults: `http://127.0.0.1:8085`, 50 000 messages of 100 bytes published, 5 000 consumed,
//! 3 rounds. Publishing keeps every message in flight (batches of 100 / 1 MB / 10 ms);
//! consuming reads a backlog of its own with 1 000 messages in flight, acknowledging each
//! (the emulator hands out at most 100 messages per stream every 50 ms, so consuming is bound
//! by the emulator). `RAW_ATTRS=1` makes the raw client add a `message-id` attribute as this
//! backend does, to separate the cost of the wire format from the cost of the adapter.

use std::time::{Duration, Instant};

use broker_api::{Backend, ConnectOptions, Message, SubscribeRequest, TopicSpec};
use broker_pubsub::google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use broker_pubsub::google_cloud_pubsub::client::{BasePublisher, Subscriber};
use broker_pubsub::google_cloud_pubsub::model::Message as PubsubMessage;
use broker_pubsub::{PubSubBackend, PubSubConfig};
use bytes::Bytes;
use futures::StreamExt;

const PROJECT: &str = "throughput";
const IN_FLIGHT: usize = 1000;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> AnyResult<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8085".to_owned());
    let messages: usize = args.next().map_or(Ok(50_000), |v| v.parse())?;
    let consumed: usize = args.next().map_or(Ok(5_000), |v| v.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |v| v.parse())?;
    let payload = Bytes::from(vec![b'x'; 100]);

    let config = PubSubConfig {
        project: PROJECT.to_owned(),
        endpoint: Some(endpoint.clone()),
        ..PubSubConfig::default()
    };
    let backend = PubSubBackend::connect(config.clone(), ConnectOptions::default()).await?;
    let base = BasePublisher::builder()
        .with_endpoint(&endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;
    let subscriber = Subscriber::builder()
        .with_endpoint(&endpoint)
        .with_credentials(Anonymous::new().build())
        .build()
        .await?;

    let mut publish = (Vec::new(), Vec::new());
    let mut consume = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let topic = format!("throughput-{}-{round}", std::process::id());
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("raw").group("ours"))
            .await?;
        let topic_path = format!("projects/{PROJECT}/topics/{topic}");

        // Publish: raw client, then this backend, same batching, every message in flight.
        let raw = base
            .publisher(&topic_path)
            .set_message_count_threshold(config.batch_max_messages)
            .set_byte_threshold(config.batch_max_bytes)
            .set_delay_threshold(config.batch_max_delay)
            .build();
        let started = Instant::now();
        let cpu_raw = cpu_time();
        let pending: Vec<_> = (0..messages)
            .map(|_| {
                let mut message = PubsubMessage::new().set_data(payload.clone());
                if std::env::var("RAW_ATTRS").is_ok() {
                    message.attributes.insert(
                        "message-id".to_owned(),
                        broker_api::MessageId::random().to_string(),
                    );
                }
                raw.publish(message)
            })
            .collect();
        let queued_raw = started.elapsed();
        for id in futures::future::join_all(pending).await {
            id?;
        }
        publish.0.push(rate(messages, started.elapsed()));
        let cpu_raw = cpu_time() - cpu_raw;

        let started = Instant::now();
        let cpu_ours = cpu_time();
        let mut confirmations = Vec::with_capacity(messages);
        for _ in 0..messages {
            confirmations.push(backend.send(&topic, Message::new(payload.clone())).await?);
        }
        let queued_ours = started.elapsed();
        for receipt in futures::future::join_all(confirmations).await {
            receipt?;
        }
        publish.1.push(rate(messages, started.elapsed()));
        let cpu_ours = cpu_time() - cpu_ours;
        println!(
            "round {round}: client CPU per published message: raw {:.2} us, ours {:.2} us \
             (queueing took raw {queued_raw:?}, ours {queued_ours:?})",
            cpu_raw * 1e6 / messages as f64,
            cpu_ours * 1e6 / messages as f64
        );

        backend.delete_topic(&topic).await?;

        // Consume: a fresh topic whose two groups each have `consumed` messages waiting (the
        // emulator slows down with long backlogs), published by this backend.
        let topic = format!("{topic}-consume");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("raw").group("ours"))
            .await?;
        let mut confirmations = Vec::with_capacity(consumed);
        for _ in 0..consumed {
            confirmations.push(backend.send(&topic, Message::new(payload.clone())).await?);
        }
        for receipt in futures::future::join_all(confirmations).await {
            receipt?;
        }
        let started = Instant::now();
        let mut stream = subscriber
            .subscribe(format!("projects/{PROJECT}/subscriptions/{topic}.raw"))
            .set_max_outstanding_messages(IN_FLIGHT as i64)
            .build();
        for _ in 0..consumed {
            let (_, handler) = stream.next().await.ok_or("raw stream ended")??;
            handler.ack();
        }
        consume.0.push(rate(consumed, started.elapsed()));
        stream.shutdown_token().shutdown().await;

        let started = Instant::now();
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "ours").max_in_flight(IN_FLIGHT))
            .await?;
        for _ in 0..consumed {
            let delivery = stream.next().await.ok_or("stream ended")??;
            delivery.ack().await?;
        }
        consume.1.push(rate(consumed, started.elapsed()));
        stream.close().await?;
        backend.delete_topic(&topic).await?;
        println!(
            "round {round}: publish raw {:>8.0} msg/s, ours {:>8.0} msg/s | consume raw {:>8.0} msg/s, ours {:>8.0} msg/s",
            publish.0[round], publish.1[round], consume.0[round], consume.1[round]
        );
    }
    let (raw_pub, ours_pub) = (median(publish.0), median(publish.1));
    let (raw_sub, ours_sub) = (median(consume.0), median(consume.1));
    println!(
        "median of {rounds} rounds, {messages} messages of {} bytes published, {consumed} consumed:",
        payload.len()
    );
    println!(
        "  publish  raw {raw_pub:>8.0} msg/s  ours {ours_pub:>8.0} msg/s  ratio {:.2}",
        ours_pub / raw_pub
    );
    println!(
        "  consume  raw {raw_sub:>8.0} msg/s  ours {ours_sub:>8.0} msg/s  ratio {:.2}",
        ours_sub / raw_sub
    );
    backend.close().await?;
    Ok(())
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

/// CPU seconds this process used so far (user and system), from `/proc/self/stat`.
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
