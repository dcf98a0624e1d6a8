//! The connection to RabbitMQ and the supervisor that keeps it up ([`supervisor`]).
//!
//! A backend keeps two links, each one AMQP connection: one publishes, the other consumes and
//! declares (see [`Role`]). When a connection drops (broker restart, network failure,
//! `rabbitmqctl close_connection`), the supervisor reconnects with exponential backoff, logging
//! every attempt and its reason, re-declares the topology this process declared, and publishes
//! the new [`Session`]. Publishers and subscriptions wait for it and reopen their channels on it
//! by themselves. A connection that drops soon after it was made (a broker that accepts and
//! closes it, a message the client cannot parse that kills it on every delivery) does not
//! start the backoff over: the next reconnect waits as if the last one had failed.

mod supervisor;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use broker_api::{Error, ErrorKind, Result};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::channel::close_channel;
use crate::config::Settings;
use crate::error::{self, BACKEND};
use crate::topology::Topology;

/// How long the supervisor waits for a connection it gives up (closed, or failed while its
/// topology was declared) to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One established connection. A reconnect makes a new session with a higher generation.
pub(crate) struct Session {
    /// Counts connections made by this backend, from 1.
    pub(crate) generation: u64,
    /// The AMQP connection.
    pub(crate) connection: Connection,
    /// Set once [`Session::close`] finished.
    closed: OnceCell<()>,
}

impl Session {
    fn new(generation: u64, connection: Connection) -> Arc<Session> {
        Arc::new(Session {
            generation,
            connection,
            closed: OnceCell::new(),
        })
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection once; a concurrent call waits for that close. `Link::close` and
    /// the supervisor both close the session they hold: two `connection.close` at once make
    /// lapin fail the connection ("unexpected connection close-ok") instead of closing it.
    async fn close(&self) {
        self.closed
            .get_or_init(|| async {
                if !self.is_open() {
                    return;
                }
                if let Err(e) = self.connection.close(200, "closing".into()).await {
                    tracing::debug!(error = %e, "closing the RabbitMQ connection failed");
                }
            })
            .await;
    }
}

/// Where the link is.
#[derive(Clone)]
enum State {
    /// Connected.
    Up(Arc<Session>),
    /// Reconnecting.
    Down,
    /// Closed for good by `close`.
    Closed,
}

/// The shared handle on the connection: the current session, and the supervisor's inbox.
pub(crate) struct Link {
    role: Role,
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    state: watch::Sender<State>,
    /// Someone saw the connection fail; the supervisor double-checks.
    broken: Notify,
    generations: AtomicU64,
    /// Channels being closed in the background: `close` lets them finish before it closes the
    /// connection, which lapin otherwise fails instead of closing ("invalid channel state").
    channel_closes: TaskTracker,
    /// Why the last reconnect attempt failed, while reconnecting: said to those waiting in
    /// vain for a session (credentials revoked, say, would otherwise show only in the logs).
    last_failure: std::sync::Mutex<Option<String>>,
}

/// The owner of a [`Link`]: dropping it abandons the link (its supervisor closes the connection
/// and stops), also when the backend owning it was never built, its `connect` dropped
/// half-way.
pub(crate) struct OwnedLink(Arc<Link>);

impl std::ops::Deref for OwnedLink {
    type Target = Arc<Link>;

    fn deref(&self) -> &Arc<Link> {
        &self.0
    }
}

impl Drop for OwnedLink {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Link {
    /// Connects (failing within `connect_timeout`) and starts the supervisor.
    pub(crate) async fn connect(
        role: Role,
        settings: Arc<Settings>,
        topology: Arc<Topology>,
    ) -> Result<OwnedLink> {
        let connection = open_connection(role, &settings).await?;
        let session = Session::new(1, connection);
        let link = Arc::new(Link {
            role,
            settings,
            topology,
            state: watch::Sender::new(State::Up(session.clone())),
            broken: Notify::new(),
            generations: AtomicU64::new(1),
            channel_closes: TaskTracker::new(),
            last_failure: std::sync::Mutex::new(None),
        });
        tokio::spawn(link.clone().supervise(session));
        Ok(OwnedLink(link))
    }

    /// The checked configuration.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), State::Closed)
    }

    /// Tells the supervisor that an operation saw the connection fail.
    pub(crate) fn report_broken(&self) {
        self.broken.notify_one();
    }

    /// An open session, waiting for the supervisor to reconnect until `deadline`.
    pub(crate) async fn session(&self, deadline: Instant) -> Result<Arc<Session>> {
        let mut states = self.state.subscribe();
        loop {
            let state = states.borrow_and_update().clone();
            match state {
                State::Closed => return Err(error::closed("connect")),
                State::Up(session) if session.is_open() => return Ok(session),
                State::Up(_) => self.report_broken(),
                State::Down => {}
            }
            match tokio::time::timeout_at(deadline, states.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(error::closed("connect")),
                Err(_) => {
                    let last = self.last_failure().clone();
                    let why =
                        last.map_or_else(String::new, |last| format!("; last attempt: {last}"));
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!(
                            "no connection to RabbitMQ at {} (reconnecting{why})",
                            self.settings.endpoint
                        ),
                    )
                    .backend(BACKEND)
                    .operation("connect"));
                }
            }
        }
    }

    fn last_failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves once `close` was called.
    pub(crate) async fn closed(&self) {
        let mut states = self.state.subscribe();
        // An error means the sender is gone, which only happens when the link is dropped.
        let _ = states
            .wait_for(|state| matches!(state, State::Closed))
            .await;
    }

    /// Closes `channel` in the background (see [`close_channel`]); `close` waits for it.
    pub(crate) fn close_in_background(&self, channel: Channel, reason: &'static str) {
        self.close_in_background_holding(channel, reason, ());
    }

    /// [`Link::close_in_background`], dropping `held` once the channel closed (a consumer,
    /// which dropped on an open channel cancels itself first).
    pub(crate) fn close_in_background_holding<H: Send + 'static>(
        &self,
        channel: Channel,
        reason: &'static str,
        held: H,
    ) {
        self.channel_closes.spawn(async move {
            close_channel(&channel, reason).await;
            drop(held);
        });
    }

    /// Stops the supervisor and closes the connection (waiting up to `timeout` for the broker,
    /// after the channels being closed in the background). Idempotent.
    pub(crate) async fn close(&self, timeout: Duration) {
        // Before the link is marked closed, on which the supervisor closes the connection too.
        // Each close gives up by itself after a few seconds.
        self.channel_closes.close();
        let _ = tokio::time::timeout(timeout, self.channel_closes.wait()).await;
        let previous = self.state.send_replace(State::Closed);
        if let State::Up(session) = previous {
            if tokio::time::timeout(timeout, session.close())
                .await
                .is_err()
            {
                tracing::debug!(
                    ?timeout,
                    "RabbitMQ did not answer the connection close in time"
                );
            }
        }
    }

    /// Marks the link closed without waiting for the broker (when the backend is dropped).
    pub(crate) fn abandon(&self) {
        self.state.send_replace(State::Closed);
    }
}

/// Waits for `closing` at most `wait`: a broker that stopped answering does not hold the
/// supervisor.
async fn close_within(wait: Duration, closing: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(wait, closing).await.is_err() {
        tracing::debug!(?wait, "RabbitMQ did not answer a connection close in time");
    }
}

/// What a link's connection carries.
///
/// RabbitMQ blocks a connection that publishes during a resource alarm (memory or disk) and
/// then reads nothing more from it: on a shared connection, acknowledgements would wait for
/// the alarm to clear, and with them the subscriptions whose backlog may have raised it.
/// Publishes (dead letters among them) therefore go on a connection of their own, as
/// RabbitMQ's documentation advises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Publishes and their confirms.
    Publishing,
    /// Subscriptions, their acknowledgements, and declarations.
    Consuming,
}

impl Role {
    /// The connection's name, shown by RabbitMQ's management UI and `rabbitmqctl`.
    fn connection_name(self) -> &'static str {
        match self {
            Role::Publishing => "broker-rs publishing",
            Role::Consuming => "broker-rs consuming",
        }
    }
}

/// Opens a connection, failing within `connect_timeout` with an error naming the endpoint.
async fn open_connection(role: Role, settings: &Settings) -> Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(role.connection_name().into());
    let timeout = settings.config.connect_timeout;
    let connect = Connection::connect_uri(settings.uri.clone(), properties);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(error::connect_failed(&settings.endpoint, e)),
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "cannot connect to RabbitMQ at {} within {}",
                settings.endpoint,
                humantime::format_duration(timeout)
            ),
        )
        .backend(BACKEND)
        .operation("connect")),
    }
}
