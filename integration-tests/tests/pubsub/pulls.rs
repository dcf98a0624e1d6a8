//! Streaming pulls: push delivery, resubscribing, members in separate backends, ended pulls.

use std::time::{Duration, Instant};

use broker_api::{Backend, ErrorKind, Message, SubscribeRequest, TopicSpec};
use broker_testkit::support::{next_within, run_case, send_confirmed, unique};
use broker_testkit::Harness;
use futures::StreamExt;

use crate::shared;
use crate::support::{backend, subscription_admin, PROJECT};

/// How long the keyed messages of a resubscribed group may take at most: well under the ack
/// deadline (60 s), after which messages stuck with a closed streaming pull come again, and
/// well above what a loaded emulator takes.
const STALL_BOUND: Duration = Duration::from_secs(30);

/// A subscription left in push delivery by another backend's reclaim of the emulator's
/// streaming pulls that never finished (the process died within its 150 ms window): the
/// emulator refuses streaming pulls on it with FAILED_PRECONDITION, so the subscriber switches
/// it back to pull delivery, and the message waiting in it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_left_in_push_delivery_is_pulled_again() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("subscription_left_in_push_delivery", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("pushed");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        // What a reclaim sets for its window: pushes to the discard port, which fail.
        subscription_admin(&harness.live.address)
            .await
            .modify_push_config()
            .set_subscription(format!("projects/{PROJECT}/subscriptions/{topic}.g"))
            .set_push_config(
                broker_pubsub::google_cloud_pubsub::model::PushConfig::new()
                    .set_push_endpoint("http://127.0.0.1:9/"),
            )
            .send()
            .await
            .expect("switch the subscription to push delivery");
        send_confirmed(&backend, &topic, Message::new("waiting"))
            .await
            .expect("published");
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let delivery = next_within(&mut stream, harness.patience()).await;
        assert_eq!(&delivery.payload[..], b"waiting");
        delivery.ack().await.unwrap();
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Closing a subscription and subscribing again in the same group, with keyed messages, loses
/// nothing and delays nothing (the emulator would otherwise keep routing keys to the closed
/// streaming pull).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_with_keys_delivers_at_once() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("resubscribing_with_keys", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("rekey");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        for _ in 0..3 {
            let mut stream = backend
                .subscribe(SubscribeRequest::new(&topic, "g"))
                .await
                .unwrap();
            stream.close().await.unwrap();
        }
        let mut stream = backend
            .subscribe(SubscribeRequest::new(&topic, "g").max_in_flight(64))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..40 {
            let message = Message::new(format!("k-{i}")).with_key(format!("key-{}", i % 10));
            confirmations.push(backend.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let started = Instant::now();
        let mut got = std::collections::BTreeSet::new();
        while got.len() < 40 {
            let delivery = next_within(&mut stream, STALL_BOUND).await;
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        assert!(started.elapsed() < STALL_BOUND, "{:?}", started.elapsed());
        stream.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Two subscriptions of one group on one backend, then one closes: every keyed message
/// published afterwards reaches the subscription still open at once, none waits with the
/// closed one's streaming pull (kept open, idle, on the emulator) until the group is
/// subscribed to again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_closed_member_reach_the_member_still_open() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("keys_of_a_closed_member", async {
        let backend = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("handover");
        backend
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut staying = backend
            .subscribe(SubscribeRequest::new(&topic, "g").max_in_flight(64))
            .await
            .unwrap();
        let mut leaving = backend
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        leaving.close().await.unwrap();
        let mut confirmations = Vec::new();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..200 {
            let message = Message::new(format!("h-{i}")).with_key(format!("key-{}", i % 50));
            confirmations.push(backend.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let mut got = std::collections::BTreeSet::new();
        while got.len() < 200 {
            let delivery = next_within(&mut staying, STALL_BOUND).await;
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        staying.close().await.unwrap();
        backend.delete_topic(&topic).await.unwrap();
        backend.close().await.unwrap();
    })
    .await;
}

/// Two backends (two processes, say) in one group: the second one joining does not stop the
/// first, and together they receive everything; a third backend subscribing after both
/// closed still gets new messages at once (the emulator's abandoned streaming pulls of the
/// closed backends are reclaimed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_in_separate_backends_share_a_group() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("members_in_separate_backends", async {
        let first = backend(&harness.live.address, true).await.unwrap();
        let second = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("members");
        first
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut a = first
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut b = second
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..40 {
            let message = Message::new(format!("m-{i}")).with_key(format!("key-{}", i % 8));
            confirmations.push(first.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let mut got = std::collections::BTreeSet::new();
        let deadline = Instant::now() + harness.patience();
        while got.len() < 40 {
            assert!(Instant::now() < deadline, "got {} of 40", got.len());
            let next = tokio::select! {
                next = a.next() => next,
                next = b.next() => next,
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let delivery = next.expect("open").expect("a delivery");
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
        first.close().await.unwrap();
        second.close().await.unwrap();

        let third = backend(&harness.live.address, true).await.unwrap();
        let mut c = third
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..20 {
            let message = Message::new(format!("n-{i}")).with_key(format!("key-{i}"));
            confirmations.push(third.send(&topic, message).await.unwrap());
        }
        futures::future::try_join_all(confirmations).await.unwrap();
        let started = Instant::now();
        for _ in 0..20 {
            let delivery = next_within(&mut c, STALL_BOUND).await;
            delivery.ack().await.unwrap();
        }
        assert!(started.elapsed() < STALL_BOUND, "{:?}", started.elapsed());
        c.close().await.unwrap();
        third.delete_topic(&topic).await.unwrap();
        third.close().await.unwrap();
    })
    .await;
}

/// A delivery whose streaming pull ended (here: another backend joining the group makes the
/// emulator end it, and this backend reopens it) is no longer live — its acknowledgement would
/// be dropped — and its message is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_of_an_ended_pull_is_no_longer_live() {
    let Some(harness) = shared().await else {
        return;
    };
    run_case("ended_pull_not_live", async {
        let first = backend(&harness.live.address, true).await.unwrap();
        let topic = unique("live");
        first
            .ensure_topic(&TopicSpec::new(&topic).group("g"))
            .await
            .unwrap();
        let mut a = first
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        send_confirmed(&first, &topic, Message::new("held"))
            .await
            .unwrap();
        let held = next_within(&mut a, harness.patience()).await;
        assert!(held.is_live());
        // Its first pull of a subscription it did not create ends the emulator's other pulls.
        let second = backend(&harness.live.address, true).await.unwrap();
        let mut b = second
            .subscribe(SubscribeRequest::new(&topic, "g"))
            .await
            .unwrap();
        let deadline = Instant::now() + harness.patience();
        while held.is_live() {
            assert!(Instant::now() < deadline, "the delivery stayed live");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = tokio::time::timeout(harness.patience(), async {
            tokio::select! {
                next = a.next() => next,
                next = b.next() => next,
            }
        })
        .await
        .expect("delivered again in time")
        .expect("open")
        .expect("a delivery");
        assert_eq!(&again.payload[..], b"held");
        again.ack().await.unwrap();
        let refused = held
            .ack()
            .await
            .expect_err("the ack of an ended pull is dropped");
        assert_eq!(refused.kind(), ErrorKind::Connection, "{refused}");
        a.close().await.unwrap();
        b.close().await.unwrap();
        second.close().await.unwrap();
        first.delete_topic(&topic).await.unwrap();
        first.close().await.unwrap();
    })
    .await;
}
