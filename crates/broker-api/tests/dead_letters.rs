//! Publishing dead letters: what the runner does when the dead-letter topic or the broker
//! fails for a moment.

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

/// A backend whose first topic creation fails with a temporary error; it records what it
/// created and what was published where.
#[derive(Debug, Default)]
struct CreationFailsOnce {
    creations: AtomicU32,
    created: Mutex<Vec<String>>,
    published: Mutex<Vec<String>>,
}

#[async_trait]
impl Backend for CreationFailsOnce {
    fn kind(&self) -> &'static str {
        "creation-fails-once"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        if let Ok(mut published) = self.published.lock() {
            published.push(topic.to_owned());
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

#[tokio::test]
async fn a_temporary_failure_to_create_the_dead_letter_topic_is_retried() {
    let backend = Arc::new(CreationFailsOnce::default());
    let retry = RetryPolicy {
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        ..RetryPolicy::default()
    };
    let dead_letters = DeadLetters::new(backend.clone(), "orders", "billing", retry);
    dead_letters
        .publish(
            Bytes::from_static(b"poison"),
            &Metadata::new("orders".into()),
            "cannot be handled",
            3,
        )
        .await
        .expect("published after the creation was retried");
    assert_eq!(backend.creations.load(Ordering::SeqCst), 2);
    assert_eq!(*backend.created.lock().unwrap(), ["orders.billing.dlq"]);
    assert_eq!(*backend.published.lock().unwrap(), ["orders.billing.dlq"]);
}

/// A backend that refuses messages with more than six headers, as Pub/Sub refuses more than
/// 100 attributes; it records the headers of what it took.
#[derive(Debug, Default)]
struct FewHeaders {
    taken: Mutex<Vec<Vec<(String, String)>>>,
}

#[async_trait]
impl Backend for FewHeaders {
    fn kind(&self) -> &'static str {
        "few-headers"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        if message.headers.len() > 6 {
            let refused = Error::new(ErrorKind::Rejected, "more than 6 headers");
            return completion::ready(Err(refused));
        }
        let headers = message
            .headers
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        if let Ok(mut taken) = self.taken.lock() {
            taken.push(headers);
        }
        completion::ready(Ok(Confirmation::ready(Ok(Receipt {
            message_id: message.id,
            position: Position::Unknown,
        }))))
    }

    async fn subscribe(&self, _request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Err(Error::unsupported("this backend only publishes"))
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_dead_letter_refused_for_its_headers_goes_without_them() {
    let backend = Arc::new(FewHeaders::default());
    let dead_letters =
        DeadLetters::new(backend.clone(), "orders", "billing", RetryPolicy::default());
    let mut metadata = Metadata::new("orders".into());
    for i in 0..5 {
        metadata.headers.insert(format!("h{i}"), "v");
    }
    dead_letters
        .publish(
            Bytes::from_static(b"poison"),
            &metadata,
            "cannot be handled",
            3,
        )
        .await
        .expect("published without the message's own headers");
    let taken = backend.taken.lock().unwrap().clone();
    assert_eq!(taken.len(), 1);
    let names: Vec<&str> = taken[0].iter().map(|(name, _)| name.as_str()).collect();
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
    dead_letters
        .publish(
            Bytes::from_static(b"poison"),
            &metadata,
            "cannot be handled",
            3,
        )
        .await
        .expect("published");
    let taken = backend.taken.lock().unwrap();
    assert!(taken[1].contains(&("trace".to_owned(), "abc".to_owned())));
}
