//! Throughput smoke run: this adapter against raw lapin on the same broker, same topology
//! (a topic exchange with one quorum queue bound with `#`), same confirm window, same prefetch,
//! interleaved in every round, median of the rounds. A smoke run for humans, not a timed test.
//!
//! ```text
//! scripts/brokers.sh start rabbitmq
//! cargo run --release -p broker-rabbitmq --example throughput -- [MESSAGES] [ROUNDS]
//! ```
//!
//! Uses `BROKER_TEST_RABBITMQ` (default: the local broker). Publishing: messages of 100 bytes,
//! persistent, with a message id and timestamp on both sides, `mandatory`, with publisher
//! confirms and a window of 1024 unconfirmed; raw lapin both awaiting each `basic_publish`
//! (the usual loop) and keeping the publish futures in flight (`raw-pipelined`). Consuming a
//! prefilled queue: prefetch 256, one ack per message; raw lapin both awaiting each ack and
//! not (`raw-unawaited-ack`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use broker_api::{Backend, ConnectOptions, Message, MessageId, SubscribeRequest, TopicSpec};
use broker_rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueuePurgeOptions,
};
use broker_rabbitmq::lapin::types::{FieldTable, ShortString};
use broker_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use broker_rabbitmq::{RabbitMqBackend, RabbitMqConfig};
use futures::StreamExt;

const WINDOW: usize = 1024;
const PREFETCH: usize = 256;
const PAYLOAD: usize = 100;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> AnyResult<()> {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let uri = std::env::var("BROKER_TEST_RABBITMQ")
        .unwrap_or_else(|_| broker_rabbitmq::DEFAULT_URI.to_owned());

    let config = RabbitMqConfig {
        uri: uri.clone(),
        confirm_window: WINDOW,
        ..RabbitMqConfig::default()
    };
    let ours = RabbitMqBackend::connect(config, ConnectOptions::default()).await?;
    let topic = format!("throughput-{}", std::process::id());
    ours.ensure_topic(&TopicSpec::new(&topic).group("bench"))
        .await?;
    let queue = broker_api::naming::group_resource(&topic, "bench");

    let raw = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let raw_publish = raw.create_channel().await?;
    raw_publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let admin = raw.create_channel().await?;
    let payload = vec![b'x'; PAYLOAD];

    println!("{messages} messages of {PAYLOAD} bytes, {rounds} rounds, window {WINDOW}, prefetch {PREFETCH}");
    // Columns: publish raw, raw-pipelined, ours; consume raw, raw-unawaited-ack, ours.
    let mut samples: [Vec<f64>; 6] = Default::default();
    for round in 1..=rounds {
        let mut rates = [0.0; 6];
        for (variant, slot) in rates[..3].iter_mut().enumerate() {
            purge(&admin, &queue).await?;
            let took = match variant {
                0 => publish_raw(&raw_publish, &topic, &payload, messages, false).await?,
                1 => publish_raw(&raw_publish, &topic, &payload, messages, true).await?,
                _ => publish_ours(&ours, &topic, &payload, messages).await?,
            };
            *slot = rate(messages, took);
        }
        for variant in 0..3 {
            purge(&admin, &queue).await?;
            publish_ours(&ours, &topic, &payload, messages).await?;
            let took = match variant {
                0 => consume_raw(&raw, &queue, messages, false).await?,
                1 => consume_raw(&raw, &queue, messages, true).await?,
                _ => consume_ours(&ours, &topic, messages).await?,
            };
            rates[3 + variant] = rate(messages, took);
        }
        println!(
            "round {round}: publish raw {:.0}/s raw-pipelined {:.0}/s ours {:.0}/s | consume raw \
             {:.0}/s raw-unawaited-ack {:.0}/s ours {:.0}/s",
            rates[0], rates[1], rates[2], rates[3], rates[4], rates[5]
        );
        for (sample, rate) in samples.iter_mut().zip(rates) {
            sample.push(rate);
        }
    }
    let m: Vec<f64> = samples.into_iter().map(median).collect();
    println!(
        "median publish: raw {:.0}/s, raw-pipelined {:.0}/s, ours {:.0}/s = {:.1}% of raw, \
         {:.1}% of raw-pipelined",
        m[0],
        m[1],
        m[2],
        100.0 * m[2] / m[0],
        100.0 * m[2] / m[1]
    );
    println!(
        "median consume: raw {:.0}/s, raw-unawaited-ack {:.0}/s, ours {:.0}/s = {:.1}% of raw, \
         {:.1}% of raw-unawaited-ack",
        m[3],
        m[4],
        m[5],
        100.0 * m[5] / m[3],
        100.0 * m[5] / m[4]
    );
    ours.delete_topic(&topic).await?;
    ours.close().await?;
    raw.close(200, "done".into()).await?;
    Ok(())
}

async fn purge(admin: &Channel, queue: &str) -> AnyResult<()> {
    admin
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    Ok(())
}

fn rate(messages: usize, took: Duration) -> f64 {
    messages as f64 / took.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Raw lapin with the same wire content as the adapter: persistent, message id, timestamp,
/// mandatory, confirms awaited in a window. `pipelined` keeps the publish futures themselves in
/// flight (not awaiting each frame write) instead of awaiting each `basic_publish`.
async fn publish_raw(
    channel: &Channel,
    exchange: &str,
    payload: &[u8],
    messages: usize,
    pipelined: bool,
) -> AnyResult<Duration> {
    if pipelined {
        return publish_raw_pipelined(channel, exchange, payload, messages).await;
    }
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for _ in 0..messages {
        if pending.len() == WINDOW {
            if let Some(confirm) = pending.pop_front() {
                let confirm: broker_rabbitmq::lapin::PublisherConfirm = confirm;
                assert!(confirm.await?.is_ack());
            }
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(MessageId::random().as_str()))
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs(),
            );
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        assert!(confirm.await?.is_ack());
    }
    Ok(started.elapsed())
}

async fn publish_raw_pipelined(
    channel: &Channel,
    exchange: &str,
    payload: &[u8],
    messages: usize,
) -> AnyResult<Duration> {
    let started = Instant::now();
    let mut pending = futures::stream::FuturesOrdered::new();
    for _ in 0..messages {
        if pending.len() == WINDOW {
            let confirmed: broker_rabbitmq::lapin::Result<broker_rabbitmq::lapin::Confirmation> =
                pending.next().await.ok_or("no pending publish")?;
            assert!(confirmed?.is_ack());
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(MessageId::random().as_str()))
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs(),
            );
        let channel = channel.clone();
        let exchange = ShortString::from(exchange);
        let payload = payload.to_vec();
        pending.push_back(async move {
            channel
                .basic_publish(
                    exchange,
                    "".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &payload,
                    properties,
                )
                .await?
                .await
        });
    }
    while let Some(confirmed) = pending.next().await {
        assert!(confirmed?.is_ack());
    }
    Ok(started.elapsed())
}

async fn publish_ours(
    backend: &RabbitMqBackend,
    topic: &str,
    payload: &[u8],
    messages: usize,
) -> AnyResult<Duration> {
    let payload = bytes::Bytes::copy_from_slice(payload);
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for _ in 0..messages {
        if pending.len() == WINDOW {
            if let Some(confirmation) = pending.pop_front() {
                let confirmation: broker_api::Confirmation = confirmation;
                confirmation.await?;
            }
        }
        pending.push_back(backend.send(topic, Message::new(payload.clone())).await?);
    }
    for confirmation in pending {
        confirmation.await?;
    }
    Ok(started.elapsed())
}

/// A raw lapin consumer acknowledging each delivery; `unawaited` hands each ack to a
/// background set instead of awaiting its write.
async fn consume_raw(
    connection: &Connection,
    queue: &str,
    messages: usize,
    unawaited: bool,
) -> AnyResult<Duration> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH as u16, BasicQosOptions { global: false })
        .await?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..messages {
        let delivery = consumer.next().await.ok_or("consumer ended")??;
        if unawaited {
            acks.push(async move { delivery.ack(BasicAckOptions::default()).await });
            while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
                done?;
            }
        } else {
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    while let Some(done) = acks.next().await {
        done?;
    }
    let took = started.elapsed();
    channel.close(200, "done".into()).await?;
    Ok(took)
}

async fn consume_ours(
    backend: &RabbitMqBackend,
    topic: &str,
    messages: usize,
) -> AnyResult<Duration> {
    let started = Instant::now();
    let mut stream = backend
        .subscribe(SubscribeRequest::new(topic, "bench").max_in_flight(PREFETCH))
        .await?;
    for _ in 0..messages {
        let delivery = stream.next().await.ok_or("stream ended")??;
        delivery.ack().await?;
    }
    let took = started.elapsed();
    stream.close().await?;
    Ok(took)
}
