//! Topology: missing topics and groups; topics, queues, exchanges deleted behind a backend's back.

use std::time::{Duration, Instant};

use broker_api::{Backend, Broker, ErrorKind, SubscribeRequest, TopicSpec};
use broker_rabbitmq::RabbitMqConfig;
use broker_testkit::support::{fresh_topic, next_within, run_case, unique, Inbox};
use broker_testkit::Harness;
use futures::StreamExt;

use crate::support::{backend, delete_exchange, delete_queue, queue_exists};
use crate::{shared, RabbitMq};

/// A subscription whose topic this backend deletes ends, instead of declaring the group's
/// queue again (which would bring the topic back, empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_its_subscriptions() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("deleting_a_topic_ends_its_subscriptions", async {
        let backend = backend(&harness.live.address, true).await.expect("connect");
        let topic = unique("deleted-under");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .expect("declare");
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .expect("subscribe");
        backend.delete_topic(&topic).await.expect("delete");
        let ended = tokio::time::timeout(harness.patience(), stream.next())
            .await
            .expect("the stream ends when its topic is deleted");
        assert!(ended.is_none(), "the stream ends");
        assert!(
            !queue_exists(&harness.live.address, &format!("{topic}.g")).await,
            "the group's queue was declared again"
        );
        backend.close().await.expect("close");
    })
    .await;
}

/// With auto-provisioning off, subscribing a group that was never declared on an existing
/// topic is `NotFound`, and its queue is not declared behind the user's back. (A missing topic
/// is the conformance suite's `missing_topic_is_not_found`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_group_is_not_found_without_auto_provisioning() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("missing_group_is_not_found", async {
        let provisioning =
            Broker::new(backend(&harness.live.address, true).await.expect("connect"));
        let existing = fresh_topic(&provisioning, "existing", &["g"]).await;
        let strict = backend(&harness.live.address, false)
            .await
            .expect("connect");

        let Err(err) = strict
            .subscribe(SubscribeRequest::new(&existing, "undeclared"))
            .await
        else {
            panic!("subscribing a missing group must fail");
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            !queue_exists(&harness.live.address, &format!("{existing}.undeclared")).await,
            "the undeclared group's queue was declared"
        );

        strict.close().await.expect("close");
        provisioning.close().await.expect("close");
    })
    .await;
}

/// A topic deleted with its queue behind a running subscription's back (while its handler
/// ran), then its exchange declared again by a publish: the subscription consumes on,
/// declaring its queue again, instead of ending as if this backend had deleted the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_outlives_its_topic_deleted_behind_its_back() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case(
        "subscription_outlives_its_topic_deleted_behind_its_back",
        async {
            let broker = Broker::new(backend(&harness.live.address, true).await.expect("connect"));
            let name = fresh_topic(&broker, "behind", &["g"]).await;
            let topic = broker_api::Topic::text(name.as_str());
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let started = std::sync::Arc::new(tokio::sync::Notify::new());
            let inbox = Inbox::new();
            let handler = {
                let (gate, started, inbox) = (gate.clone(), started.clone(), inbox.clone());
                move |message: broker_api::Received<String>| {
                    let (gate, started, inbox) = (gate.clone(), started.clone(), inbox.clone());
                    async move {
                        if message.value == "first" {
                            started.notify_one();
                            drop(gate.acquire().await);
                        }
                        inbox.push(message);
                        Ok(())
                    }
                }
            };
            let running = broker
                .subscriber(&topic, "g")
                .at_least_once(handler)
                .await
                .expect("subscribe");
            let publisher = broker.publisher(&topic);
            publisher
                .publish(&"first".to_owned())
                .await
                .expect("publish");
            tokio::time::timeout(harness.patience(), started.notified())
                .await
                .expect("the handler started");
            delete_queue(&harness.live.address, &format!("{name}.g")).await;
            delete_exchange(&harness.live.address, &name).await;
            // Declares the exchange again; no queue takes the message.
            let _ = publisher.publish(&"lost".to_owned()).await;
            gate.add_permits(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!running.is_finished(), "the subscription ended");
            let deadline = Instant::now() + harness.patience();
            while publisher.publish(&"after".to_owned()).await.is_err() {
                assert!(Instant::now() < deadline, "no queue took a publish again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            inbox
                .wait_until(
                    "the message published after",
                    harness.patience(),
                    |received| received.iter().any(|m| m.value == "after"),
                )
                .await;
            running.close().await.expect("close");
            broker.close().await.expect("close broker");
        },
    )
    .await;
}

/// A topic's exchange and one group's queue deleted behind the back of that group's running
/// subscription: the subscription declares both again, also when the exchange goes between
/// its declaration and the binding (a race once ended the subscription as `NotFound`), and
/// the topic's other groups are bound again too, so they get what is published from then on
/// (a publish finds the exchange, and nothing tells the publisher it was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_groups_are_bound_again_when_a_subscription_restores_the_exchange() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("other_groups_are_bound_again", async {
        for exchange_first in [true, false] {
            restored_exchange_binds_every_group(&harness, exchange_first).await;
        }
    })
    .await;
}

async fn restored_exchange_binds_every_group(harness: &RabbitMq, exchange_first: bool) {
    let broker = Broker::new(backend(&harness.live.address, true).await.expect("connect"));
    let name = fresh_topic(&broker, "rebound", &["g1", "g2"]).await;
    let topic = broker_api::Topic::text(name.as_str());
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "g1")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let queue = format!("{name}.g1");
    if exchange_first {
        delete_exchange(&harness.live.address, &name).await;
        delete_queue(&harness.live.address, &queue).await;
    } else {
        delete_queue(&harness.live.address, &queue).await;
        delete_exchange(&harness.live.address, &name).await;
    }
    let deadline = Instant::now() + harness.patience();
    while !queue_exists(&harness.live.address, &queue).await {
        assert!(
            Instant::now() < deadline,
            "g1's queue was not declared again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publisher = broker.publisher(&topic);
    let publish_bound = RabbitMqConfig::default().publish_timeout + Duration::from_secs(30);
    let deadline = Instant::now() + harness.patience();
    loop {
        // Failures are expected while g1 recovers; a publish that outlives its own timeout
        // is not.
        let probe = "probe".to_owned();
        let _ = tokio::time::timeout(publish_bound, publisher.publish(&probe))
            .await
            .expect("a publish outlived its publish timeout");
        if !inbox.is_empty() {
            break;
        }
        assert!(
            !running.is_finished() && Instant::now() < deadline,
            "g1 did not read again (exchange deleted first: {exchange_first})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher
        .publish(&"after".to_owned())
        .await
        .expect("publish");
    let mut g2 = broker
        .backend()
        .subscribe(SubscribeRequest::new(name.as_str(), "g2"))
        .await
        .expect("subscribe g2");
    let mut seen = Vec::new();
    while !seen.iter().any(|payload| payload == "after") {
        let delivery = next_within(&mut g2, harness.patience()).await;
        seen.push(String::from_utf8_lossy(&delivery.payload).into_owned());
        delivery.ack().await.expect("ack");
    }
    g2.close().await.expect("close g2");
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Queues are named `<topic>.<group>`, so `X.a`/`b` and `X`/`a.b` would share one: the second
/// pair is refused, by subscribing or declaring, instead of binding the queue to both topics.
/// (Only within one process: AMQP cannot list a queue's bindings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_and_group_colliding_with_another_pair_are_refused() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("colliding_queue_names", async {
        let backend = backend(&harness.live.address, true).await.expect("connect");
        let base = unique("collide");
        let dotted = format!("{base}.a");
        let mut first = backend
            .subscribe(SubscribeRequest::new(&dotted, "b"))
            .await
            .expect("subscribe");
        let subscribed = backend
            .subscribe(SubscribeRequest::new(&base, "a.b"))
            .await
            .err()
            .expect("the queue holds a group of another topic");
        let declared = backend
            .ensure_topic(&TopicSpec::new(&base).group("a.b"))
            .await
            .expect_err("the queue holds a group of another topic");
        for err in [subscribed, declared] {
            assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("holds a group of topic {dotted}")),
                "{text}"
            );
        }
        first.close().await.expect("close the stream");
        backend.delete_topic(&dotted).await.expect("delete");
        backend.close().await.expect("close");
    })
    .await;
}
