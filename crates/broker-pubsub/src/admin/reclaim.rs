//! Ending the emulator's abandoned streaming pulls of a subscription (see `subscriber` on why
//! the emulator keeps them).

use std::time::Duration;

use broker_api::Result;
use google_cloud_pubsub::model::PushConfig;

use super::Admin;
use crate::error::rpc_error;

/// How long a subscription is switched to push delivery to end the emulator's abandoned
/// streaming pulls: the emulator checks each pull every 50 ms.
const RECLAIM_WINDOW: Duration = Duration::from_millis(150);

/// Where the emulator tries to push during [`RECLAIM_WINDOW`]: a loopback port nothing
/// listens on (the discard port), so pushes fail and the messages stay for pulling.
const RECLAIM_PUSH_ENDPOINT: &str = "http://127.0.0.1:9/";

impl Admin {
    /// Ends every streaming pull the emulator still keeps for `subscription`, including those
    /// of processes gone long ago (see `subscriber` on why the emulator keeps them): the
    /// subscription is switched to push delivery for [`RECLAIM_WINDOW`], which makes the
    /// emulator end its streaming pulls, then back to pull delivery. Messages keep waiting in
    /// the subscription. Emulator only: Google Cloud releases cancelled streaming pulls itself.
    pub(crate) async fn reclaim_streaming_pulls(&self, subscription: &str) -> Result<()> {
        self.subscriptions
            .modify_push_config()
            .set_subscription(self.subscription_path(subscription))
            .set_push_config(PushConfig::new().set_push_endpoint(RECLAIM_PUSH_ENDPOINT))
            .send()
            .await
            .map_err(|e| {
                rpc_error(
                    e,
                    "subscribe",
                    format!("cannot reclaim the streaming pulls of subscription {subscription}"),
                )
            })?;
        tokio::time::sleep(RECLAIM_WINDOW).await;
        self.restore_pull_delivery(subscription).await
    }

    /// Switches `subscription` back to pull delivery: the end of a reclaim, or the repair of
    /// one that never finished.
    pub(crate) async fn restore_pull_delivery(&self, subscription: &str) -> Result<()> {
        self.subscriptions
            .modify_push_config()
            .set_subscription(self.subscription_path(subscription))
            .set_push_config(PushConfig::new())
            .send()
            .await
            .map_err(|e| {
                rpc_error(
                    e,
                    "subscribe",
                    format!("cannot switch subscription {subscription} back to pull delivery"),
                )
            })
    }
}
