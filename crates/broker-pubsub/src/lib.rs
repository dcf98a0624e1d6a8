//! Google Cloud Pub/Sub backend of the broker API, over Google's official
//! [`google-cloud-pubsub`](https://crates.io/crates/google-cloud-pubsub) client (the
//! googleapis/google-cloud-rust SDK). It works against Google Cloud and against the Pub/Sub
//! emulator.
//!
//! # Mapping
//!
//! | broker | Pub/Sub |
//! | --- | --- |
//! | topic `t` | topic `projects/<project>/topics/t` |
//! | group `g` of topic `t` | subscription `projects/<project>/subscriptions/t.g` ([`broker_api::naming::group_resource`]: the dead-letter topic `t.g.dlq` read by `g` uses the subscription `t.g.dlq`) |
//! | key | ordering key |
//! | headers | attributes |
//! | message id | attribute `message-id` |
//! | content type | attribute `content-type` |
//!
//! Subscriptions are created with message ordering enabled: messages with the same ordering key
//! are delivered in publish order; ordering only concerns messages that have a key, the others
//! are delivered in any order. A subscription found existing without message ordering (made
//! by another program; the setting cannot be changed) is used, with a warning: same-key order
//! does not hold there. A message without a `message-id` attribute (published by another
//! program) is still delivered, with no message id.
//!
//! # Provisioning and retention
//!
//! A subscription keeps only the messages published after it was created. A group's
//! subscription is created when the group first subscribes, and for the groups declared with
//! the topic ([`Backend::ensure_topic`] with [`TopicSpec::group`], `[topics.<name>] groups` in
//! the configuration): declare groups that must not miss early messages. So a new group sees
//! only what is published after it exists, whether it asks for the earliest or the latest
//! message (capabilities `new_group_reads_history = false`, `start_from_latest = true`).
//! Subscriptions this backend creates never expire (the service's default deletes one after
//! 31 days without a subscriber, with what was published for its group); the service keeps
//! a subscription's unacknowledged messages for its message retention duration (7 days by
//! default). With auto-provisioning on (the default) topics are created when first published to or
//! subscribed; with it off, a missing topic or subscription is an
//! [`ErrorKind::NotFound`] error.
//!
//! # Publishing
//!
//! Messages go through the client's batching publisher (one per topic, batches of
//! `batch_max_messages` / `batch_max_bytes` / `batch_max_delay`), many in flight; the publish
//! response is the confirmation. A message over 10 MB (payload, key and attributes together)
//! is rejected before sending, as is one over Pub/Sub's other limits (100 attributes, names
//! of 256 bytes not starting with `goog`, values of 1024 bytes, keys of 1024 bytes), which the
//! service would refuse together with every message batched with it. When a message with an
//! ordering key fails, the error is reported to that publish and the key is resumed, so
//! later messages with that key are sent, whether or not the confirmations are awaited. At
//! most `max_pending_messages` messages (`max_pending_bytes` bytes) are sent and not answered
//! at a time, over all topics: beyond that `send` waits (the client itself would queue
//! without bound). The client retries temporary failures within `publish_timeout`; a topic
//! the service lost (the emulator restarted) is re-created, with the subscriptions this
//! backend knows, and the message published again. While a key recovers from a failure, its
//! messages published meanwhile may be re-sent in a different order.
//!
//! # Subscribing
//!
//! A subscription is the client's streaming pull: at most `max_in_flight` deliveries are
//! unsettled (the rest wait at the service), and the client extends the leases of the messages
//! being handled (`ack_deadline`, up to `max_lease`). Acknowledging acknowledges; rejecting
//! (or dropping a delivery unsettled) sets its deadline to zero so the service delivers it
//! again at once. A streaming pull that fails is reopened by itself (the deliveries it held
//! are then no longer live, their acknowledgement is a `Connection` error, and the service
//! delivers them again); a subscription the service lost is re-created (with
//! auto-provisioning). Deliveries carry the Pub/Sub message id and
//! ordering key as [`Position::PubSub`](broker_api::Position::PubSub), the publish time, and
//! the delivery attempt when the service counts it (it only does for subscriptions with a
//! dead-letter policy, which this backend does not set, so it is usually absent).
//!
//! # Dead letters
//!
//! Dead letters go through the shared runner of `broker-api`, like on every backend: the
//! topic `t.g.dlq` with its subscription `t.g.dlq`. Pub/Sub's own dead-letter policy is not
//! used, so all backends share one code path and one naming.
//!
//! # The emulator's streaming pulls
//!
//! The Pub/Sub emulator (0.8.x, as packaged in `google-cloud-cli-pubsub-emulator`) never
//! releases a streaming pull that the client cancels or whose connection closes: it goes on
//! routing messages to it — unkeyed messages until their acknowledgement deadline passes,
//! messages whose ordering key hashes to it for good — so the next subscriber of the group
//! would miss them. Against the emulator (an `endpoint` with anonymous credentials) this
//! backend therefore:
//!
//! - keeps the streaming pull of a closed subscription open and idle, and hands it to the next
//!   subscription of the same group on this backend;
//! - when it closes, and before its first pull of a subscription it did not create itself
//!   (one an earlier process used), ends the emulator's left-over pulls of the subscription:
//!   it switches the subscription to push delivery to an unreachable loopback address for
//!   150 ms, which makes the emulator end every streaming pull of it, then back to pull. Live
//!   pulls of other processes in the group are ended too and reopen by themselves (this
//!   backend's within 100 ms); messages waiting in the subscription at that moment stay there,
//!   but the first message of a key may then come after later ones.
//!
//! None of this happens against Google Cloud, which releases cancelled streaming pulls.
//! `emulator_workarounds = false` turns it off on the emulator too.
//!
//! # Restarts
//!
//! Google Cloud keeps topics, subscriptions and unacknowledged messages. The emulator keeps
//! nothing across a restart: the backend recovers by itself (publishes retry and re-create
//! the topic and its known subscriptions, subscriptions re-create themselves and reopen
//! their streaming pull), but messages not yet acknowledged before the restart are gone
//! (capability `survives_restart = false` on the emulator). A subscription resumes when the
//! client's reconnection backoff next retries: its pause grows fourfold from 100 ms up to a
//! minute, so after a long outage up to a minute after the emulator's return.
//!
//! # Credentials
//!
//! With `endpoint` set (the emulator) requests carry no credentials; without it the client
//! uses Application Default Credentials, or the service-account key in `credentials_file`.
//! The client does not read `PUBSUB_EMULATOR_HOST`. The Google Cloud path is covered by unit
//! tests of the options it builds ([`PubSubConfig::client_options`]), not by live tests.
//! Least-privilege roles work: a service account with `roles/pubsub.publisher` or
//! `.subscriber` alone connects and publishes or pulls; what it may not list, look up or create
//! (`PERMISSION_DENIED`) is taken as managed elsewhere, and an error names it if it is missing
//! after all. The emulator has no IAM: this is covered by unit tests of those decisions.

mod admin;
mod config;
mod credentials;
mod error;
mod mapping;
mod publisher;
mod stream;
mod subscriber;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_api::completion::{self, Completion};
use broker_api::naming::group_resource;
use broker_api::{
    Backend, BoxDeliveryStream, Capabilities, Confirmation, ConnectOptions, Error, ErrorKind,
    Message, Result, SubscribeRequest, TopicSpec,
};
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::retry_policy::RetryableErrors;

pub use config::{ClientOptions, CredentialsChoice, PubSubConfig, DEFAULT_PROJECT};
/// The Google Cloud authentication crate the clients use, for callers that build their own
/// clients next to this backend (tests, tools).
pub use google_cloud_auth;
/// The Pub/Sub client crate this backend is built on, for callers that need the raw client
/// next to this backend (tests, benchmarks, tools).
pub use google_cloud_pubsub;
pub use mapping::{CONTENT_TYPE_ATTRIBUTE, MESSAGE_ID_ATTRIBUTE};
pub use publisher::{MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES};

use admin::Admin;
use credentials::credentials;
use error::{builder_error, closed, BACKEND};
use publisher::{Batching, PendingLimit, Publishers};
use subscriber::{EmulatorClients, LeaseSettings, Subscriptions};

/// The Pub/Sub backend: publishers, subscriptions and topic administration over one set of
/// client connections. Cheap to share; safe to use from many tasks.
pub struct PubSubBackend {
    inner: Arc<Inner>,
}

struct Inner {
    project: String,
    endpoint: String,
    emulator: bool,
    admin: Arc<Admin>,
    publishers: Arc<Publishers>,
    subscriptions: Arc<Subscriptions>,
    closed: AtomicBool,
    close_timeout: Duration,
}

impl PubSubBackend {
    /// Builds the clients and checks that the service answers, within `connect_timeout`.
    ///
    /// Fails with [`ErrorKind::Config`] for invalid settings or missing credentials,
    /// [`ErrorKind::Connection`] naming the endpoint when the service cannot be reached in
    /// time, and [`ErrorKind::Rejected`] when it refuses the credentials.
    pub async fn connect(config: PubSubConfig, options: ConnectOptions) -> Result<PubSubBackend> {
        config.validate()?;
        let endpoint = config.display_endpoint();
        let client_options = config.client_options();
        let credentials = credentials(&client_options.credentials)?;
        let emulator = match (&client_options.endpoint, &credentials) {
            (Some(url), Some(credentials)) if config.uses_emulator_workarounds() => {
                Some(EmulatorClients {
                    endpoint: url.clone(),
                    credentials: credentials.clone(),
                })
            }
            _ => None,
        };
        let admin_retry = || RetryableErrors.with_time_limit(config.admin_timeout);
        let publish_retry = RetryableErrors.with_time_limit(config.publish_timeout);
        let backoff = || {
            ExponentialBackoffBuilder::new()
                .with_initial_delay(Duration::from_millis(100))
                .with_maximum_delay(Duration::from_secs(2))
                .with_scaling(2.0)
                .clamp()
        };

        let mut topics = TopicAdmin::builder()
            .with_retry_policy(admin_retry())
            .with_backoff_policy(backoff());
        let mut subscriptions = SubscriptionAdmin::builder()
            .with_retry_policy(admin_retry())
            .with_backoff_policy(backoff());
        let mut base_publisher = BasePublisher::builder()
            .with_retry_policy(publish_retry)
            .with_backoff_policy(backoff());
        let mut subscriber = Subscriber::builder();
        if let Some(url) = &client_options.endpoint {
            topics = topics.with_endpoint(url);
            subscriptions = subscriptions.with_endpoint(url);
            base_publisher = base_publisher.with_endpoint(url);
            subscriber = subscriber.with_endpoint(url);
        }
        if let Some(credentials) = credentials {
            topics = topics.with_credentials(credentials.clone());
            subscriptions = subscriptions.with_credentials(credentials.clone());
            base_publisher = base_publisher.with_credentials(credentials.clone());
            subscriber = subscriber.with_credentials(credentials);
        }
        let build = async {
            Ok::<_, google_cloud_gax::client_builder::Error>((
                topics.build().await?,
                subscriptions.build().await?,
                base_publisher.build().await?,
                subscriber.build().await?,
            ))
        };
        let (topics, subscriptions, base_publisher, subscriber) =
            match tokio::time::timeout(config.connect_timeout, build).await {
                Ok(Ok(clients)) => clients,
                Ok(Err(e)) => return Err(builder_error(e, &endpoint)),
                Err(_) => return Err(unreachable(&endpoint, config.connect_timeout, None)),
            };

        let admin = Arc::new(Admin::new(
            &config.project,
            topics,
            subscriptions,
            options.auto_provision,
        ));
        if let Err(e) = admin.probe(config.connect_timeout).await {
            return Err(match e.kind() {
                ErrorKind::Connection | ErrorKind::Timeout => {
                    unreachable(&endpoint, config.connect_timeout, Some(e))
                }
                _ => Error::new(
                    e.kind(),
                    format!("Pub/Sub at {endpoint} refused the connection check"),
                )
                .backend(BACKEND)
                .operation("connect")
                .source(e),
            });
        }
        let publishers = Publishers::start(
            base_publisher,
            Arc::clone(&admin),
            Batching {
                max_messages: config.batch_max_messages,
                max_bytes: config.batch_max_bytes,
                max_delay: config.batch_max_delay,
            },
            config.publish_timeout,
            PendingLimit::new(config.max_pending_messages, config.max_pending_bytes),
        );
        tracing::debug!(%endpoint, project = %config.project, "connected to Pub/Sub");
        Ok(PubSubBackend {
            inner: Arc::new(Inner {
                project: config.project.clone(),
                endpoint,
                emulator: client_options.credentials == CredentialsChoice::Anonymous,
                publishers,
                subscriptions: Arc::new(Subscriptions::new(
                    subscriber,
                    emulator,
                    Arc::clone(&admin),
                    LeaseSettings {
                        max_outstanding_bytes: config.max_outstanding_bytes,
                        ack_deadline: config.ack_deadline,
                        max_lease: config.max_lease,
                    },
                )),
                admin,
                closed: AtomicBool::new(false),
                close_timeout: config.publish_timeout,
            }),
        })
    }

    /// The Google Cloud project this backend works in.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    fn check_open(&self, operation: &'static str) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(closed(operation))
        } else {
            Ok(())
        }
    }
}

fn unreachable(endpoint: &str, timeout: Duration, source: Option<Error>) -> Error {
    let error = Error::new(
        ErrorKind::Connection,
        format!(
            "cannot reach Pub/Sub at {endpoint} within {}",
            humantime::format_duration(timeout)
        ),
    )
    .backend(BACKEND)
    .operation("connect");
    match source {
        Some(source) => error.source(source),
        None => error,
    }
}

impl fmt::Debug for PubSubBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubBackend")
            .field("endpoint", &self.inner.endpoint)
            .field("project", &self.inner.project)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for PubSubBackend {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint.clone()
    }

    fn auto_provision(&self) -> bool {
        self.inner.admin.auto_provision()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            new_group_reads_history: false,
            per_key_order: true,
            members_share_work: true,
            start_from_latest: true,
            survives_restart: !self.inner.emulator,
            delivery_attempt: false,
            partitions: false,
            list_topics: true,
            delete_topic: true,
            max_payload_bytes: Some(MAX_PAYLOAD_BYTES),
        }
    }

    fn send<'a>(&'a self, topic: &'a str, message: Message) -> Completion<'a, Confirmation> {
        if self.inner.closed.load(Ordering::Acquire) {
            return completion::ready(Err(closed("publish")));
        }
        self.inner.publishers.send(topic, message)
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<BoxDeliveryStream> {
        self.check_open("subscribe")?;
        let subscription = group_resource(&request.topic, &request.group);
        self.inner
            .admin
            .ensure_subscription(&request.topic, &subscription)
            .await?;
        self.check_open("subscribe")?;
        let stream = self
            .inner
            .subscriptions
            .subscribe(&request.topic, subscription, request.max_in_flight)
            .await?;
        Ok(Box::new(stream))
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<()> {
        self.check_open("ensure topic")?;
        self.inner.admin.ensure_topic(&spec.name).await?;
        for group in &spec.groups {
            let subscription = group_resource(&spec.name, group);
            self.inner
                .admin
                .ensure_subscription(&spec.name, &subscription)
                .await?;
        }
        self.inner.publishers.mark_provisioned(&spec.name);
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        self.check_open("list topics")?;
        self.inner.admin.list_topics().await
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open("delete topic")?;
        self.inner.publishers.forget(name);
        self.inner.admin.delete_topic(name).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let flushed = self.inner.publishers.close(self.inner.close_timeout).await;
        self.inner
            .subscriptions
            .close(self.inner.close_timeout)
            .await;
        self.inner.admin.forget_all();
        tracing::debug!(endpoint = %self.inner.endpoint, "closed the Pub/Sub backend");
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_configuration_fails_before_any_connection() {
        let config = PubSubConfig {
            endpoint: Some("127.0.0.1:8085".into()),
            ..PubSubConfig::default()
        };
        let err = PubSubBackend::connect(config, ConnectOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("pubsub.endpoint"), "{err}");
    }
}
