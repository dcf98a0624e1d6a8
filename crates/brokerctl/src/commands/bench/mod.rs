//! `brokerctl bench`: P publishers send N messages of S bytes, many in flight each, while one
//! at-least-once subscription (started first) consumes them; then throughput and end-to-end
//! latency are printed.
//!
//! Each message carries its send time (nanoseconds since the run started) in its first 8 bytes,
//! or in the `bench-sent-ns` header when the payload is shorter, and its sequence number in the
//! next 8, or in the `bench-seq` header: a redelivered message counts once. Its id starts
//! with the run's own id: messages an earlier run on the same topic left unconsumed are not
//! counted.

mod arrivals;
mod progress;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use broker::{Broker, ErrorKind, HandlerResult, Publisher, Received, Topic, TopicSpec};
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::arrivals::Arrivals;
use self::progress::{Counters, Progress};
use self::stats::{latency_line, throughput_line, Latencies};
use crate::cli::BenchArgs;
use crate::output;

/// The header holding the send time when the payload is shorter than 8 bytes.
const SENT_HEADER: &str = "bench-sent-ns";
/// The header holding the sequence number when the payload is shorter than 16 bytes.
const SEQUENCE_HEADER: &str = "bench-seq";

/// What the consumer records.
struct Consumed {
    /// The id prefix of this run's messages.
    run: String,
    started: Instant,
    arrivals: Arrivals,
    counters: Arc<Counters>,
    latencies: Mutex<Vec<u64>>,
    all_arrived: CancellationToken,
    last_at: Mutex<Option<Instant>>,
    /// Messages of earlier runs, not counted.
    left_over: AtomicU64,
}

impl Consumed {
    fn record(&self, message: &Received<Bytes>) {
        let now = Instant::now();
        let ours = message.metadata.message_id.as_ref();
        if !ours.is_some_and(|id| id.as_str().starts_with(&self.run)) {
            self.left_over.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.consumed.fetch_add(1, Ordering::AcqRel);
        let first = sequence(message).is_some_and(|sequence| self.arrivals.record(sequence));
        if !first {
            return;
        }
        if let Some(sent) = sent_ns(message) {
            self.latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(nanos_since(self.started, now).saturating_sub(sent));
        }
        if self.arrivals.complete() {
            *self.last_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
            self.all_arrived.cancel();
        }
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(broker: &Broker, args: BenchArgs) -> anyhow::Result<()> {
    let fresh = args.topic.is_none();
    let topic_name = args.topic.clone().unwrap_or_else(|| {
        format!(
            "brokerctl-bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    // Declared with its group first, so brokers that keep messages only for existing groups
    // keep every one.
    broker
        .ensure_topic(&TopicSpec::new(&topic_name).group(&args.group))
        .await
        .with_context(|| format!("cannot create topic {topic_name}"))?;
    // Interrupted, the run stops where it is; a topic made for it is deleted all the same.
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = measure(broker, &args, &topic_name) => result,
        () = interrupted => Err(anyhow::anyhow!("interrupted")),
    };
    // Deleting the topic and closing may take a while: a Ctrl-C then ends the process.
    super::exit_on_interrupt();
    if fresh {
        match broker.backend().delete_topic(&topic_name).await {
            Err(e) if e.kind() != ErrorKind::Unsupported => {
                eprintln!("bench: the topic {topic_name} was not deleted: {e}");
            }
            _ => {}
        }
    } else {
        eprintln!(
            "bench: group {} of topic {topic_name} remains; on RabbitMQ and Pub/Sub it keeps \
             every later message of the topic until it is removed with the broker's own tools",
            args.group
        );
    }
    result
}

async fn measure(broker: &Broker, args: &BenchArgs, topic_name: &str) -> anyhow::Result<()> {
    let topic = Topic::bytes(topic_name);
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let run = format!(
        "bench-{}-",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let consumed = Arc::new(Consumed {
        run: run.clone(),
        started,
        arrivals: Arrivals::new(args.messages),
        counters: counters.clone(),
        latencies: Mutex::new(Vec::with_capacity(
            usize::try_from(args.messages).unwrap_or(0).min(10_000_000),
        )),
        all_arrived: CancellationToken::new(),
        last_at: Mutex::new(None),
        left_over: AtomicU64::new(0),
    });
    let mut subscriber = broker.subscriber(&topic, args.group.as_str());
    if let Some(concurrency) = args.concurrency {
        subscriber = subscriber.concurrency(concurrency);
    }
    let recorder = consumed.clone();
    let running = subscriber
        .at_least_once(move |message: Received<Bytes>| {
            recorder.record(&message);
            async { HandlerResult::Ok(()) }
        })
        .await
        .context("cannot subscribe")?;

    eprintln!(
        "bench: {} messages of {} bytes to {topic_name} on {} ({}), {} publisher(s) with {} in \
         flight each, group {}",
        args.messages,
        args.size,
        broker.kind(),
        broker.endpoint(),
        args.publishers,
        args.in_flight,
        args.group
    );
    let progress = Progress::start(counters.clone(), args.messages);
    let publish_started = Instant::now();
    let publisher = broker.publisher(&topic);
    // The timeout bounds the whole run: publishing too, which a stalled broker can hold up.
    let published = tokio::time::timeout(
        args.timeout,
        publish_all(publisher, args, &run, started, counters.clone()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "timed out after {}: {} of {} messages published",
            humantime::format_duration(args.timeout),
            counters.published.load(Ordering::Acquire),
            args.messages
        ))
    });
    let publish_elapsed = publish_started.elapsed();
    let arrived = match &published {
        Ok(()) => tokio::time::timeout(
            args.timeout.saturating_sub(publish_elapsed),
            consumed.all_arrived.cancelled(),
        )
        .await
        .is_ok(),
        Err(_) => false,
    };
    progress.finish().await;
    let closed = running.close().await;
    published?;
    closed.context("the bench subscription failed")?;

    let total_consumed = counters.consumed.load(Ordering::Acquire);
    // Written with a clear error when stdout is gone (`| true`), where `println!` panics.
    output::print_line(throughput_line(
        "published:",
        args.messages,
        args.size,
        publish_elapsed,
    ))?;
    let last_at = *consumed.last_at.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(last_at) = last_at {
        output::print_line(throughput_line(
            "consumed:",
            args.messages,
            args.size,
            last_at.duration_since(publish_started),
        ))?;
    }
    let mut latencies =
        std::mem::take(&mut *consumed.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(latencies) = Latencies::of(&mut latencies) {
        output::print_line(latency_line(&latencies))?;
    }
    let distinct = consumed.arrivals.distinct();
    if total_consumed > distinct {
        output::print_line(format!(
            "redelivered: {} (at least once)",
            total_consumed - distinct
        ))?;
    }
    let left_over = consumed.left_over.load(Ordering::Acquire);
    if left_over > 0 {
        output::print_line(format!(
            "left over from earlier runs: {left_over} (consumed, not counted)"
        ))?;
    }
    if !arrived {
        anyhow::bail!(
            "timed out after {}: {distinct} of {} messages arrived",
            humantime::format_duration(args.timeout),
            args.messages
        );
    }
    Ok(())
}

/// Runs the publishers, each sending its share with up to `in_flight` confirmations pending.
async fn publish_all(
    publisher: Publisher<Bytes>,
    args: &BenchArgs,
    run: &str,
    started: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let template = payload_template(args.size);
    let publishers = u64::from(args.publishers);
    let mut tasks: JoinSet<broker::Result<()>> = JoinSet::new();
    let mut first = 0;
    for index in 0..publishers {
        let share = args.messages / publishers + u64::from(index < args.messages % publishers);
        let sequences = first..first + share;
        first += share;
        let publisher = publisher.clone();
        let template = template.clone();
        let counters = counters.clone();
        let in_flight = args.in_flight as usize;
        let run = run.to_owned();
        tasks.spawn(async move {
            let mut pending = FuturesUnordered::new();
            for sequence in sequences {
                let mut message = publisher
                    .message(&stamped(&template, started, sequence))?
                    .with_id(format!("{run}{sequence}"));
                if template.len() < 8 {
                    message = message.with_header(
                        SENT_HEADER,
                        nanos_since(started, Instant::now()).to_string(),
                    );
                }
                if template.len() < 16 {
                    message = message.with_header(SEQUENCE_HEADER, sequence.to_string());
                }
                let confirmation = publisher.send_message(message).await?;
                pending.push(confirmation);
                while pending.len() >= in_flight {
                    if let Some(receipt) = pending.next().await {
                        receipt?;
                        counters.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while let Some(receipt) = pending.next().await {
                receipt?;
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("a publisher task failed")?
            .context("publishing failed")?;
    }
    Ok(())
}

/// `size` bytes of a fixed pseudo-random pattern (so compression does not flatter the figures).
fn payload_template(size: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The template with the current time in its first 8 bytes and `sequence` in the next 8
/// (those that it has).
fn stamped(template: &Bytes, started: Instant, sequence: u64) -> Bytes {
    if template.len() < 8 {
        return template.clone();
    }
    let mut payload = BytesMut::from(&template[..]);
    payload[..8].copy_from_slice(&nanos_since(started, Instant::now()).to_le_bytes());
    if let Some(room) = payload.get_mut(8..16) {
        room.copy_from_slice(&sequence.to_le_bytes());
    }
    payload.freeze()
}

/// The sequence number a message carries.
fn sequence(message: &Received<Bytes>) -> Option<u64> {
    match message.value.get(8..16) {
        Some(bytes) => bytes.try_into().ok().map(u64::from_le_bytes),
        None => message.metadata.headers.get(SEQUENCE_HEADER)?.parse().ok(),
    }
}

/// The send time a message carries.
fn sent_ns(message: &Received<Bytes>) -> Option<u64> {
    match message.value.get(..8) {
        Some(bytes) => bytes.try_into().ok().map(u64::from_le_bytes),
        None => message.metadata.headers.get(SENT_HEADER)?.parse().ok(),
    }
}

fn nanos_since(started: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(started).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::Metadata;
    use std::time::Duration;

    #[test]
    fn the_send_time_travels_in_the_payload_or_a_header() {
        let started = Instant::now() - Duration::from_secs(1);
        let long = stamped(&payload_template(100), started, 7);
        assert_eq!(long.len(), 100);
        let received = Received {
            value: long,
            metadata: Metadata::new("t".into()),
        };
        let sent = sent_ns(&received).unwrap();
        assert!(sent >= 1_000_000_000, "{sent}");
        assert_eq!(sequence(&received), Some(7));

        let mut metadata = Metadata::new("t".into());
        metadata.headers.insert(SENT_HEADER, "42");
        metadata.headers.insert(SEQUENCE_HEADER, "9");
        let short = Received {
            value: stamped(&payload_template(3), started, 9),
            metadata,
        };
        assert_eq!(short.value.len(), 3);
        assert_eq!(sent_ns(&short), Some(42));
        assert_eq!(sequence(&short), Some(9));
    }

    /// A message an earlier run left on the topic does not count towards this run's.
    #[test]
    fn messages_of_other_runs_are_not_counted() {
        let consumed = Consumed {
            run: "bench-this-".into(),
            started: Instant::now(),
            arrivals: Arrivals::new(1),
            counters: Arc::new(Counters::default()),
            latencies: Mutex::new(Vec::new()),
            all_arrived: CancellationToken::new(),
            last_at: Mutex::new(None),
            left_over: AtomicU64::new(0),
        };
        let message = |id: &str| {
            let mut metadata = Metadata::new("t".into());
            metadata.message_id = Some(id.into());
            Received {
                value: stamped(&payload_template(16), consumed.started, 0),
                metadata,
            }
        };
        consumed.record(&message("bench-earlier-0"));
        assert!(!consumed.all_arrived.is_cancelled());
        assert_eq!(consumed.left_over.load(Ordering::Acquire), 1);
        consumed.record(&message("bench-this-0"));
        assert!(consumed.all_arrived.is_cancelled());
    }
}
