//! Channels this backend opens for a while and closes itself.

use std::time::Duration;

use broker_api::Result;
use lapin::{Channel, Connection};

use crate::error;

/// A short-lived channel for declarations: a failed declaration closes its channel. Close it
/// with [`close_channel`].
pub(crate) async fn scratch_channel(connection: &Connection) -> Result<Channel> {
    connection
        .create_channel()
        .await
        .map_err(|e| error::from_lapin("open channel", "cannot open a channel", e))
}

/// Closes a channel this backend is done with and waits for the broker's answer (unless the
/// broker closed it already, after a refused declaration for instance), for at most
/// [`CHANNEL_CLOSE_TIMEOUT`].
///
/// A lapin channel whose last handle is dropped open closes itself in the background; a
/// connection close that follows closely (`Broker::close` after declaring or deleting a topic)
/// races with it, and lapin then fails the whole connection ("invalid channel state: Closing")
/// instead of closing it. Scratch channels, the confirm channel of a deleted topic and a
/// closed subscription's channel are closed here instead.
pub(crate) async fn close_channel(channel: &Channel, reason: &str) {
    if !channel.status().connected() {
        return;
    }
    match tokio::time::timeout(CHANNEL_CLOSE_TIMEOUT, channel.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, channel = channel.id(), "closing a channel failed");
        }
        Err(_) => tracing::debug!(
            channel = channel.id(),
            "the broker did not confirm closing a channel in time (a resource alarm blocks the \
             connection?); left to close with the connection"
        ),
    }
}

/// How long closing a channel waits for the broker's answer: a connection blocked by a
/// resource alarm is not read by the broker, so the answer only comes once the alarm clears.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
