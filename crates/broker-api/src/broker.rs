//! The handle services hold: one broker, whichever backend the configuration chose.

use std::fmt;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::backend::{Backend, SharedBackend, TopicSpec};
use crate::capabilities::Capabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::naming::{validate_group_name, validate_partitions, validate_topic_name};
use crate::publisher::Publisher;
use crate::runner::Registry;
use crate::settings::SubscriberSettings;
use crate::subscriber::Subscriber;
use crate::topic::Topic;

/// A connected message broker. Cloning is cheap and every clone is the same connection.
///
/// Publish with [`Broker::publisher`], subscribe with [`Broker::subscriber`], and call
/// [`Broker::close`] before exit: it stops subscriptions, lets handlers finish and flushes
/// pending publishes.
#[derive(Clone)]
pub struct Broker {
    backend: SharedBackend,
    defaults: Arc<SubscriberSettings>,
    /// The `at_least_once` subscriptions started from this handle and its clones.
    running: Registry,
    /// How the first close went, shared by the clones: later and concurrent closes wait for
    /// it and report it.
    closed: Arc<OnceCell<std::result::Result<(), CloseFailure>>>,
}

impl Broker {
    /// A broker over `backend` with default subscriber settings.
    pub fn new(backend: impl Backend) -> Self {
        Broker::from_shared(Arc::new(backend))
    }

    /// A broker over an already shared backend.
    pub fn from_shared(backend: SharedBackend) -> Self {
        Broker {
            backend,
            defaults: Arc::new(SubscriberSettings::default()),
            running: Registry::default(),
            closed: Arc::default(),
        }
    }

    /// Uses `settings` as the defaults of every subscriber made from this handle.
    pub fn with_subscriber_defaults(mut self, settings: SubscriberSettings) -> Self {
        self.defaults = Arc::new(settings);
        self
    }

    /// The backend's short name: "memory", "kafka", "rabbitmq", "pubsub".
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Where the backend connects, without credentials.
    pub fn endpoint(&self) -> String {
        self.backend.endpoint()
    }

    /// What the backend guarantees.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// The subscriber defaults of this handle.
    pub fn subscriber_defaults(&self) -> &SubscriberSettings {
        &self.defaults
    }

    /// The untyped backend, for tools that move raw messages.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// A publisher of values to `topic`.
    pub fn publisher<T: 'static>(&self, topic: &Topic<T>) -> Publisher<T> {
        Publisher::new(self.backend.clone(), topic.clone())
    }

    /// A subscriber of `group` on `topic`, with this handle's defaults; adjust it with its
    /// builder methods, then start it with `at_least_once`, `at_most_once` or `manual`.
    pub fn subscriber<T: Send + 'static>(
        &self,
        topic: &Topic<T>,
        group: impl Into<String>,
    ) -> Subscriber<T> {
        Subscriber::new(
            self.backend.clone(),
            topic.clone(),
            group.into(),
            (*self.defaults).clone(),
            self.running.clone(),
        )
    }

    /// Creates a topic and its groups when they do not exist yet.
    pub async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        validate_topic_name(&spec.name)?;
        for group in &spec.groups {
            validate_group_name(&spec.name, group)?;
        }
        if let Some(partitions) = spec.partitions {
            validate_partitions(&format!("partitions of topic {}", spec.name), partitions)?;
        }
        self.backend.ensure_topic(spec).await
    }

    /// Stops every subscription, flushes pending publishes and disconnects. Later calls on any
    /// clone fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    ///
    /// The `at_least_once` subscriptions started from this handle (or its clones) are closed
    /// first, as [`Running::close`](crate::Running::close) does: intake stops, running
    /// handlers finish within their shutdown timeout, and what they handled is acknowledged
    /// while the backend is still connected. Streams (`at_most_once`, `manual`) end.
    ///
    /// A handler of one of these subscriptions that awaits `close` waits for itself: its
    /// subscription gives it up after the shutdown timeout, and with it the close. Such a
    /// handler (a "shut down" command) spawns the close instead:
    /// `tokio::spawn(async move { broker.close().await })`.
    ///
    /// Closing again, from this handle or a clone, waits until the first close is done and
    /// reports how it went: a process that closes from a signal handler and from `main` exits
    /// only once pending publishes are flushed.
    pub async fn close(&self) -> Result<()> {
        let mut own = None;
        let outcome = self
            .closed
            .get_or_init(|| async {
                self.running.close_all().await;
                let result = self.backend.close().await;
                let outcome = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(CloseFailure {
                        kind: e.kind(),
                        temporary: e.is_temporary(),
                        text: e.to_string(),
                    }),
                };
                own = Some(result);
                outcome
            })
            .await;
        match (own, outcome) {
            (Some(result), _) => result,
            (None, Ok(())) => Ok(()),
            (None, Err(failure)) => Err(Error::new(
                failure.kind,
                format!(
                    "closing the broker failed (in another call): {}",
                    failure.text
                ),
            )
            .temporary(failure.temporary)
            .backend(self.backend.kind())
            .operation("close")),
        }
    }
}

/// How the first close failed, for the calls that waited for it (an [`Error`] is not `Clone`).
#[derive(Debug)]
struct CloseFailure {
    kind: ErrorKind,
    temporary: bool,
    text: String,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}
