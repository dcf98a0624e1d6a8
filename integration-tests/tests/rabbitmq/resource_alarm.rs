//! Resource alarms: held publishes time out or fail at close, subscriptions keep acking.

use std::time::{Duration, Instant};

use broker_api::{Broker, ErrorKind};
use broker_testkit::support::{fresh_topic, run_case, Inbox};
use broker_testkit::Harness;

use crate::exclusive;
use crate::support::{backend_with, close_all_connections, rabbitmqctl, RestoreWith};

/// During a resource alarm RabbitMQ stops reading publishes, so their confirms do not come:
/// the confirm window fills and the next send waits for a slot; closing the backend fails them
/// all after `close_timeout` (`Closed`: they may or may not be stored) instead of leaving their
/// callers waiting for ever. The broker takes publishes again after the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_resource_alarm_fails_unconfirmed_publishes() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("close_during_a_resource_alarm", async {
        let backend = backend_with(&harness.live.address, true, |config| {
            config.confirm_window = 2;
            config.close_timeout = Duration::from_secs(1);
            config.retry_timeout = Duration::from_secs(2);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let name = fresh_topic(&broker, "alarm", &["g"]).await;
        let topic = broker_api::Topic::text(name.as_str());
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let doomed = fresh_topic(&broker, "alarm-doomed", &["g"]).await;
        broker
            .publisher(&broker_api::Topic::text(doomed.as_str()))
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let alarm = memory_alarm().await;
        let outcome = async {
            let mut in_window = Vec::new();
            for value in ["one", "two"] {
                let sent = publisher.send(&value.to_owned()).await;
                in_window.push(sent.expect("handed over: there is room in the window"));
            }
            let mut third = Box::pin(publisher.send(&"three".to_owned()));
            let third_at_once = tokio::time::timeout(Duration::from_millis(500), &mut third)
                .await
                .ok();
            let waits_for_a_slot = third_at_once.is_none();
            let held = tokio::time::timeout(Duration::from_millis(100), &mut in_window[0])
                .await
                .is_err();
            // Deleting a topic: the deletion goes on the consuming connection, which the
            // alarm does not block; closing the topic's confirm channel on the publishing
            // connection gets no answer and is left to the connection after 5 s.
            let deleting = Instant::now();
            let deleted = tokio::time::timeout(
                Duration::from_secs(20),
                broker.backend().delete_topic(&doomed),
            )
            .await
            .map(|outcome| (outcome, deleting.elapsed()));
            // A first close given up by its caller: the next one still closes.
            let given_up = tokio::time::timeout(Duration::from_millis(200), broker.close()).await;
            assert!(given_up.is_err(), "the first close waits for the confirms");
            let started = Instant::now();
            let closing = tokio::time::timeout(Duration::from_secs(10), broker.close());
            let (closed, third) = match third_at_once {
                Some(sent) => (closing.await, Ok(sent)),
                None => tokio::join!(
                    closing,
                    tokio::time::timeout(Duration::from_secs(10), third)
                ),
            };
            let mut settled = Vec::new();
            for confirmation in in_window {
                settled.push(tokio::time::timeout(Duration::from_secs(5), confirmation).await);
            }
            (
                waits_for_a_slot,
                held,
                deleted,
                closed,
                third,
                settled,
                started.elapsed(),
            )
        }
        .await;
        drop(alarm);
        let (waits_for_a_slot, held, deleted, closed, third, settled, took) = outcome;
        let (deleted, took_to_delete) = deleted.expect("deleting a topic during the alarm returns");
        deleted.expect("the topic is deleted during the alarm");
        assert!(
            took_to_delete < Duration::from_secs(12),
            "deleting took {took_to_delete:?}"
        );
        assert!(
            held,
            "the alarm did not hold the publish: the case tests nothing"
        );
        assert!(
            waits_for_a_slot,
            "a third send was handed over with a window of two unconfirmed"
        );
        closed
            .expect("close returns within 10 s")
            .expect("close succeeds");
        let err = third
            .expect("the send waiting for a slot ends when the backend closes")
            .expect_err("no slot freed up");
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        for confirmation in settled {
            let err = confirmation
                .expect("an unconfirmed publish is settled when the backend closes")
                .expect_err("a publish RabbitMQ never confirmed is not reported published");
            assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
            assert!(err.to_string().contains("may or may not"), "{err}");
        }
        assert!(took < Duration::from_secs(8), "close took {took:?}");
        // The broker takes publishes again once the alarm is over.
        let after = harness.connect().await.expect("connect after the alarm");
        after
            .publisher(&topic)
            .publish(&"after".to_owned())
            .await
            .expect("published after the alarm");
        after.close().await.expect("close");
    })
    .await;
}

/// During a resource alarm RabbitMQ holds confirms back: a publish unconfirmed after
/// `publish_timeout` fails with `Timeout` (it may or may not have been stored), and so does a
/// send that waits that long for a window slot (the publishes given up keep theirs until
/// RabbitMQ answers); the backend publishes again once the alarm is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_held_by_a_resource_alarm_time_out() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("publishes_held_by_a_resource_alarm_time_out", async {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let backend = backend_with(&harness.live.address, true, |config| {
            config.confirm_window = 2;
            config.publish_timeout = TIMEOUT;
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let name = fresh_topic(&broker, "alarm-timeout", &["g"]).await;
        let topic = broker_api::Topic::text(name.as_str());
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let alarm = memory_alarm().await;
        let sent_at = Instant::now();
        let mut in_window = Vec::new();
        for value in ["one", "two"] {
            let sent = publisher.send(&value.to_owned()).await;
            in_window.push(sent.expect("handed over: there is room in the window"));
        }
        // No room: the two hold their slots until RabbitMQ answers, so the send waits for one
        // and gives up after the same timeout.
        let third = async {
            match publisher.send(&"three".to_owned()).await {
                Ok(confirmation) => confirmation.await.map(drop),
                Err(e) => Err(e),
            }
        };
        let third = tokio::time::timeout(TIMEOUT * 4, third);
        let mut waited = Vec::new();
        for confirmation in in_window {
            let outcome = tokio::time::timeout(TIMEOUT * 4, confirmation).await;
            waited.push((outcome, sent_at.elapsed()));
        }
        let third = third.await;
        drop(alarm);
        for (outcome, after) in waited {
            let err = outcome
                .expect("settled within four publish timeouts")
                .expect_err("a publish RabbitMQ did not confirm is not reported published");
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(err.to_string().contains("may or may not"), "{err}");
            assert!(
                after >= TIMEOUT - Duration::from_millis(100),
                "failed after {after:?}, before the publish timeout"
            );
        }
        let err = third
            .expect("the third send ends within four publish timeouts")
            .expect_err("nothing was confirmed during the alarm");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("was not sent"), "{err}");
        publisher
            .publish(&"after".to_owned())
            .await
            .expect("the same backend publishes again after the alarm");
        broker.close().await.expect("close");
    })
    .await;
}

/// A publish its caller was told timed out is not published again when its connection drops:
/// the caller may have sent it again by then, and a copy stored behind its back would be a
/// needless duplicate. (RabbitMQ reads nothing from a blocked connection, so the frames of the
/// publish held by the alarm are lost with the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_timed_out_is_not_published_again_after_a_reconnect() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("timed_out_not_published_again", async {
        let backend = backend_with(&harness.live.address, true, |config| {
            config.publish_timeout = Duration::from_secs(2);
            config.retry_timeout = Duration::from_secs(30);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let topic = broker_api::Topic::text(fresh_topic(&broker, "alarm-again", &["g"]).await);
        let publisher = broker.publisher(&topic);
        publisher
            .publish(&"before".to_owned())
            .await
            .expect("published before the alarm");
        let alarm = memory_alarm().await;
        let held = publisher
            .send(&"held".to_owned())
            .await
            .expect("handed over");
        let err = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("answered after the publish timeout")
            .expect_err("RabbitMQ confirms nothing during the alarm");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        close_all_connections().await;
        drop(alarm);
        publisher
            .publish(&"after".to_owned())
            .await
            .expect("published after the alarm");

        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe");
        inbox.wait_for(2, harness.patience()).await;
        // Time for a copy published again after the reconnect to come in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let values: Vec<String> = inbox.snapshot().into_iter().map(|r| r.value).collect();
        assert_eq!(
            values,
            ["before", "after"],
            "the given-up publish came back"
        );
        running.close().await.expect("close the subscription");
        broker.close().await.expect("close");
    })
    .await;
}

/// RabbitMQ blocks a connection that publishes during a resource alarm and reads nothing
/// more from it, acknowledgements included. Subscriptions consume on a connection of their
/// own: a service that publishes during an alarm (a dead letter is enough) still drains its
/// queues, whose backlog may be what raised the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_ack_while_publishing_is_blocked() {
    let Some(harness) = exclusive().await else {
        return;
    };
    run_case("subscriptions_ack_while_publishing_is_blocked", async {
        // One message at a time: the next is sent only once the previous one's ack was read.
        let backend = backend_with(&harness.live.address, true, |config| {
            config.prefetch = Some(1);
        });
        let broker = Broker::new(backend.await.expect("connect"));
        let topic = broker_api::Topic::text(fresh_topic(&broker, "alarm-drain", &["g"]).await);
        for i in 0..5 {
            broker
                .publisher(&topic)
                .publish(&format!("m-{i}"))
                .await
                .expect("published before the alarm");
        }
        let other = broker_api::Topic::text(fresh_topic(&broker, "alarm-held", &["g"]).await);
        let alarm = memory_alarm().await;
        let held = broker
            .publisher(&other)
            .send(&"during the alarm".to_owned())
            .await
            .expect("handed over");
        let inbox = Inbox::new();
        let running = broker
            .subscriber(&topic, "g")
            .at_least_once(inbox.handler())
            .await
            .expect("subscribe during the alarm");
        inbox.wait_for(5, Duration::from_secs(15)).await;
        let unconfirmed = tokio::time::timeout(Duration::from_millis(200), held).await;
        drop(alarm);
        assert!(
            unconfirmed.is_err(),
            "the publish was confirmed during the alarm: the case tests nothing"
        );
        running.close().await.expect("close the subscription");
        broker.close().await.expect("close");
    })
    .await;
}

/// Sets off RabbitMQ's memory alarm until the returned guard is dropped: a watermark of 0
/// raises it at once, and RabbitMQ blocks every publishing connection.
async fn memory_alarm() -> RestoreWith {
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]).await;
    RestoreWith(&["set_vm_memory_high_watermark", "0.4"])
}
