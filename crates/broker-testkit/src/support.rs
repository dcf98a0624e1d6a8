//! Helpers for writing cases: unique names, collecting what handlers receive, waiting with a
//! deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use broker_api::{
    Backend, Broker, ErrorKind, HandlerResult, Message, Received, RetryPolicy, TopicSpec,
};
use tokio::sync::Notify;

/// The longest a single case may run before it is failed as hung.
pub const CASE_GUARD: Duration = Duration::from_secs(180);

/// The next item of a subscription stream (deliveries, received or incoming messages),
/// failing the test when none comes within `patience`, the stream ends or yields an error.
pub async fn next_within<S, T>(stream: &mut S, patience: Duration) -> T
where
    S: futures::Stream<Item = broker_api::Result<T>> + Unpin,
{
    use futures::StreamExt;
    tokio::time::timeout(patience, stream.next())
        .await
        .expect("a delivery in time")
        .expect("the stream is open")
        .expect("a delivery, not an error")
}

/// Runs one case with logging set up (`RUST_LOG`) and a guard against hangs.
pub async fn run_case(name: &str, case: impl Future<Output = ()>) {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
    if tokio::time::timeout(CASE_GUARD, case).await.is_err() {
        panic!("case {name} did not finish within {CASE_GUARD:?}: a hang or a deadlock");
    }
}

/// Says that a case was skipped and why (a capability the backend does not promise), on
/// stderr itself: the test harness would keep `eprintln!`'s text of a passing test to itself.
pub fn skip(case: &str, reason: &str) {
    say(&format!("skipped: {case}: {reason}"));
}

/// Writes a line to stderr past the test harness's capture.
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A name no other test uses: `<prefix>-<random>-<counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{:08x}-{}",
        rand::random::<u32>(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a new topic with these groups (so that every broker keeps messages for them) and
/// returns its name.
pub async fn fresh_topic(broker: &Broker, prefix: &str, groups: &[&str]) -> String {
    fresh_topic_with(broker, prefix, groups, None).await
}

/// Like [`fresh_topic`], with a number of partitions where the broker has them.
pub async fn fresh_topic_with(
    broker: &Broker,
    prefix: &str,
    groups: &[&str],
    partitions: Option<u32>,
) -> String {
    let name = unique(prefix);
    let mut spec = TopicSpec::new(&name);
    if let Some(partitions) = partitions.filter(|_| broker.capabilities().partitions) {
        spec = spec.partitions(partitions);
    }
    for group in groups {
        spec = spec.group(*group);
    }
    broker
        .ensure_topic(&spec)
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {name}: {e}"));
    name
}

/// A retry policy fast enough for tests: 10 ms to 100 ms, no jitter.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        jitter: 0.0,
        max_attempts,
        dead_letter: true,
    }
}

/// Collects what a handler or a stream receives, and waits for it.
pub struct Inbox<T> {
    received: Arc<Mutex<Vec<Received<T>>>>,
    arrived: Arc<Notify>,
}

impl<T> Clone for Inbox<T> {
    fn clone(&self) -> Self {
        Inbox {
            received: self.received.clone(),
            arrived: self.arrived.clone(),
        }
    }
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            received: Arc::default(),
            arrived: Arc::default(),
        }
    }
}

impl<T: Clone + Send + 'static> Inbox<T> {
    /// An empty inbox.
    pub fn new() -> Self {
        Inbox::default()
    }

    /// Adds a message.
    pub fn push(&self, message: Received<T>) {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
        self.arrived.notify_waiters();
    }

    /// A handler that puts every message in this inbox and succeeds.
    pub fn handler(
        &self,
    ) -> impl Fn(Received<T>) -> futures::future::Ready<HandlerResult> + Send + Sync + 'static {
        let inbox = self.clone();
        move |message| {
            inbox.push(message);
            futures::future::ready(Ok(()))
        }
    }

    /// How many messages arrived so far.
    pub fn len(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether nothing arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of what arrived so far.
    pub fn snapshot(&self) -> Vec<Received<T>> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `predicate` holds over what arrived; panics after `patience`, showing `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        patience: Duration,
        predicate: impl Fn(&[Received<T>]) -> bool,
    ) -> Vec<Received<T>> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
                if predicate(&received) {
                    return received.clone();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "waited {patience:?} for {what}; got {} messages",
                    self.len()
                );
            }
        }
    }

    /// Waits until at least `count` messages arrived.
    pub async fn wait_for(&self, count: usize, patience: Duration) -> Vec<Received<T>> {
        self.wait_until(&format!("{count} messages"), patience, |r| r.len() >= count)
            .await
    }

    /// Checks that nothing more than `count` messages arrives during `quiet`.
    pub async fn expect_no_more_than(&self, count: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let len = self.len();
        assert!(
            len <= count,
            "expected no more than {count} messages, got {len}: {:?}",
            self.snapshot()
                .iter()
                .map(|r| &r.metadata.message_id)
                .collect::<Vec<_>>()
        );
    }
}

/// Sends `message` to `topic` through `backend` and waits for the broker's confirmation.
pub async fn send_confirmed(
    backend: &dyn Backend,
    topic: &str,
    message: Message,
) -> broker_api::Result<()> {
    backend.send(topic, message).await?.await.map(drop)
}

/// Checks that `err`, from connecting with a wrong password, says so clearly: it is of one of
/// `kinds`, names `endpoint` and does not echo `password`.
pub fn assert_login_refused(
    err: &broker_api::Error,
    kinds: &[ErrorKind],
    endpoint: &str,
    password: &str,
) {
    let text = err.to_string();
    assert!(
        kinds.contains(&err.kind()),
        "{text}: a {:?} error, not one of {kinds:?}",
        err.kind()
    );
    assert!(text.contains(endpoint), "{text} does not name {endpoint}");
    assert!(!text.contains(password), "password leaked: {text}");
}

/// Log lines at `WARN` and above written while [`CapturedLogs::subscriber`] is the thread's
/// default (`tracing::subscriber::set_default`; on a current-thread runtime, everything the test
/// runs logs there).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// A subscriber that writes here.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
