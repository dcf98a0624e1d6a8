//! How the `at_least_once` runner gives deliveries back. Closing a concurrent subscription: the
//! stream hears that intake stopped before the runner drops the deliveries it will not handle
//! (those waiting behind their key), so that a backend which rewinds on a dropped delivery
//! (Kafka) does not discard the acknowledgements of the handlers still finishing. A failed
//! delivery that is no longer live is dropped, not retried.

mod close;
mod no_longer_live;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::{
    Backend, BoxDeliveryStream, Broker, Capabilities, Confirmation, Delivery, DeliveryStream,
    Error, ErrorKind, HandlerError, HandlerResult, Key, Message, MessageId, Metadata, Received,
    Result, RetryPolicy, Settle, SettleOnce, SubscribeRequest, Topic, TopicSpec,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::Notify;

/// What the stream and its deliveries saw, in order.
type Events = Arc<Mutex<Vec<String>>>;

fn record(events: &Events, event: String) {
    if let Ok(mut events) = events.lock() {
        events.push(event);
    }
}

/// A backend whose one subscription hands out the scripted messages (value and key), in
/// order, then nothing.
#[derive(Debug)]
struct ScriptedBackend {
    script: Vec<(&'static str, Option<&'static str>)>,
    events: Events,
    intake_stopped: Arc<Notify>,
    /// Whether its deliveries are live (`Delivery::is_live`).
    live: Arc<AtomicBool>,
    /// Deliveries no longer live, by value.
    revoked: Revoked,
}

type Revoked = Arc<Mutex<Vec<String>>>;

impl ScriptedBackend {
    fn new(script: &[(&'static str, Option<&'static str>)]) -> Self {
        ScriptedBackend {
            script: script.to_vec(),
            events: Events::default(),
            intake_stopped: Arc::new(Notify::new()),
            live: Arc::new(AtomicBool::new(true)),
            revoked: Revoked::default(),
        }
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn endpoint(&self) -> String {
        "test".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn send<'a>(&'a self, _topic: &'a str, _message: Message) -> Completion<'a, Confirmation> {
        completion::ready(Err(Error::unsupported("this backend only delivers")))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        Ok(Box::new(Scripted {
            topic: request.topic.into(),
            left: self.script.iter().rev().copied().collect(),
            events: self.events.clone(),
            intake_stopped: self.intake_stopped.clone(),
            live: self.live.clone(),
            revoked: self.revoked.clone(),
        }))
    }

    async fn ensure_topic(&self, _spec: &TopicSpec) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

struct Scripted {
    topic: Arc<str>,
    left: Vec<(&'static str, Option<&'static str>)>,
    events: Events,
    intake_stopped: Arc<Notify>,
    live: Arc<AtomicBool>,
    revoked: Revoked,
}

impl Stream for Scripted {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some((value, key)) = self.left.pop() else {
            return Poll::Pending;
        };
        let mut metadata = Metadata::new(self.topic.clone());
        metadata.key = key.map(Key::from);
        // "m#2": the second delivery of message m.
        let id = value.split('#').next().unwrap_or(value);
        metadata.message_id = Some(MessageId::from(id));
        let acker = SettleOnce::boxed(Recorded {
            value,
            events: self.events.clone(),
            live: self.live.clone(),
            revoked: self.revoked.clone(),
        });
        let payload = Bytes::from_static(value.as_bytes());
        Poll::Ready(Some(Ok(Delivery::new(payload, metadata, acker))))
    }
}

impl DeliveryStream for Scripted {
    fn stop_intake(&mut self) {
        record(&self.events, "intake stopped".to_owned());
        self.intake_stopped.notify_one();
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        record(&self.events, "closed".to_owned());
        async { Ok(()) }.boxed()
    }
}

struct Recorded {
    value: &'static str,
    events: Events,
    live: Arc<AtomicBool>,
    revoked: Revoked,
}

impl Settle for Recorded {
    fn settle(&mut self, handled: bool) -> broker_api::Result<()> {
        let outcome = if handled { "acked" } else { "rejected" };
        record(&self.events, format!("{} {outcome}", self.value));
        Ok(())
    }

    fn is_live(&self) -> bool {
        let revoked = self
            .revoked
            .lock()
            .is_ok_and(|revoked| revoked.iter().any(|value| value == self.value));
        self.live.load(Ordering::SeqCst) && !revoked
    }
}

fn seen(events: &Events) -> Vec<String> {
    events
        .lock()
        .map(|events| events.clone())
        .unwrap_or_default()
}
