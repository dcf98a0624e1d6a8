//! The AMQP declarations behind the topology: exchanges and bindings, and the errors of
//! checking that they exist.

use broker_api::{Error, ErrorKind, Result};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::error::{self, BACKEND};

/// The binding key that matches every routing key, the empty one included.
const EVERY_KEY: &str = "#";

/// The exchange of `topic`, checked against AMQP's name limit.
pub(super) fn exchange_name(topic: &str) -> Result<ShortString> {
    ShortString::try_new(topic).map_err(|_| {
        Error::config(format!(
            "topic name {topic:?} is longer than AMQP's 255 bytes"
        ))
        .backend(BACKEND)
    })
}

pub(super) async fn declare_exchange(channel: &Channel, topic: &str, passive: bool) -> Result<()> {
    let name = exchange_name(topic)?;
    let options = ExchangeDeclareOptions {
        passive,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name, ExchangeKind::Topic, options, FieldTable::default())
        .await
        .map_err(|e| {
            if passive {
                missing_or(e, "topic", &format!("topic {topic:?} (exchange {topic})"))
            } else {
                error::from_lapin(
                    "declare exchange",
                    format!("cannot declare the durable topic exchange {topic}"),
                    e,
                )
            }
        })
}

pub(super) async fn bind(channel: &Channel, queue: &ShortString, topic: &str) -> Result<()> {
    channel
        .queue_bind(
            queue.clone(),
            topic.into(),
            EVERY_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            error::from_lapin(
                "bind queue",
                format!("cannot bind queue {queue} to exchange {topic}"),
                e,
            )
        })
}

/// A `NotFound` error saying auto-provisioning is off, when the broker said 404.
pub(super) fn missing_or(e: lapin::Error, what: &str, name: &str) -> Error {
    if error::kind_of(&e) == ErrorKind::NotFound {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "the {name} does not exist and auto-provisioning is off: declare the {what} in \
                 the configuration ([topics.<name>] groups = [...]) or create it"
            ),
        )
        .backend(BACKEND)
        .operation("check topology")
        .source(e)
    } else {
        error::from_lapin("check topology", format!("cannot check the {name}"), e)
    }
}
