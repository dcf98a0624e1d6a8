//! Peak memory of a subscription over a large backlog with a slow handler: it must be bounded
//! by `max_in_flight`, not by the backlog.
//!
//! Each measurement runs in a child process of its own (this program again, with a hidden
//! flag), so that no earlier scenario's allocations blur it. The child records its resident
//! memory (`VmRSS`) just before subscribing, resets the peak (`VmHWM`), runs an `at_least_once`
//! subscription whose handler sleeps 1 ms per message for [`RUN`], and reports the peak
//! (the kernel's `VmHWM` and a 5 ms sampling of `VmRSS`). On the memory backend the backlog
//! itself lives in the process and is published before the "before" reading; on Kafka the
//! parent fills the topic once and each child reads it with a new group; on RabbitMQ and
//! Pub/Sub the parent fills one group (queue, subscription) per child.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use broker_api::{Broker, ConnectOptions, Received, Topic, TopicSpec};
use broker_kafka::KafkaBackend;
use broker_memory::MemoryBackend;
use broker_pubsub::{PubSubBackend, PubSubConfig};
use broker_rabbitmq::{RabbitMqBackend, RabbitMqConfig};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::common::{
    endpoint, fresh_name, plain_payload, publish_round, reset_peak, rss_kib, DEFAULT_PENDING,
};

/// How long the slow handler runs.
const RUN: Duration = Duration::from_secs(10);
/// Payload size of the backlog.
const SIZE: usize = 100;
/// (backlog, max_in_flight) pairs measured on each backend.
const CASES: [(usize, usize); 3] = [(1_000_000, 256), (1_000_000, 4096), (100_000, 256)];

/// One measurement.
#[derive(Debug, Serialize, Deserialize)]
pub struct Footprint {
    backend: String,
    backlog: usize,
    max_in_flight: usize,
    rss_before_mib: f64,
    peak_mib: f64,
    growth_mib: f64,
    handled: usize,
    peak_reset: bool,
}

/// Runs every measurement, each in a child process.
pub async fn run() -> anyhow::Result<Vec<Footprint>> {
    let mut results = Vec::new();
    for (backlog, in_flight) in CASES {
        eprintln!("footprint: memory, backlog {backlog}, max_in_flight {in_flight}");
        results.push(spawn(&format!("memory:{backlog}:{in_flight}:-")).await?);
    }
    let kafka = crate::kafka::Bench::connect().await?;
    let mut filled: Vec<(usize, String)> = Vec::new();
    for (backlog, in_flight) in CASES {
        let topic = match filled.iter().find(|(b, _)| *b == backlog) {
            Some((_, topic)) => topic.clone(),
            None => {
                eprintln!("footprint: filling a Kafka topic with {backlog} messages");
                let topic = kafka.topic("kpeak").await?;
                kafka
                    .raw_publish(&topic, plain_payload(SIZE), backlog, false)
                    .await?;
                filled.push((backlog, topic.clone()));
                topic
            }
        };
        eprintln!("footprint: kafka, backlog {backlog}, max_in_flight {in_flight}");
        results.push(spawn(&format!("kafka:{backlog}:{in_flight}:{topic}")).await?);
    }
    for (_, topic) in filled {
        kafka.delete(&topic).await?;
    }
    results.extend(rabbitmq().await?);
    results.extend(pubsub().await?);
    Ok(results)
}

/// RabbitMQ and Pub/Sub keep messages only for the groups (queues, subscriptions) that exist
/// when they are published: one topic with a group per child, filled together. The groups of
/// the `large` backlog exist from the start; the group of the `small` one joins for the last
/// `small` messages, so that the same `max_in_flight` is measured over both.
async fn grouped(
    kind: &str,
    broker: Broker,
    large: usize,
    small: usize,
) -> anyhow::Result<Vec<Footprint>> {
    let topic = fresh_name(&format!("{kind}-peak"));
    let cases = [(large, 256), (large, 4096), (small, 256)];
    let mut spec = TopicSpec::new(&topic);
    for (_, in_flight) in cases.iter().filter(|(backlog, _)| *backlog == large) {
        spec = spec.group(group_of(large, *in_flight));
    }
    broker.ensure_topic(&spec).await?;
    eprintln!("footprint: filling the {kind} groups of {topic} with {large} and {small} messages");
    publish_round(&broker, &topic, SIZE, large - small, DEFAULT_PENDING).await?;
    broker
        .ensure_topic(&TopicSpec::new(&topic).group(group_of(small, 256)))
        .await?;
    publish_round(&broker, &topic, SIZE, small, DEFAULT_PENDING).await?;
    let mut results = Vec::new();
    for (backlog, in_flight) in cases {
        eprintln!("footprint: {kind}, backlog {backlog}, max_in_flight {in_flight}");
        results.push(spawn(&format!("{kind}:{backlog}:{in_flight}:{topic}")).await);
    }
    broker.backend().delete_topic(&topic).await?;
    broker.close().await?;
    results.into_iter().collect()
}

/// The group a RabbitMQ or Pub/Sub child reads.
fn group_of(backlog: usize, in_flight: usize) -> String {
    format!("slow-{backlog}-{in_flight}")
}

/// RabbitMQ: the backlogs memory and Kafka are measured over.
async fn rabbitmq() -> anyhow::Result<Vec<Footprint>> {
    let broker = Broker::new(rabbitmq_backend().await?);
    grouped("rabbitmq", broker, 1_000_000, 100_000).await
}

/// Pub/Sub: 100 000 and 10 000 messages per subscription (the emulator keeps them in its
/// 512 MiB heap).
async fn pubsub() -> anyhow::Result<Vec<Footprint>> {
    let broker = Broker::new(pubsub_backend().await?);
    grouped("pubsub", broker, 100_000, 10_000).await
}

async fn rabbitmq_backend() -> broker_api::Result<RabbitMqBackend> {
    let config = RabbitMqConfig {
        uri: endpoint("BROKER_TEST_RABBITMQ", broker_rabbitmq::DEFAULT_URI),
        ..RabbitMqConfig::default()
    };
    RabbitMqBackend::connect(config, ConnectOptions::default()).await
}

async fn pubsub_backend() -> broker_api::Result<PubSubBackend> {
    let config = PubSubConfig {
        endpoint: Some(endpoint("BROKER_TEST_PUBSUB", "http://127.0.0.1:8085")),
        ..PubSubConfig::default()
    };
    PubSubBackend::connect(config, ConnectOptions::default()).await
}

async fn spawn(spec: &str) -> anyhow::Result<Footprint> {
    let exe = std::env::current_exe()?;
    let output = tokio::process::Command::new(exe)
        .arg("--footprint-child")
        .arg(spec)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "footprint run {spec} failed");
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("footprint output {line:?}"))
}

/// The child: `backend:backlog:max_in_flight:topic`.
pub async fn child(spec: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [backend, backlog, in_flight, topic] = parts[..] else {
        anyhow::bail!("bad footprint spec {spec:?}");
    };
    let backlog: usize = backlog.parse()?;
    let in_flight: usize = in_flight.parse()?;
    let (broker, topic) = match backend {
        "memory" => {
            let broker = Broker::new(MemoryBackend::new());
            let topic = "backlog".to_owned();
            broker
                .ensure_topic(&TopicSpec::new(&topic).group("slow"))
                .await?;
            let publisher = broker.publisher(&Topic::bytes(topic.as_str()));
            let payload = plain_payload(SIZE);
            for _ in 0..backlog {
                publisher.send(&payload).await?.await?;
            }
            (broker, topic)
        }
        "kafka" => {
            let config = crate::kafka::config()?;
            let backend = KafkaBackend::connect(config, ConnectOptions::default()).await?;
            (Broker::new(backend), topic.to_owned())
        }
        "rabbitmq" => (Broker::new(rabbitmq_backend().await?), topic.to_owned()),
        "pubsub" => (Broker::new(pubsub_backend().await?), topic.to_owned()),
        other => anyhow::bail!("no footprint run for {other}"),
    };
    let group = match backend {
        "memory" => "slow".to_owned(),
        "rabbitmq" | "pubsub" => group_of(backlog, in_flight),
        _ => fresh_name("slow"),
    };
    // Let allocator caches settle, then measure from here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, _) = rss_kib();
    let peak_reset = reset_peak();
    let sampled = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sampled, stop) = (sampled.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                sampled.fetch_max(rss_kib().0, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let running = broker
        .subscriber(&Topic::bytes(topic.as_str()), group)
        .max_in_flight(in_flight)
        .at_least_once(move |_message: Received<Bytes>| {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
    tokio::time::sleep(RUN).await;
    let (_, hwm) = rss_kib();
    stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let peak = if peak_reset {
        hwm.max(sampled.load(Ordering::Acquire))
    } else {
        sampled.load(Ordering::Acquire)
    };
    let handled = handled.load(Ordering::Relaxed);
    running.close().await?;
    broker.close().await?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let footprint = Footprint {
        backend: backend.to_owned(),
        backlog,
        max_in_flight: in_flight,
        rss_before_mib: mib(before),
        peak_mib: mib(peak),
        growth_mib: mib(peak.saturating_sub(before)),
        handled,
        peak_reset,
    };
    println!("{}", serde_json::to_string(&footprint)?);
    Ok(())
}

/// The footprints as a Markdown table.
pub fn table(footprints: &[Footprint]) -> String {
    let mut out = String::from(
        "| footprint: slow handler (1 ms), 100 B messages | backlog | max_in_flight | RSS before subscribing | peak while consuming | growth | handled in 10 s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for f in footprints {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |\n",
            f.backend,
            f.backlog,
            f.max_in_flight,
            f.rss_before_mib,
            f.peak_mib,
            f.growth_mib,
            f.handled
        ));
    }
    out
}
