//! Throughput smoke run: this adapter against raw lapin on the same broker, same topology
//! (a topic exchange with one quorum queue bound with `#`), same confirm window, same prefetch,
//! interleaved rounds (raw, ours, raw, ours...), median of each.
//!
//! ```text
//! scripts/brokers.sh start rabbitmq
//! cargo run --release -p broker-rabbitmq --example throughput -- [MESSAGES] [ROUNDS]
//! ```
//!
//! Uses `BROKER_TEST_RABBITMQ` (default: the local broker). Publishing: messages of 100 bytes,
//! persistent, with a message id and timestamp on both sides, `mandatory`, with publisher
//! confirms and a window of 1024 unconfirmed. Consuming: prefetch 256, one ack per message.

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
    let (mut raw_pub, mut our_pub, mut raw_con, mut our_con) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        admin
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
        let r = rate(
            messages,
            publish_raw(&raw_publish, &topic, &payload, messages).await?,
        );
        let c = rate(messages, consume_raw(&raw, &queue, messages).await?);
        admin
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
        let o = rate(
            messages,
            publish_ours(&ours, &topic, &payload, messages).await?,
        );
        let d = rate(messages, consume_ours(&ours, &topic, messages).await?);
        println!(
            "round {round}: publish raw {r:>8.0}/s ours {o:>8.0}/s | consume raw {c:>8.0}/s ours {d:>8.0}/s"
        );
        raw_pub.push(r);
        our_pub.push(o);
        raw_con.push(c);
        our_con.push(d);
    }
    let (rp, op, rc, oc) = (
        median(raw_pub),
        median(our_pub),
        median(raw_con),
        median(our_con),
    );
    println!(
        "median: publish raw {rp:.0}/s ours {op:.0}/s = {:.1}% | consume raw {rc:.0}/s ours {oc:.0}/s = {:.1}%",
        100.0 * op / rp,
        100.0 * oc / rc
    );
    ours.delete_topic(&topic).await?;
    ours.close().await?;
    raw.close(200, "done".into()).await?;
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
/// mandatory, confirms awaited in a window.
async fn publish_raw(
    channel: &Channel,
    exchange: &str,
    payload: &[u8],
    messages: usize,
) -> AnyResult<Duration> {
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

async fn consume_raw(connection: &Connection, queue: &str, messages: usize) -> AnyResult<Duration> {
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
    for _ in 0..messages {
        let delivery = consumer.next().await.ok_or("consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
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
