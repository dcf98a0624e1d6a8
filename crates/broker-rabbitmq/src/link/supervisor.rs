//! The supervisor of a link: watches the connection (its events, and its state every
//! [`HEALTH_CHECK`]), and when it drops reconnects with backoff, re-declares the topology and
//! publishes the new session.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use broker_api::Result;
use futures::StreamExt;
use lapin::Event;
use tokio::time::Instant;

use super::{close_within, open_connection, Link, Session, State, CLOSE_WAIT};

/// How often the supervisor checks the connection's state besides listening to its events.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// A session that lived at least this long dropped for a new reason: reconnecting starts
/// again without waiting. One that dropped sooner continues the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

impl Link {
    /// Watches the session, reconnects when it fails, until the link is closed.
    pub(super) async fn supervise(self: Arc<Self>, mut session: Arc<Session>) {
        // Failed attempts behind the current session, when it has not proved stable yet.
        let mut attempts = 0;
        loop {
            let up_since = Instant::now();
            let Some(reason) = self.watch(&session).await else {
                // Closed (or the backend dropped without closing): the connection goes too.
                close_within(CLOSE_WAIT, session.close()).await;
                return;
            };
            tracing::warn!(
                endpoint = %self.settings.endpoint,
                reason,
                "the connection to RabbitMQ was lost; reconnecting"
            );
            self.state.send_if_modified(|state| match state {
                State::Closed => false,
                _ => {
                    *state = State::Down;
                    true
                }
            });
            let carried = carried_attempts(up_since.elapsed(), attempts);
            match self.reconnect(carried).await {
                Some((next, made)) => (session, attempts) = (next, made),
                None => return,
            }
        }
    }

    /// Waits until the session fails (returning why) or the link is closed (`None`).
    async fn watch(&self, session: &Session) -> Option<String> {
        let mut events = session.connection.events_listener();
        let mut health = tokio::time::interval(HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed = self.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = &mut closed => return None,
                event = events.next() => match event {
                    // Channel errors are reported here too; only a closed connection matters.
                    Some(Event::Error(e)) if !session.is_open() => return Some(e.to_string()),
                    Some(_) => {}
                    None => return Some("the connection's event stream ended".to_owned()),
                },
                () = self.broken.notified() => {}
                _ = health.tick() => {}
            }
            if !session.is_open() {
                return Some("the connection is no longer open".to_owned());
            }
        }
    }

    /// Connects again with backoff until it works (`Some`, with the attempts made counting the
    /// `carried` ones) or the link is closed (`None`). With attempts carried over, it waits
    /// before the first one as after a failed attempt.
    async fn reconnect(&self, carried: u32) -> Option<(Arc<Session>, u32)> {
        let backoff = &self.settings.config.reconnect;
        let started = Instant::now();
        let mut attempt = carried;
        loop {
            // At once the first time, unless failed attempts are carried over.
            if attempt > 0 {
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                    () = self.closed() => return None,
                }
            }
            if self.is_closed() {
                return None;
            }
            attempt += 1;
            // A long re-declaration stops when the link is closed meanwhile.
            let opened = tokio::select! {
                opened = self.open_session() => opened,
                () = self.closed() => return None,
            };
            match opened {
                Ok(session) => {
                    *self.last_failure() = None;
                    tracing::warn!(
                        endpoint = %self.settings.endpoint,
                        attempt,
                        after = ?started.elapsed(),
                        connection = session.generation,
                        "reconnected to RabbitMQ"
                    );
                    let published = self.state.send_if_modified(|state| match state {
                        State::Closed => false,
                        _ => {
                            *state = State::Up(session.clone());
                            true
                        }
                    });
                    if !published {
                        close_within(CLOSE_WAIT, session.close()).await;
                        return None;
                    }
                    return Some((session, attempt));
                }
                Err(e) => {
                    tracing::warn!(
                        endpoint = %self.settings.endpoint,
                        attempt,
                        error = %e,
                        retry_in = ?backoff.delay(attempt),
                        "reconnecting to RabbitMQ failed"
                    );
                    *self.last_failure() = Some(e.to_string());
                }
            }
        }
    }

    /// A new connection with the known topology declared on it.
    async fn open_session(&self) -> Result<Arc<Session>> {
        let connection = open_connection(self.role, &self.settings).await?;
        let patience = self.settings.config.connect_timeout;
        if let Err(e) = self.topology.redeclare(&connection, patience).await {
            close_within(CLOSE_WAIT, async {
                if let Err(e) = connection.close(200, "closing".into()).await {
                    tracing::debug!(error = %e, "closing a connection given up failed");
                }
            })
            .await;
            return Err(e);
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Session::new(generation, connection))
    }
}

/// The failed attempts a reconnect continues from: none after a session that `lived` long
/// enough to call stable, else those behind it (`before`).
fn carried_attempts(lived: Duration, before: u32) -> u32 {
    if lived >= STABLE_AFTER {
        0
    } else {
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_dropped_soon_continues_the_backoff() {
        assert_eq!(carried_attempts(Duration::from_millis(50), 4), 4);
        assert_eq!(
            carried_attempts(STABLE_AFTER - Duration::from_millis(1), 1),
            1
        );
        assert_eq!(carried_attempts(STABLE_AFTER, 7), 0);
    }
}
