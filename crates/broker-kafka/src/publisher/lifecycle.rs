//! The producer's life: replaced after a fatal error of the idempotent producer, the replaced
//! ones drained on a thread of their own; at close, intake refused, then every producer
//! flushed, or purged when time runs out.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use broker_api::Result;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::{KafkaProducer, Publisher};
use crate::delivery::Deliveries;
use crate::error::from_kafka;

impl Publisher {
    /// Replaces the producer after librdkafka refused a message with a fatal error of its
    /// sequence or id; returns whether a working producer is in place (made here, or by a send
    /// that got here first).
    ///
    /// The new producer is made under the write lock on purpose: sends wait for it (making one
    /// starts librdkafka's threads without waiting for the network) instead of handing
    /// records to the failed producer, which would refuse them too, and two sends that met the
    /// same failure make one producer, not two.
    pub(super) fn replace_failed(&self) -> bool {
        let mut producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((code, reason)) = producer.client().fatal_error() else {
            return true;
        };
        if !matches!(
            code,
            RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::Inconsistent
        ) {
            return false;
        }
        let context = Deliveries::new(
            self.log.clone(),
            self.reports.clone(),
            self.topics.get().cloned(),
        );
        match self.config.create_with_context(context) {
            Ok(fresh) => {
                tracing::warn!(%code, reason,
                    "the producer stopped after a fatal error; publishing goes on with a new one (the old one still gets the answers of what it had in flight)");
                let failed = std::mem::replace(&mut *producer, Arc::new(fresh));
                drop(producer);
                self.retire(failed);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "the producer stopped after a fatal error and no new one could be made");
                false
            }
        }
    }

    /// Drains `failed` on a thread of its own: what it holds queued it would never send, so
    /// that fails at once; librdkafka still answers what it had in flight (dropped at once, it
    /// would purge those messages), within the delivery timeout; then it is dropped. Kept in
    /// `retired` meanwhile, for closing to flush it. Purging waits for librdkafka's threads,
    /// so it runs on the draining thread, not on the caller's (a runtime worker).
    pub(super) fn retire(&self, failed: Arc<KafkaProducer>) {
        failed.context().mark_failed();
        let retired = self.retired.clone();
        lock(&retired).push(failed.clone());
        let timeout = self.queue_wait;
        let draining = std::thread::Builder::new()
            .name("kafka-producer-drain".into())
            .spawn(move || {
                failed.purge(rdkafka::producer::PurgeConfig::default().queue());
                if let Err(error) = failed.flush(timeout) {
                    tracing::warn!(%error, "a replaced producer did not get every answer in time");
                }
                lock(&retired).retain(|kept| !Arc::ptr_eq(kept, &failed));
            });
        if let Err(error) = draining {
            tracing::warn!(%error, "cannot start a thread to drain the replaced producer; closing flushes it");
        }
    }

    /// Refuses every send from now on, those waiting for room in librdkafka's queue too; a
    /// send already handing its record over finishes first, so that a flush after this sees
    /// every record a send accepted.
    pub(crate) fn close_intake(&self) {
        let _producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
    }

    /// Waits up to `timeout` for every queued message to be confirmed or to fail: the current
    /// producer's first, then what replaced producers still drain (their queued messages,
    /// which they would never send, fail at once). When time runs out, every message still
    /// queued or in flight fails as closed. Runs on a blocking thread: flushing and purging
    /// wait for librdkafka's threads.
    pub(crate) async fn flush_or_purge(self: &Arc<Self>, timeout: Duration) -> Result<()> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let flushed = this.flush(timeout);
            if let Err(error) = &flushed {
                tracing::warn!(%error, "pending publishes not confirmed at close; failing them");
                this.purge();
            }
            flushed
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(|e| {
            from_kafka(
                "close",
                format!(
                    "pending publishes were not all confirmed within {}",
                    humantime::format_duration(timeout)
                ),
                e,
            )
        })
    }

    /// Flushes the current producer, then each replaced one after purging its queue, all
    /// within `timeout`; blocks.
    fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut flushed = self.producer().flush(left());
        let retired = lock(&self.retired).clone();
        for producer in retired {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue());
            flushed = flushed.and(producer.flush(left()));
        }
        flushed
    }

    /// Fails every message still queued or in flight, as closed.
    fn purge(&self) {
        let all = rdkafka::producer::PurgeConfig::default().queue().inflight();
        for producer in lock(&self.retired).iter() {
            producer.context().mark_closing();
            producer.purge(all);
        }
        let current = self.current();
        current.context().mark_closing();
        current.purge(all);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
