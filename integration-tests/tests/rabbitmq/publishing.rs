//! Publishing: unroutable messages, the confirm window, size and frame limits, deleted exchanges.

use std::time::Duration;

use broker_api::{
    Backend, Broker, ConnectOptions, ErrorKind, Message, SubscribeRequest, TopicSpec,
};
use broker_rabbitmq::{RabbitMqBackend, RabbitMqConfig};
use broker_testkit::support::{fresh_topic, next_within, run_case, send_confirmed, unique};
use broker_testkit::Harness;

use crate::support::{
    backend, delete_exchange, delete_queue, queue_exists, rabbitmqctl, RestoreWith,
};
use crate::{exclusive, shared};

/// A publish no group queue would take (a topic without groups) is an error, not a silent drop;
/// the publisher keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_an_error() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("unroutable_publish_is_an_error", async {
        let broker = harness.connect().await.expect("connect");
        let lonely = broker_api::Topic::text(fresh_topic(&broker, "lonely", &[]).await);
        let err = broker
            .publisher(&lonely)
            .publish(&"nobody listens".to_owned())
            .await
            .expect_err("an unroutable publish must fail");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("no group queue is bound"), "{err}");
        // A topic auto-provisioned by the publish itself has no group either.
        let fresh = broker_api::Topic::text(unique("never-declared"));
        let err = broker
            .publisher(&fresh)
            .publish(&"x".to_owned())
            .await
            .expect_err("an unroutable publish must fail");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        // Many in flight, routable and not, on the same connection: each gets its own answer.
        let routed = broker_api::Topic::text(fresh_topic(&broker, "routed", &["g"]).await);
        let mut pending = Vec::new();
        for i in 0..100 {
            let (topic, ok) = if i % 10 == 0 {
                (&lonely, false)
            } else {
                (&routed, true)
            };
            let confirmation = broker
                .publisher(topic)
                .send(&format!("m-{i}"))
                .await
                .expect("send");
            pending.push((ok, confirmation));
        }
        for (ok, confirmation) in pending {
            let outcome = confirmation.await;
            assert_eq!(outcome.is_ok(), ok, "{outcome:?}");
        }
        // A burst of unroutable messages on one channel: RabbitMQ confirms them with multiple
        // acks, and lapin hands their returned messages to the confirms in no set order.
        let mut pending = Vec::new();
        for i in 0..2000 {
            let confirmation = broker
                .publisher(&lonely)
                .send(&format!("lost-{i}"))
                .await
                .expect("send");
            pending.push(confirmation);
        }
        let mut confirmed = 0;
        for confirmation in pending {
            if let Ok(receipt) = confirmation.await {
                confirmed += 1;
                eprintln!("reported published: {}", receipt.message_id);
            }
        }
        assert_eq!(confirmed, 0, "unroutable messages reported published");
        broker.close().await.expect("close");
    })
    .await;
}

/// More messages than the confirm window, all sent before any confirmation is awaited (as
/// `publish_batch` does): the window's slots come back as the broker confirms, so sending
/// never waits for a confirmation nobody polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_confirm_window_before_awaiting_any() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "sends_beyond_the_confirm_window_before_awaiting_any",
        async {
            let config = RabbitMqConfig {
                uri: harness.live.address.clone(),
                confirm_window: 8,
                ..RabbitMqConfig::default()
            };
            let backend = RabbitMqBackend::connect(config, ConnectOptions::default())
                .await
                .expect("connect");
            let broker = Broker::new(backend);
            let topic = broker_api::Topic::text(fresh_topic(&broker, "window", &["g"]).await);
            let values: Vec<String> = (0..200).map(|i| format!("m-{i}")).collect();
            let publisher = broker.publisher(&topic);
            let publishing = publisher.publish_batch(&values);
            let receipts = tokio::time::timeout(Duration::from_secs(30), publishing)
                .await
                .expect("a batch larger than the confirm window must not wait forever")
                .expect("publish batch");
            assert_eq!(receipts.len(), values.len());
            broker.close().await.expect("close");
        },
    )
    .await;
}

/// An exchange deleted behind the publisher's back: the broker closes the confirm channel; the
/// publish fails (NotFound without auto-provisioning, unroutable with it when this process did
/// not declare the group, since its binding went with the exchange), and the channel is
/// reopened for the next publishes. A process that declared the group binds it again, and the
/// publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_exchange_closes_only_its_publish() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("deleted_exchange_closes_only_its_publish", async {
        let provisioning =
            Broker::new(backend(&harness.live.address, true).await.expect("connect"));
        let doomed = fresh_topic(&provisioning, "doomed", &["g"]).await;
        let other = fresh_topic(&provisioning, "other", &["g"]).await;
        for auto_provision in [false, true] {
            let backend = backend(&harness.live.address, auto_provision)
                .await
                .expect("connect");
            send_confirmed(&backend, &doomed, Message::new("first"))
                .await
                .expect("first publish");
            delete_exchange(&harness.live.address, &doomed).await;
            let err = send_confirmed(&backend, &doomed, Message::new("second"))
                .await
                .expect_err("publishing to a deleted exchange");
            let expected = if auto_provision {
                ErrorKind::Rejected
            } else {
                ErrorKind::NotFound
            };
            assert_eq!(err.kind(), expected, "{err}");
            send_confirmed(&backend, &other, Message::new("elsewhere"))
                .await
                .expect("another topic still publishes");
            provisioning
                .ensure_topic(&TopicSpec::new(&doomed).group("g"))
                .await
                .expect("re-create");
            if !auto_provision {
                // The strict backend forgot the exchange and checks it again.
                send_confirmed(&backend, &doomed, Message::new("third"))
                    .await
                    .expect("publishing after it was re-created");
            }
            backend.close().await.expect("close");
        }
        provisioning.close().await.expect("close");

        let declaring = backend(&harness.live.address, true).await.expect("connect");
        let restored = unique("restored");
        declaring
            .ensure_topic(&TopicSpec::new(&restored).group("g"))
            .await
            .expect("declare");
        send_confirmed(&declaring, &restored, Message::new("first"))
            .await
            .expect("first publish");
        delete_exchange(&harness.live.address, &restored).await;
        send_confirmed(&declaring, &restored, Message::new("second"))
            .await
            .expect("published again once the exchange and its binding were declared again");
        let mut stream = declaring
            .subscribe(SubscribeRequest::new(&restored, "g"))
            .await
            .expect("subscribe");
        for expected in ["first", "second"] {
            let delivery = next_within(&mut stream, harness.patience()).await;
            assert_eq!(&delivery.payload[..], expected.as_bytes());
            delivery.ack().await.expect("ack");
        }
        stream.close().await.expect("close the stream");
        // Deleted with its queue by someone else: the queue is not created again, and the
        // publish, which no queue takes, fails.
        delete_exchange(&harness.live.address, &restored).await;
        delete_queue(&harness.live.address, &format!("{restored}.g")).await;
        let err = send_confirmed(&declaring, &restored, Message::new("third"))
            .await
            .expect_err("no queue takes it");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(
            !queue_exists(&harness.live.address, &format!("{restored}.g")).await,
            "the deleted group queue was created again"
        );
        declaring.delete_topic(&restored).await.expect("delete");
        declaring.close().await.expect("close");
    })
    .await;
}

/// A broker whose `max_message_size` is below the client's limit closes the confirm channel of
/// a larger publish: that publish fails as `Rejected`, the channel is reopened, and the topic
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_size_limit_fails_only_that_publish() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("broker_size_limit_fails_only_that_publish", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "sizes", &["g"]).await;
        // New channels read the limit when they open; the topic's channel opens below.
        rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 1048576).",
        ])
        .await;
        let limit = RestoreWith(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 134217728).",
        ]);
        let outcome = async {
            let backend = broker.backend();
            let big = backend
                .send(&name, Message::new(vec![1u8; 2 * 1024 * 1024]))
                .await
                .expect("handed over")
                .await;
            let small = backend
                .send(&name, Message::new("small"))
                .await
                .expect("handed over")
                .await;
            (big, small)
        }
        .await;
        drop(limit);
        let (big, small) = outcome;
        let err = big.expect_err("the broker refuses 2 MiB over its 1 MiB limit");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(
            err.to_string().contains("larger than the broker accepts"),
            "{err}"
        );
        small.expect("the next publish goes through on a new channel");
        broker.close().await.expect("close");
    })
    .await;
}

/// Properties go in one frame of at most `frame_max` bytes: a message whose headers would
/// overflow it is refused before it is sent (RabbitMQ would close the whole connection with a
/// FRAME_ERROR, and every publish again would close the next one), and one that just fits is
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_larger_than_a_frame_are_refused_before_sending() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("headers_larger_than_a_frame", async {
        let broker = harness.connect().await.expect("connect");
        let name = fresh_topic(&broker, "bigheaders", &["g"]).await;
        // RabbitMQ's default frame_max, which scripts/brokers.sh keeps.
        const FRAME_MAX: usize = 131_072;
        // The frame of a message with id `id-1` and one header `big` holds 49 bytes besides
        // the header's value: frame (8), content header (14), delivery mode and timestamp (9),
        // the id (1 + 4), the table's length (4), the name (1 + 3), the value's type and
        // length (1 + 4).
        let with_header = |size: usize| {
            Message::new("x")
                .with_id("id-1")
                .with_header("big", "v".repeat(size))
        };
        let backend = broker.backend();
        let fits = send_confirmed(backend.as_ref(), &name, with_header(FRAME_MAX - 49)).await;
        fits.expect("properties that fill the frame exactly are published");
        // One byte more is past the protocol's limit (RabbitMQ lets 8 more through); 20 000
        // more made RabbitMQ close the connection, again at every publish after reconnecting,
        // for the whole retry_timeout.
        for over in [1, 20_000] {
            let err = send_confirmed(backend.as_ref(), &name, with_header(FRAME_MAX - 49 + over))
                .await
                .expect_err("properties over a frame");
            assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
            assert!(err.to_string().contains("frame_max"), "{err}");
        }
        send_confirmed(backend.as_ref(), &name, Message::new("small"))
            .await
            .expect("the connection is still up");
        broker.close().await.expect("close");
    })
    .await;
}
