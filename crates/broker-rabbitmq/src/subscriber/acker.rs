//! Settling a RabbitMQ delivery: `basic.ack`, or `basic.nack` with `requeue`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use broker_api::{Error, ErrorKind, Result, Settle};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

use crate::error;
use crate::in_flight::InFlight;
use crate::poll;

/// Settles one delivery on the channel it came from; dropped unsettled, it requeues it (unless
/// intake stopped: the channel's close requeues it, see the module docs).
pub(super) struct AmqpAcker {
    pub(super) channel: Arc<Channel>,
    pub(super) delivery_tag: u64,
    pub(super) intake_stopped: Arc<AtomicBool>,
    pub(super) in_flight: Arc<InFlight>,
}

impl AmqpAcker {
    /// The error of an ack that cannot count: RabbitMQ gives the message back to the queue.
    fn not_acknowledged(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!(
                "message {} not acknowledged: {why}; RabbitMQ delivers it again",
                self.delivery_tag
            ),
        )
        .backend(error::BACKEND)
        .operation("ack")
    }
}

impl Settle for AmqpAcker {
    /// Queues `basic.ack` or `basic.nack(requeue)`. On a channel that is gone, RabbitMQ gave
    /// the message back to the queue already: a nack has nothing to do, an ack fails.
    fn settle(&mut self, ack: bool) -> Result<()> {
        self.in_flight.release();
        if !self.channel.status().connected() {
            tracing::debug!(
                delivery_tag = self.delivery_tag,
                "the delivery's channel is closed; RabbitMQ delivers the message again"
            );
            if ack {
                return Err(self.not_acknowledged("the channel it came from closed"));
            }
            return Ok(());
        }
        if !ack && self.intake_stopped.load(Ordering::Acquire) {
            tracing::debug!(
                delivery_tag = self.delivery_tag,
                "closing: the channel's close gives the message back, in order"
            );
            return Ok(());
        }
        let failed = if ack {
            poll::fire(
                self.channel
                    .basic_ack(self.delivery_tag, BasicAckOptions::default()),
            )
        } else {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            poll::fire(self.channel.basic_nack(self.delivery_tag, requeue))
        };
        match failed {
            Some(Err(e)) if ack => Err(self
                .not_acknowledged("the channel refused the acknowledgement")
                .source(e)),
            Some(Err(e)) => {
                tracing::debug!(delivery_tag = self.delivery_tag, error = %e,
                    "rejecting a delivery failed; RabbitMQ delivers the message again");
                Ok(())
            }
            // Queued, or sent.
            _ => Ok(()),
        }
    }

    /// Live while its channel is open: once it closed, RabbitMQ gave the message back.
    fn is_live(&self) -> bool {
        self.channel.status().connected()
    }
}
