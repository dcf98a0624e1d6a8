//! The concurrent runner: up to `concurrency` messages at a time, same-key messages in order.

use std::task::Poll;

use futures::StreamExt;
use futures_buffered::FuturesUnordered;

use super::handling::{Handled, Unsettled};
use super::AtLeastOnce;
use crate::backend::BoxDeliveryStream;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::handler::Handler;
use crate::runner::fair_share::FairShare;
use crate::runner::key_lanes::{KeyLanes, Lane};
use crate::runner::stop::Stop;

/// What the runner's loop acts on next.
enum Event {
    /// A handler finished.
    Finished(Finished),
    /// The stream's next item; `None` once it ended.
    Received(Option<Result<Delivery>>),
}

/// What one handled delivery left behind.
struct Finished {
    lane: Option<Lane>,
    handled: Handled,
}

impl<T: Send + 'static> AtLeastOnce<T> {
    /// Up to `concurrency` messages at a time; same-key messages wait for each other.
    pub(super) async fn run_concurrent<H: Handler<T>>(
        &self,
        stream: &mut BoxDeliveryStream,
        handler: &H,
        stop: &Stop,
    ) -> Result<()> {
        // Cancelled on close or on a fatal error: handlers waiting to retry give up their message.
        let abandon = stop.token().child_token();
        // Reuses its slots: starting a handler allocates nothing once the set has grown to
        // `concurrency` (`futures::stream::FuturesUnordered` allocates a task for each).
        let mut running = FuturesUnordered::new();
        let mut lanes = KeyLanes::default();
        let mut outcome = Ok(());
        let mut unsettled = Vec::new();
        let mut fair_share = FairShare::default();
        // The handlers' futures borrow what they share: nothing is counted per message.
        let abandon = &abandon;
        let start = |delivery: Delivery, lane: Option<Lane>| async move {
            let handled = self.handle(delivery, handler, abandon).await;
            Finished { lane, handled }
        };

        loop {
            if stop.is_requested() {
                break;
            }
            let has_room = running.len() < self.settings.concurrency;
            // What is ready is taken without arming the close signal (a registration per
            // message); only when nothing is does the loop wait for close too.
            let ready = match futures::poll!(running.next()) {
                Poll::Ready(Some(finished)) => Some(Event::Finished(finished)),
                _ if has_room => match futures::poll!(stream.next()) {
                    Poll::Ready(item) => Some(Event::Received(item)),
                    Poll::Pending => None,
                },
                _ => None,
            };
            let event = match ready {
                Some(event) => event,
                None => tokio::select! {
                    biased;
                    () = stop.token().cancelled() => break,
                    Some(finished) = running.next() => Event::Finished(finished),
                    item = stream.next(), if has_room => Event::Received(item),
                },
            };
            match event {
                Event::Finished(Finished { lane, handled }) => {
                    if let Err(left) = handled {
                        // Abandoned by a close that began meanwhile, or a fatal error: its key's
                        // next message does not start.
                        let Unsettled { acker, error } = left;
                        outcome = error.map_or(Ok(()), Err);
                        unsettled.push(acker);
                        break;
                    }
                    if let Some(lane) = lane {
                        if let Some(next) = next_in_lane(&mut lanes, lane) {
                            running.push(start(next, Some(lane)));
                        }
                    }
                }
                Event::Received(Some(Ok(delivery))) => {
                    if let Some((delivery, lane)) = lanes.admit(delivery) {
                        running.push(start(delivery, lane));
                    }
                    fair_share.take().await;
                }
                Event::Received(Some(Err(e))) => {
                    outcome = Err(e);
                    break;
                }
                Event::Received(None) => break,
            }
        }

        // Intake is closed; messages waiting behind their key were not started and are
        // delivered again later. Let running handlers finish, within the shutdown timeout.
        stream.stop_intake();
        if outcome.is_err() {
            abandon.cancel();
        }
        drop(lanes);
        drop(unsettled);
        let drain = async {
            let mut first_error = Ok(());
            while let Some(Finished { handled, .. }) = running.next().await {
                if let Err(Some(e)) = handled.map_err(Unsettled::into_error) {
                    abandon.cancel();
                    if first_error.is_ok() {
                        first_error = Err(e);
                    }
                }
            }
            first_error
        };
        let drained = self.finish_within_timeout(drain).await;
        outcome.and(drained)
    }
}

/// The next message of `lane` to start once one finished. Waiting ones no longer live are
/// dropped, whatever became of the one that finished: the broker delivers them again, to the
/// member that holds them now (started here, they would be handled a second time, after later
/// messages of their key were handled there) or after one dropped as no longer live (started,
/// they would be handled before it).
fn next_in_lane(lanes: &mut KeyLanes, lane: Lane) -> Option<Delivery> {
    let mut next = lanes.release(lane);
    while next.as_ref().is_some_and(|delivery| !delivery.is_live()) {
        next = lanes.release(lane);
    }
    next
}
