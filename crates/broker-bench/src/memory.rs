//! In-memory: the memory backend against tokio's channels, 100-byte payloads.
//!
//! Every message of a round carries the same static payload on both sides, so that cloning
//! and dropping it touches no counter: with one shared, reference-counted `Bytes`, every clone
//! and drop on the publishing and the reading threads hit the same counter, a contention that
//! a service, whose messages each have a payload of their own, does not have. It slowed both
//! sides, each by its own number of clones (see the crate's README).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use broker_api::{Broker, HandlerResult, Message, Received, Topic, TopicSpec};
use broker_memory::MemoryBackend;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{broadcast, mpsc, Notify};

use crate::report::{Sample, Scenario};

/// The memory scenarios with `messages` per round (default one million).
pub fn scenarios(messages: Option<usize>) -> Vec<Box<dyn Scenario>> {
    let messages = messages.unwrap_or(1_000_000);
    vec![
        Box::new(OneToOne {
            messages,
            size: 100,
            at_least_once: true,
            keys: 0,
        }),
        Box::new(OneToOne {
            messages,
            size: 100,
            at_least_once: true,
            keys: KEYS.len(),
        }),
        Box::new(OneToOne {
            messages,
            size: 100,
            at_least_once: false,
            keys: 0,
        }),
        Box::new(FanOut {
            messages: messages / 4,
            size: 100,
            readers: 4,
        }),
    ]
}

/// A payload of `size` bytes (at most 1 KiB) that clones without a reference count.
fn payload(size: usize) -> Bytes {
    static PAYLOAD: [u8; 1024] = [1; 1024];
    Bytes::from_static(&PAYLOAD[..size.min(PAYLOAD.len())])
}

/// The keys of the keyed scenario, taken in turn.
const KEYS: [&str; 16] = [
    "user-0", "user-1", "user-2", "user-3", "user-4", "user-5", "user-6", "user-7", "user-8",
    "user-9", "user-10", "user-11", "user-12", "user-13", "user-14", "user-15",
];

/// One publisher, one subscriber.
struct OneToOne {
    messages: usize,
    size: usize,
    at_least_once: bool,
    /// How many keys the messages take in turn; none when 0.
    keys: usize,
}

impl OneToOne {
    /// The key of message `index`, if the messages have keys.
    fn key(&self, index: usize) -> Option<&'static str> {
        (self.keys > 0).then(|| KEYS[index % self.keys])
    }
}

/// `n` messages made by `message` through tokio's unbounded channel, read by another task.
async fn raw_channel<M: Send + 'static>(
    n: usize,
    message: impl Fn(usize) -> M,
    payload_len: impl Fn(&M) -> usize + Send + 'static,
) -> anyhow::Result<Sample> {
    let (tx, mut rx) = mpsc::unbounded_channel::<M>();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..n {
            match rx.recv().await {
                Some(message) => bytes += payload_len(&message),
                None => break,
            }
        }
        bytes
    });
    for index in 0..n {
        tx.send(message(index))
            .map_err(|_| anyhow::anyhow!("the reading task stopped"))?;
    }
    let bytes = consumer.await?;
    Ok(Sample::new(n, bytes, start.elapsed()))
}

impl Scenario for OneToOne {
    fn name(&self) -> String {
        let mode = if self.at_least_once {
            "at_least_once"
        } else {
            "at_most_once"
        };
        match self.keys {
            0 => format!("memory 1->1 {} B, {mode}", self.size),
            keys => format!("memory 1->1 {} B, {keys} keys, {mode}", self.size),
        }
    }

    fn raw_side(&self) -> &'static str {
        if self.keys > 0 {
            "tokio mpsc (unbounded) of key and payload"
        } else {
            "tokio mpsc (unbounded)"
        }
    }

    fn goal(&self) -> f64 {
        0.5
    }

    fn has_bare(&self) -> bool {
        false
    }

    fn raw(&self, _bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        let payload = payload(self.size);
        if self.keys > 0 {
            let keyed = move |index| (self.key(index), payload.clone());
            raw_channel(self.messages, keyed, |(_, payload)| payload.len()).boxed()
        } else {
            raw_channel(self.messages, move |_| payload.clone(), Bytes::len).boxed()
        }
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let payload = payload(self.size);
            let broker = Broker::new(MemoryBackend::new());
            let topic = Topic::bytes("bench");
            broker
                .ensure_topic(&TopicSpec::new("bench").group("g"))
                .await?;
            let n = self.messages;
            let subscriber = broker.subscriber(&topic, "g").max_in_flight(1024);
            let publisher = broker.publisher(&topic);
            let sample = if self.at_least_once {
                let counted = Counter::new(n);
                let running = subscriber.at_least_once(counted.handler()).await?;
                let start = Instant::now();
                for index in 0..n {
                    let mut message = Message::new(payload.clone());
                    message.key = self.key(index).map(Into::into);
                    publisher.publish_message(message).await?;
                }
                counted.wait().await;
                let elapsed = start.elapsed();
                running.close().await?;
                Sample {
                    messages: n,
                    bytes: counted.bytes(),
                    elapsed,
                    latency: None,
                    cpu: None,
                }
            } else {
                let mut stream = subscriber.at_most_once().await?;
                let start = Instant::now();
                let consumer = tokio::spawn(async move {
                    let mut bytes = 0;
                    for _ in 0..n {
                        match stream.next().await {
                            Some(Ok(received)) => bytes += received.value.len(),
                            _ => break,
                        }
                    }
                    bytes
                });
                for _ in 0..n {
                    publisher
                        .publish_message(Message::new(payload.clone()))
                        .await?;
                }
                let bytes = consumer.await?;
                Sample {
                    messages: n,
                    bytes,
                    elapsed: start.elapsed(),
                    latency: None,
                    cpu: None,
                }
            };
            broker.close().await?;
            Ok(sample)
        }
        .boxed()
    }
}

/// One publisher, several groups each reading everything.
struct FanOut {
    messages: usize,
    size: usize,
    readers: usize,
}

impl Scenario for FanOut {
    fn name(&self) -> String {
        format!(
            "memory 1->{} {} B, at_least_once (msg/s published and read by all)",
            self.readers, self.size
        )
    }

    fn raw_side(&self) -> &'static str {
        "tokio broadcast"
    }

    fn goal(&self) -> f64 {
        0.5
    }

    fn has_bare(&self) -> bool {
        false
    }

    fn raw(&self, _bare: bool) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let payload = payload(self.size);
            let n = self.messages;
            let (tx, _) = broadcast::channel::<Bytes>(n.max(1));
            let readers: Vec<_> = (0..self.readers)
                .map(|_| {
                    let mut rx = tx.subscribe();
                    tokio::spawn(async move {
                        let mut bytes = 0;
                        for _ in 0..n {
                            match rx.recv().await {
                                Ok(payload) => bytes += payload.len(),
                                Err(_) => break,
                            }
                        }
                        bytes
                    })
                })
                .collect();
            let start = Instant::now();
            for _ in 0..n {
                tx.send(payload.clone())?;
            }
            let mut bytes = 0;
            for reader in readers {
                bytes += reader.await?;
            }
            Ok(Sample::new(n, bytes / self.readers, start.elapsed()))
        }
        .boxed()
    }

    fn ours(&self) -> BoxFuture<'_, anyhow::Result<Sample>> {
        async move {
            let payload = payload(self.size);
            let broker = Broker::new(MemoryBackend::new());
            let topic = Topic::bytes("fanout");
            let n = self.messages;
            let mut running = Vec::new();
            let mut counters = Vec::new();
            for reader in 0..self.readers {
                let counter = Counter::new(n);
                running.push(
                    broker
                        .subscriber(&topic, format!("g{reader}"))
                        .max_in_flight(1024)
                        .at_least_once(counter.handler())
                        .await?,
                );
                counters.push(counter);
            }
            let publisher = broker.publisher(&topic);
            let start = Instant::now();
            for _ in 0..n {
                publisher
                    .publish_message(Message::new(payload.clone()))
                    .await?;
            }
            for counter in &counters {
                counter.wait().await;
            }
            let elapsed = start.elapsed();
            for r in running {
                r.close().await?;
            }
            broker.close().await?;
            Ok(Sample {
                messages: n,
                bytes: counters[0].bytes(),
                elapsed,
                latency: None,
                cpu: None,
            })
        }
        .boxed()
    }
}

/// Counts what a handler receives and says when `target` arrived.
#[derive(Clone)]
struct Counter {
    target: usize,
    seen: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

impl Counter {
    fn new(target: usize) -> Self {
        Counter {
            target,
            seen: Arc::default(),
            bytes: Arc::default(),
            done: Arc::default(),
        }
    }

    fn handler(
        &self,
    ) -> impl Fn(Received<Bytes>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static
    {
        let counter = self.clone();
        move |message| {
            counter
                .bytes
                .fetch_add(message.value.len(), Ordering::Relaxed);
            if counter.seen.fetch_add(1, Ordering::Relaxed) + 1 == counter.target {
                counter.done.notify_one();
            }
            futures::future::ready(Ok(()))
        }
    }

    async fn wait(&self) {
        if self.seen.load(Ordering::Relaxed) < self.target {
            self.done.notified().await;
        }
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}
