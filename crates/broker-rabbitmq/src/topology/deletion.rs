//! Deleting a topic: its exchange and the group queues of it this process knows.

use broker_api::{Error, ErrorKind, Result};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::Channel;

use super::declarations::{declare_exchange, exchange_name};
use super::Topology;
use crate::error::{self, BACKEND};

impl Topology {
    /// Deletes the topic's exchange and the group queues of it this process knows (declared or
    /// used here); queues other processes made for other groups are left (AMQP cannot list
    /// them), unbound. Each deleted resource is forgotten as it goes: after a failure, what is
    /// left stays known (its subscriptions go on, and resume when RabbitMQ cancels them).
    pub(crate) async fn delete_topic(&self, channel: &Channel, topic: &str) -> Result<()> {
        let _no_other_change = self.changing.lock().await;
        self.known().deleting.insert(topic.to_owned());
        let _deleting = Deleting {
            topology: self,
            topic,
        };
        self.delete_known(channel, topic).await
    }

    async fn delete_known(&self, channel: &Channel, topic: &str) -> Result<()> {
        let exchange = exchange_name(topic)?;
        let queues: Vec<String> = {
            let known = self.known();
            known
                .declared_queues
                .iter()
                .chain(known.verified_queues.iter())
                .filter(|(_, t)| t.as_str() == topic)
                .map(|(queue, _)| queue.clone())
                .collect()
        };
        for queue in &queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| {
                    error::from_lapin("delete topic", format!("cannot delete queue {queue}"), e)
                })?;
            let mut known = self.known();
            known.declared_queues.remove(queue);
            known.verified_queues.remove(queue);
        }
        // RabbitMQ deletes a missing exchange without a word, where the other brokers answer
        // NotFound: look it up first.
        if let Err(e) = declare_exchange(channel, topic, true).await {
            if e.kind() != ErrorKind::NotFound {
                return Err(e.operation("delete topic"));
            }
            self.forget_topic(topic);
            let queues_deleted = if queues.is_empty() {
                String::new()
            } else {
                format!(
                    "; the {} group queue(s) of it known here were deleted",
                    queues.len()
                )
            };
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "topic {topic} does not exist (RabbitMQ has no exchange {topic}){queues_deleted}"
                ),
            )
            .backend(BACKEND)
            .operation("delete topic"));
        }
        channel
            .exchange_delete(exchange, ExchangeDeleteOptions::default())
            .await
            .map_err(|e| {
                error::from_lapin("delete topic", format!("cannot delete exchange {topic}"), e)
            })?;
        self.forget_topic(topic);
        Ok(())
    }
}

/// Marks a topic as being deleted while it lives (also when the deletion is given up).
struct Deleting<'a> {
    topology: &'a Topology,
    topic: &'a str,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.topology.known().deleting.remove(self.topic);
    }
}
