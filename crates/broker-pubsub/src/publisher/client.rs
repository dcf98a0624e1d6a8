//! [`TopicClient`]: the client publisher of one topic, replaced once it served many ordering
//! keys.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};

use google_cloud_pubsub::error::PublishError;

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message as PubsubMessage;
use google_cloud_pubsub::publisher::PublishFuture;
use rustc_hash::FxHashSet;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::{read, write};

/// Most distinct ordering keys a client publisher serves before it is replaced.
///
/// The client keeps a task, with its queue and batch, for every ordering key it ever published
/// with, for as long as it lives (google-cloud-pubsub 1.7): a service keying its messages by
/// order or user id would grow without bound. A replaced client is flushed, then dropped with
/// its tasks.
pub(super) const MAX_KEYS_PER_CLIENT: usize = 1_000;

/// The client publisher messages of one topic go to, replaced by a new one once it served
/// [`MAX_KEYS_PER_CLIENT`] ordering keys and is asked for another (see [`TopicClient::publish`]).
pub(super) struct TopicClient {
    build: Box<dyn Fn() -> Publisher + Send + Sync>,
    current: Arc<RwLock<Current>>,
}

struct Current {
    client: Publisher,
    /// The ordering keys `client` served.
    keys: FxHashSet<Box<str>>,
    /// Set while the client `client` replaced finishes what it holds: messages with a key wait
    /// here, in call order, so that none overtakes an earlier one with its key.
    held: Option<HeldBack>,
}

/// Messages with a key waiting for the replaced client to finish, in call order.
#[derive(Default)]
struct HeldBack(Vec<Held>);

/// A message with a key waiting for the replaced client to finish.
struct Held {
    message: PubsubMessage,
    published: oneshot::Sender<PublishFuture>,
}

impl HeldBack {
    /// Holds `message` back; returns where its answer will come.
    fn push(&mut self, message: PubsubMessage) -> oneshot::Receiver<PublishFuture> {
        let (published, answer) = oneshot::channel();
        self.0.push(Held { message, published });
        answer
    }
}

/// A message handed to a client: its answer, or, held back while a replaced client finishes,
/// the answer to come. Awaited, it yields the client's answer.
pub(super) enum Published {
    Now(PublishFuture),
    Held(oneshot::Receiver<PublishFuture>),
}

impl Future for Published {
    type Output = Result<String, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut *self {
                Published::Now(answer) => return Pin::new(answer).poll(cx),
                Published::Held(handed) => match ready!(Pin::new(handed).poll(cx)) {
                    Ok(answer) => *self = Published::Now(answer),
                    // Not expected: every held message is handed over, also when the task
                    // flushing the replaced client is dropped unfinished. The client answers
                    // the same when its own task is gone.
                    Err(_) => return Poll::Ready(Err(PublishError::Shutdown)),
                },
            }
        }
    }
}

impl TopicClient {
    /// A topic's client, made by `build` (again when it is replaced).
    pub(super) fn new(build: impl Fn() -> Publisher + Send + Sync + 'static) -> Self {
        let client = build();
        TopicClient {
            build: Box::new(build),
            current: Arc::new(RwLock::new(Current {
                client,
                keys: FxHashSet::default(),
                held: None,
            })),
        }
    }

    /// The client now: for a flush, or to publish a failed message again.
    pub(super) fn current(&self) -> Publisher {
        read(&self.current).client.clone()
    }

    /// Hands `message` to the current client, in call order.
    ///
    /// An ordering key the client did not serve yet, past [`MAX_KEYS_PER_CLIENT`], replaces the
    /// client: the replaced one is flushed on a task of `finishing` (closing waits for them)
    /// and dropped. Until it finished, messages with a key are held back and then handed to
    /// the new client in call order (also when the task ends early: its runtime shut down),
    /// which the task then flushes.
    /// Without a runtime to flush on, the client serves on.
    pub(super) fn publish(&self, message: PubsubMessage, finishing: &TaskTracker) -> Published {
        if message.ordering_key.is_empty() {
            return Published::Now(read(&self.current).client.publish(message));
        }
        {
            // Published under the lock (a send to the client's queue): a replacement cannot
            // come between choosing the client and handing it the message.
            let current = read(&self.current);
            if current.held.is_none() && current.keys.contains(message.ordering_key.as_str()) {
                return Published::Now(current.client.publish(message));
            }
        }
        let mut current = write(&self.current);
        let key = message.ordering_key.as_str();
        let replacing = current.held.is_none()
            && current.keys.len() >= MAX_KEYS_PER_CLIENT
            && !current.keys.contains(key);
        // Without a runtime to flush the replaced client on, the client serves on.
        let runtime = if replacing {
            tokio::runtime::Handle::try_current().ok()
        } else {
            None
        };
        let Some(runtime) = runtime else {
            if let Some(held) = &mut current.held {
                return Published::Held(held.push(message));
            }
            return Published::Now(current.serve(message));
        };
        let replaced = std::mem::replace(&mut current.client, (self.build)());
        current.keys.clear();
        let mut held = HeldBack::default();
        let answer = held.push(message);
        current.held = Some(held);
        // Spawned without the lock: a runtime shutting down drops the task at once, and its
        // `Release` then takes the lock.
        drop(current);
        let release = Release(self.current.clone());
        finishing.spawn_on(
            async move {
                replaced.flush().await;
                // Flushed here, so that whoever waits for this task (closing, a deleted
                // topic's flush) has the held messages answered too.
                release.hand_over().flush().await;
            },
            &runtime,
        );
        Published::Held(answer)
    }
}

/// Hands the held messages to the new client: after the replaced client's flush, or when the
/// flushing task is dropped unfinished.
struct Release(Arc<RwLock<Current>>);

impl Release {
    /// Hands the held messages (if still held) to the client in place; returns that client.
    fn hand_over(&self) -> Publisher {
        let mut current = write(&self.0);
        let current = &mut *current;
        for Held { message, published } in current.held.take().unwrap_or_default().0 {
            // A dropped receiver: its confirmation was dropped, as it may be.
            let _ = published.send(current.serve(message));
        }
        current.client.clone()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.hand_over();
    }
}

impl Current {
    /// Publishes `message` on the client, counting its ordering key among those served.
    fn serve(&mut self, message: PubsubMessage) -> PublishFuture {
        let key = message.ordering_key.as_str();
        if !key.is_empty() && !self.keys.contains(key) {
            self.keys.insert(key.into());
        }
        self.client.publish(message)
    }
}

impl std::fmt::Debug for TopicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = read(&self.current);
        f.debug_struct("TopicClient")
            .field("keys", &current.keys.len())
            .field("held", &current.held.as_ref().map(|held| held.0.len()))
            .finish_non_exhaustive()
    }
}
