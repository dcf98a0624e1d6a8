//! What every broker's scenarios share: endpoints, fresh names, time-stamped payloads, the
//! tally both sides' consumers keep, and the process's CPU time and memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::report::{Latency, Sample};

/// The broker address from `variable`, or the local default `scripts/brokers.sh` starts.
pub fn endpoint(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// A topic name no earlier round or run used: `bench-<what>-<pid>-<n>`.
pub fn fresh_name(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A payload of `size` bytes whose first 8 are zero: not time-stamped.
pub fn plain_payload(size: usize) -> Bytes {
    let mut payload = vec![b'x'; size];
    payload.iter_mut().take(8).for_each(|b| *b = 0);
    Bytes::from(payload)
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A payload of `size` (at least 8) bytes carrying the time it was made, for end-to-end
/// latency: nanoseconds since the process's epoch, plus one, little-endian, in the first 8.
pub fn stamped_payload(size: usize) -> Bytes {
    let mut payload = vec![b'x'; size.max(8)];
    let nanos = epoch().elapsed().as_nanos() as u64 + 1;
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    Bytes::from(payload)
}

/// How long ago a stamped payload was made, in nanoseconds; `None` when it is not stamped.
pub fn age(payload: &[u8]) -> Option<u64> {
    let stamp = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    (stamp != 0).then(|| (epoch().elapsed().as_nanos() as u64 + 1).saturating_sub(stamp))
}

/// What a consumer (raw or ours) saw: counts, bytes, when the backlog was drained, and the
/// latency of stamped messages. Both sides call [`Tally::record`] once per message, so they pay
/// the same for the bookkeeping.
pub struct Tally {
    drain: usize,
    total: usize,
    seen: AtomicUsize,
    bytes: AtomicUsize,
    first: OnceLock<(Instant, Duration)>,
    drained: OnceLock<(Instant, Duration)>,
    drained_signal: Notify,
    done: Notify,
    latencies: Mutex<Vec<u64>>,
}

impl Tally {
    /// A tally that reports the backlog drained after `drain` messages and done after `total`.
    pub fn new(drain: usize, total: usize) -> Self {
        Tally {
            drain,
            total,
            seen: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            first: OnceLock::new(),
            drained: OnceLock::new(),
            drained_signal: Notify::new(),
            done: Notify::new(),
            latencies: Mutex::new(Vec::with_capacity(total.saturating_sub(drain))),
        }
    }

    /// Counts one received payload.
    pub fn record(&self, payload: &[u8]) {
        self.first.get_or_init(|| (Instant::now(), cpu_time()));
        if let Some(age) = age(payload) {
            self.latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(age);
        }
        self.bytes.fetch_add(payload.len(), Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::AcqRel) + 1;
        if seen == self.drain {
            let _ = self.drained.set((Instant::now(), cpu_time()));
            self.drained_signal.notify_one();
        }
        if seen == self.total {
            self.done.notify_one();
        }
    }

    /// Messages seen so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Acquire)
    }

    /// Waits until the backlog is drained, at most `timeout`.
    pub async fn drained(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.seen() >= self.drain {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.drained_signal.notified())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} messages arrived within {timeout:?}",
                    self.seen(),
                    self.drain
                )
            })
    }

    /// Waits until every message arrived, at most `timeout`.
    pub async fn done(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.seen() >= self.total {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.done.notified())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} messages arrived within {timeout:?}",
                    self.seen(),
                    self.total
                )
            })
    }

    /// The drain rate and the latency of the stamped messages, as a sample.
    pub fn sample(&self) -> anyhow::Result<crate::report::Sample> {
        let (Some(&(first, first_cpu)), Some(&(drained, drained_cpu))) =
            (self.first.get(), self.drained.get())
        else {
            anyhow::bail!("the backlog was not drained");
        };
        let mut latencies = std::mem::take(
            &mut *self
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let bytes = self.bytes.load(Ordering::Relaxed);
        let total = self.seen().max(1);
        Ok(crate::report::Sample {
            messages: self.drain,
            bytes: bytes / total * self.drain,
            elapsed: drained.saturating_duration_since(first),
            latency: Latency::of(&mut latencies),
            cpu: Some(drained_cpu.saturating_sub(first_cpu)),
        })
    }
}

/// The wall and CPU time of a timed part of a round.
pub struct Window {
    started: Instant,
    cpu: Duration,
}

impl Window {
    /// Starts timing now.
    pub fn start() -> Self {
        Window {
            started: Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// The sample of `messages` of `size` bytes that went through since the start.
    pub fn sample(&self, messages: usize, size: usize) -> crate::report::Sample {
        crate::report::Sample {
            messages,
            bytes: messages * size,
            elapsed: self.started.elapsed(),
            latency: None,
            cpu: Some(cpu_time().saturating_sub(self.cpu)),
        }
    }
}

/// How many confirmations a publishing round keeps pending, and how it makes room.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    max: usize,
    /// How many of the oldest are awaited when `max` are pending.
    await_when_full: usize,
}

impl Pending {
    /// Up to `max` pending; when full, waits for the older half, then sends a burst, as a
    /// raw side does whose client queues messages and reports deliveries from a thread of its
    /// own (Kafka): one send per report would run in lockstep with that thread.
    pub const fn bursts(max: usize) -> Self {
        Pending {
            max,
            await_when_full: max / 2,
        }
    }

    /// Every message pending until all are sent, as a raw side does that publishes everything
    /// and then awaits every response.
    pub const fn all() -> Self {
        Pending {
            max: usize::MAX,
            await_when_full: 0,
        }
    }

    /// Up to `max` pending; when full, waits for the oldest and sends one, as a raw loop does
    /// that keeps a fixed number of publishes in flight (`FuturesUnordered`).
    pub const fn sliding(max: usize) -> Self {
        Pending {
            max,
            await_when_full: 1,
        }
    }
}

/// The `n`th partition or ordering key of the keyed scenarios.
pub fn key(n: usize) -> String {
    format!("key-{n}")
}

/// For rounds that only fill a backlog: enough to keep the broker busy, few enough that they
/// stay in the CPU's cache. (Measured rounds keep as many pending as their raw side keeps in
/// flight: see each broker's scenarios.)
pub const DEFAULT_PENDING: Pending = Pending::bursts(10_000);

/// One publishing round through the library: `count` payloads of `size` bytes to `topic`,
/// confirmations kept `pending` as it says, every one awaited.
pub async fn publish_round(
    broker: &broker_api::Broker,
    topic: &str,
    size: usize,
    count: usize,
    pending: Pending,
) -> anyhow::Result<Sample> {
    publish_keyed_round(broker, topic, size, count, 0, pending).await
}

/// [`publish_round`] with the messages keyed in turn by [`key`]`(0..keys)`; unkeyed when
/// `keys` is 0.
pub async fn publish_keyed_round(
    broker: &broker_api::Broker,
    topic: &str,
    size: usize,
    count: usize,
    keys: usize,
    pending: Pending,
) -> anyhow::Result<Sample> {
    let payload = plain_payload(size);
    let publisher = broker.publisher(&broker_api::Topic::bytes(topic));
    let window = Window::start();
    let mut unconfirmed = std::collections::VecDeque::with_capacity(pending.max.min(count));
    for sent in 0..count {
        if unconfirmed.len() == pending.max {
            for oldest in unconfirmed.drain(..pending.await_when_full) {
                let oldest: broker_api::Confirmation = oldest;
                oldest.await?;
            }
        }
        let confirmation = match keys {
            0 => publisher.send(&payload).await?,
            keys => {
                let message = publisher.message(&payload)?.with_key(key(sent % keys));
                publisher.send_message(message).await?
            }
        };
        unconfirmed.push_back(confirmation);
    }
    for confirmation in unconfirmed {
        confirmation.await?;
    }
    Ok(window.sample(count, size))
}

/// Our `at_least_once` subscription of `group` on `topic`, its handler recording every message
/// in `tally` (as the raw consumers do).
pub async fn tallied_subscription(
    broker: &broker_api::Broker,
    topic: &str,
    group: impl Into<String>,
    max_in_flight: usize,
    tally: &Arc<Tally>,
) -> anyhow::Result<broker_api::Running> {
    let tally = tally.clone();
    let running = broker
        .subscriber(&broker_api::Topic::bytes(topic), group)
        .max_in_flight(max_in_flight)
        .at_least_once(move |message: broker_api::Received<Bytes>| {
            tally.record(&message.value);
            futures::future::ready(Ok(()))
        })
        .await?;
    Ok(running)
}

/// Publishes `count` stamped payloads of `size` bytes through `send`, paced at about
/// `per_second`, so that end-to-end latency is measured on a broker that is not saturated.
pub async fn paced<F>(
    count: usize,
    size: usize,
    per_second: usize,
    mut send: F,
) -> anyhow::Result<()>
where
    F: FnMut(Bytes) -> anyhow::Result<()>,
{
    let per_tick = (per_second / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        for _ in 0..per_tick.min(count - sent) {
            send(stamped_payload(size))?;
            sent += 1;
        }
    }
    Ok(())
}

/// CPU time (user and system, every thread) this process used so far, from `/proc/self/stat`
/// (Linux; zero elsewhere), in clock ticks of 10 ms.
pub fn cpu_time() -> Duration {
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

/// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident memory (`VmHWM`) to the current value; false when the kernel
/// refuses (then the peak is only sampled).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
