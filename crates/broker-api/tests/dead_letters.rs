//! Publishing dead letters: what the runner does when the dead-letter topic or the broker
//! fails for a moment, or the broker refuses what the message's own headers add.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::runner::DeadLetters;
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, Error, ErrorKind, Message, Metadata,
    Position, Receipt, Result, RetryPolicy, SubscribeRequest, TopicSpec,
};
use bytes::Bytes;

/// A backend for dead letters: its first topic creation fails with a temporary error, it
/// refuses messages with more than `max_headers` headers (as Pub/Sub refuses more than 100
/// attributes), refuses its first `busy_sends` messages for a moment (as a quota or a paused
/// ordering key does), and records what it created and what it took where, with the headers.
#[derive(Debug)]
struct Recording {
    max_headers: usize,
    busy_sends: AtomicU32,
    creations: AtomicU32,
    created: Mutex<Vec<String>>,
    taken: Mutex<Vec<Taken>>,
}

/// A message the backend took: its topic and its headers.
type Taken = (String, Vec<(String, String)>);

impl Recording {
    fn new(max_headers: usize) -> Arc<Self> {
        Recording::busy(max_headers, 0)
    }

    fn busy(max_headers: usize, busy_sends: u32) -> Arc<Self> {
        Arc::new(Recording {
            max_headers,
            busy_sends: AtomicU32::new(busy_sends),
            creations: AtomicU32::new(0),
            created: Mutex::default(),
            taken: Mutex::default(),
        })
    }

    fn taken(&self) -> Vec<Taken> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Backend for Recording {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        if message.headers.len() > self.max_headers {
            let refused = Error::new(ErrorKind::Rejected, "too many headers");
            return completion::ready(Err(refused));
        }
        let busy = self
            .busy_sends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if busy.is_ok() {
            let refused = Error::new(ErrorKind::Rejected, "over quota").temporary(true);
            return completion::ready(Err(refused));
        }
        let headers = message
            .headers
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        if let Ok(mut taken) = self.taken.lock() {
            taken.push((topic.to_owned(), headers));
        }
        completion::ready(Ok(Confirmation::ready(Ok(Receipt {
            message_id: message.id,
            position: Position::Unknown,
        }))))
    }

    async fn subscribe(&self, _request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Err(Error::unsupported("this backend only publishes"))
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        if self.creations.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(
                Error::new(ErrorKind::Connection, "the broker is restarting").temporary(true),
            );
        }
        if let Ok(mut created) = self.created.lock() {
            created.push(spec.name.clone());
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Dead-letters a `poison` payload with `metadata` after three attempts.
async fn publish_poison(dead_letters: &DeadLetters, metadata: &Metadata) -> Result<()> {
    dead_letters
        .publish(
            Bytes::from_static(b"poison"),
            metadata,
            "cannot be handled",
            3,
        )
        .await
}

/// Retries wait a millisecond.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn a_temporary_failure_to_create_the_dead_letter_topic_is_retried() {
    let backend = Recording::new(usize::MAX);
    let dead_letters = DeadLetters::new(backend.clone(), "orders", "billing", quick_retry());
    publish_poison(&dead_letters, &Metadata::new("orders".into()))
        .await
        .expect("published after the creation was retried");
    assert_eq!(backend.creations.load(Ordering::SeqCst), 2);
    assert_eq!(*backend.created.lock().unwrap(), ["orders.billing.dlq"]);
    let topics: Vec<String> = backend
        .taken()
        .into_iter()
        .map(|(topic, _)| topic)
        .collect();
    assert_eq!(topics, ["orders.billing.dlq"]);
}

#[tokio::test]
async fn a_dead_letter_refused_for_a_moment_is_retried_with_its_headers() {
    let backend = Recording::busy(usize::MAX, 2);
    let dead_letters = DeadLetters::new(backend.clone(), "orders", "billing", quick_retry());
    let mut metadata = Metadata::new("orders".into());
    metadata.headers.insert("trace", "abc");
    publish_poison(&dead_letters, &metadata)
        .await
        .expect("published once the refusals passed");
    let taken = backend.taken();
    assert_eq!(taken.len(), 1);
    assert!(
        taken[0].1.contains(&("trace".to_owned(), "abc".to_owned())),
        "{taken:?}"
    );
}

#[tokio::test]
async fn a_dead_letter_refused_for_its_headers_goes_without_them() {
    let backend = Recording::new(6);
    let dead_letters = DeadLetters::new(backend.clone(), "orders", "billing", quick_retry());
    let mut metadata = Metadata::new("orders".into());
    for i in 0..5 {
        metadata.headers.insert(format!("h{i}"), "v");
    }
    publish_poison(&dead_letters, &metadata)
        .await
        .expect("published without the message's own headers");
    let taken = backend.taken();
    assert_eq!(taken.len(), 1);
    let names: Vec<&str> = taken[0].1.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dead-letter-reason",
            "dead-letter-topic",
            "dead-letter-group",
            "dead-letter-attempts"
        ]
    );
    // Within the limit, the message's own headers go with it.
    let mut metadata = Metadata::new("orders".into());
    metadata.headers.insert("trace", "abc");
    publish_poison(&dead_letters, &metadata)
        .await
        .expect("published");
    assert!(backend.taken()[1]
        .1
        .contains(&("trace".to_owned(), "abc".to_owned())));
}
