//! # broker-api
//!
//! One typed API for message brokers, after Lagom's Message Broker API: typed [`Topic`]s with
//! partition keys, [`Publisher`]s that wait for the broker's confirmation, group
//! [`Subscriber`]s that handle messages at least once (acknowledged only after the handler
//! succeeded, failures retried with backoff, then dead-lettered) or at most once.
//!
//! This crate holds the model and the semantics, written once. Backends (in-memory, Kafka,
//! RabbitMQ, Pub/Sub) implement the object-safe [`Backend`] trait and only map it to their
//! client; services depend on the `broker` facade crate, which picks the backend from
//! configuration.

pub mod acker;
pub mod backend;
pub mod capabilities;
pub mod codec;
pub mod completion;
pub mod confirmation;
pub mod delivery;
pub mod error;
pub mod handler;
pub mod key;
pub mod message;
pub mod naming;
pub mod offsets;
pub mod once_ready;
pub mod receipt_pool;
pub mod runner;
pub mod settings;

mod broker;
mod publisher;
mod subscriber;
mod topic;

pub use acker::{AckKey, AckTable, Acker, Acknowledge, Settle, SettleOnce, Settlement};
pub use backend::{
    Backend, BoxDeliveryStream, ConnectOptions, DeliveryStream, Receipt, SharedBackend, StartFrom,
    SubscribeRequest, TopicSpec,
};
pub use broker::Broker;
pub use capabilities::Capabilities;
pub use codec::{Codec, Json, Raw, Text};
pub use confirmation::{Confirmation, ReceiptSlot, ReceiptTable};
pub use delivery::{AmqpPosition, Delivery, Metadata, Position, PubSubPosition};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use handler::{Handler, HandlerError, HandlerResult, Received};
pub use key::Key;
pub use message::{Headers, Message, MessageId, CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
pub use once_ready::OnceReady;
pub use publisher::Publisher;
pub use receipt_pool::{IntoReceipt, ReceiptPool, ReceiptReply};
pub use runner::{AtMostOnce, Incoming, Manual, Running};
pub use settings::{check_delay, check_timeout, redact_uri, RetryPolicy, SubscriberSettings};
pub use subscriber::Subscriber;
pub use topic::Topic;
