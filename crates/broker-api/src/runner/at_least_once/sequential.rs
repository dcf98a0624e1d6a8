//! The sequential runner: one message at a time, in delivery order.

use std::task::Poll;

use futures::{FutureExt, StreamExt};

use super::handling::{acknowledged, Unsettled};
use super::AtLeastOnce;
use crate::backend::BoxDeliveryStream;
use crate::error::Result;
use crate::handler::Handler;
use crate::runner::fair_share::FairShare;
use crate::runner::stop::Stop;

impl<T: Send + 'static> AtLeastOnce<T> {
    /// One message at a time, in delivery order (the default, as in Lagom).
    pub(super) async fn run_sequential<H: Handler<T>>(
        &self,
        stream: &mut BoxDeliveryStream,
        handler: &H,
        stop: &Stop,
    ) -> Result<()> {
        let mut fair_share = FairShare::default();
        let closing = stop.token();
        loop {
            // A delivery that is ready is taken without arming the close signal (a registration
            // per message); only an empty stream waits for both.
            if stop.is_requested() {
                return Ok(());
            }
            // Yields before taking the next delivery, not while holding it: a delivery held
            // across an await is moved into this future's state once more.
            fair_share.take().await;
            // Matched where it is polled: each binding on the way would move it once more.
            let mut delivery = match futures::poll!(stream.next()) {
                Poll::Ready(Some(Ok(delivery))) => delivery,
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => return Ok(()),
                Poll::Pending => tokio::select! {
                    biased;
                    () = closing.cancelled() => return Ok(()),
                    item = stream.next() => match item {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    },
                },
            };
            // The delivery stays in this loop until it is settled; the attempt borrows none of it.
            let attempt = self.attempt(&delivery.payload, &delivery.metadata, handler);
            tokio::pin!(attempt);
            // Most handlers finish at their first poll: no need to watch for close then.
            let outcome = match futures::poll!(&mut attempt) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => tokio::select! {
                    biased;
                    outcome = &mut attempt => outcome,
                    () = closing.cancelled() => {
                        // Closing: let the running handler finish, within the shutdown timeout.
                        // Intake stops first: the delivery may be dropped unsettled.
                        stream.stop_intake();
                        let finishing = async {
                            let outcome = attempt.await;
                            let handled = self.conclude(delivery, outcome, handler, closing).await;
                            Unsettled::outcome_of(handled)
                        };
                        return self.finish_within_timeout(finishing).await;
                    }
                },
            };
            let failure = match outcome {
                // Settled in place: the delivery is not moved again, only its acker.
                Ok(()) => {
                    self.succeeded(&delivery.metadata);
                    acknowledged(delivery.take_acker().ack()).await;
                    continue;
                }
                Err(failure) => failure,
            };
            // Retries give up their message when closing begins during a backoff; a retry
            // running then (or dead-lettering) gets the shutdown timeout, as a first attempt.
            let mut retrying = self.retry(delivery, handler, closing, failure);
            let retried = tokio::select! {
                biased;
                retried = &mut retrying => retried,
                () = closing.cancelled() => {
                    stream.stop_intake();
                    let finishing = retrying.map(Unsettled::outcome_of);
                    return self.finish_within_timeout(finishing).await;
                }
            };
            if let Err(unsettled) = retried {
                stream.stop_intake();
                return unsettled.into_outcome();
            }
        }
    }
}
