//! Groups: every group gets everything, members share, keys keep their order, where a new group
//! starts.

use std::collections::HashMap;
use std::time::Duration;

use broker_api::{HandlerResult, Publisher, Received, StartFrom};

use super::{connect, distinct_values, publish_texts, sorted, text_topic};
use crate::support::{fresh_topic, fresh_topic_with, skip, Inbox};
use crate::Harness;

/// Two groups on one topic each receive every message.
pub async fn every_group_gets_every_message(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "groups", &["billing", "audit"]).await);
    let sent = publish_texts(&broker.publisher(&topic), "m", 50).await;
    let billing = Inbox::new();
    let audit = Inbox::new();
    let a = broker
        .subscriber(&topic, "billing")
        .at_least_once(billing.handler())
        .await
        .expect("subscribe billing");
    let b = broker
        .subscriber(&topic, "audit")
        .at_least_once(audit.handler())
        .await
        .expect("subscribe audit");
    for (group, inbox) in [("billing", &billing), ("audit", &audit)] {
        let received = inbox
            .wait_until(&format!("all 50 in {group}"), harness.patience(), |r| {
                distinct_values(r).len() >= 50
            })
            .await;
        assert_eq!(
            distinct_values(&received),
            sorted(sent.clone()),
            "group {group}"
        );
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Two members of one group together receive every message; where the broker lets members
/// work at once, both get some.
pub async fn group_members_share_work(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic_with(&broker, "share", &["workers"], Some(4)).await);
    let first = Inbox::new();
    let second = Inbox::new();
    let slow = |inbox: Inbox<String>| {
        move |message: Received<String>| {
            let inbox = inbox.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                inbox.push(message);
                Ok(())
            }
        }
    };
    let a = broker
        .subscriber(&topic, "workers")
        .max_in_flight(8)
        .at_least_once(slow(first.clone()))
        .await
        .expect("subscribe first member");
    let b = broker
        .subscriber(&topic, "workers")
        .max_in_flight(8)
        .at_least_once(slow(second.clone()))
        .await
        .expect("subscribe second member");
    // Give a rebalancing broker time to assign both members before the messages flow.
    tokio::time::sleep(harness.quiet_period()).await;
    let publisher = &broker.publisher(&topic);
    let publish = move |i: usize| {
        let value = format!("w-{i}");
        let message = publisher
            .message(&value)
            .expect("encode")
            .with_key(format!("key-{}", i % 20));
        async move {
            publisher.publish_message(message).await.expect("publish");
            value
        }
    };
    let mut sent = Vec::new();
    for i in 0..200 {
        sent.push(publish(i).await);
    }
    let shares = broker.capabilities().members_share_work;
    let deadline = tokio::time::Instant::now() + harness.patience();
    // A broker that assigns the second member late (a Kafka rebalance) may hand the first 200
    // to one member: while one has none, publish more, until the patience runs out.
    while shares && (first.is_empty() || second.is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "work was not shared: {} and {}",
            first.len(),
            second.len()
        );
        sent.push(publish(sent.len()).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let union = loop {
        let mut union = first.snapshot();
        union.extend(second.snapshot());
        if distinct_values(&union).len() >= sent.len() {
            break union;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members received {} + {} of {}",
            first.len(),
            second.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(distinct_values(&union), sorted(sent));
    if !shares {
        skip(
            "group_members_share_work",
            "members do not work at once on this backend (checked: nothing lost)",
        );
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// Messages with the same key are handled in publish order, even with concurrent handlers.
pub async fn per_key_order(harness: &dyn Harness) {
    keys_in_order(harness, "per_key_order", 1).await;
}

/// Two members of one group, each with concurrent handlers: messages with the same key are
/// still handled in publish order across the group, wherever the broker sends each key.
pub async fn per_key_order_across_members(harness: &dyn Harness) {
    keys_in_order(harness, "per_key_order_across_members", 2).await;
}

/// Keyed messages handled by a group of `members` members, each running four handlers at once
/// with uneven handling times: every key's messages are handled in publish order.
async fn keys_in_order(harness: &dyn Harness, case: &str, members: usize) {
    const KEYS: usize = 6;
    const EACH: usize = 30;
    let broker = connect(harness).await;
    if !broker.capabilities().per_key_order {
        skip(case, "the backend does not promise per-key order");
        return;
    }
    let topic = text_topic(&fresh_topic_with(&broker, "order", &["g"], Some(4)).await);
    let publisher = broker.publisher(&topic);
    // One member reads a backlog. Several subscribe first, so that a rebalancing broker has
    // assigned each of them before the messages flow.
    if members == 1 {
        publish_keyed(&publisher, KEYS, EACH).await;
    }
    let inbox = Inbox::new();
    let mut running = Vec::new();
    for _ in 0..members {
        let inbox = inbox.clone();
        let member = broker
            .subscriber(&topic, "g")
            .concurrency(4)
            .max_in_flight(32)
            .at_least_once(move |message| record_after_uneven_delay(inbox.clone(), message))
            .await
            .expect("subscribe");
        running.push(member);
    }
    if members > 1 {
        tokio::time::sleep(harness.quiet_period()).await;
        publish_keyed(&publisher, KEYS, EACH).await;
    }
    let received = inbox
        .wait_until("every keyed message", harness.patience(), |r| {
            distinct_values(r).len() >= KEYS * EACH
        })
        .await;
    assert_keys_in_order(&received, KEYS, EACH);
    for member in running {
        member.close().await.expect("close");
    }
    broker.close().await.expect("close broker");
}

/// Records `message` after a delay that depends on its value: uneven handling times would
/// reorder messages if keys were not serialized.
async fn record_after_uneven_delay(
    inbox: Inbox<String>,
    message: Received<String>,
) -> HandlerResult {
    tokio::time::sleep(rand_delay(&message.value)).await;
    inbox.push(message);
    Ok(())
}

/// Publishes `"<k>:<i>"` with key `key-<k>` for every `i < each` and `k < keys`, keys
/// interleaved, and waits for every confirmation.
async fn publish_keyed(publisher: &Publisher<String>, keys: usize, each: usize) {
    let mut confirmations = Vec::new();
    for i in 0..each {
        for k in 0..keys {
            let message = publisher
                .message(&format!("{k}:{i}"))
                .expect("encode")
                .with_key(format!("key-{k}"));
            confirmations.push(publisher.send_message(message).await.expect("send"));
        }
    }
    futures::future::try_join_all(confirmations)
        .await
        .expect("confirm");
}

/// Checks, in handling order, that every key's messages (`"<k>:<i>"`, see [`publish_keyed`])
/// were handled in publish order and all of them were. Redelivery may repeat a message, never
/// go past one that was not handled yet.
fn assert_keys_in_order(received: &[Received<String>], keys: usize, each: usize) {
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for message in received {
        let (key, seq) = message.value.split_once(':').expect("k:i");
        assert_eq!(
            message.metadata.key.as_deref(),
            Some(format!("key-{key}").as_str())
        );
        per_key
            .entry(key.to_owned())
            .or_default()
            .push(seq.parse().expect("seq"));
    }
    assert_eq!(per_key.len(), keys, "keys handled: {:?}", per_key.keys());
    for (key, seqs) in per_key {
        let mut expected = 0;
        for seq in &seqs {
            assert!(
                *seq <= expected,
                "key {key}: got {seq} while {expected} was not handled yet: {seqs:?}"
            );
            if *seq == expected {
                expected += 1;
            }
        }
        assert_eq!(expected, each, "key {key} incomplete: {seqs:?}");
    }
}

fn rand_delay(value: &str) -> Duration {
    let spread = value
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    Duration::from_millis(spread % 4)
}

/// A group created after messages were published still reads them: a new group starts from
/// the earliest message by default.
pub async fn new_group_starts_from_earliest(harness: &dyn Harness) {
    let broker = connect(harness).await;
    if !broker.capabilities().new_group_reads_history {
        skip(
            "new_group_starts_from_earliest",
            "a new group cannot read messages published before it existed on this backend; \
             declared_group_keeps_early_messages covers declared groups",
        );
        return;
    }
    let topic = text_topic(&fresh_topic(&broker, "earliest", &[]).await);
    let sent = publish_texts(&broker.publisher(&topic), "old", 5).await;
    let inbox = Inbox::new();
    // The default, and the same asked for by name.
    let running = broker
        .subscriber(&topic, "latecomer")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(5, harness.patience()).await;
    assert_eq!(distinct_values(&received), sorted(sent.clone()));
    running.close().await.expect("close");
    let named = Inbox::new();
    let running = broker
        .subscriber(&topic, "named")
        .start_from(StartFrom::Earliest)
        .at_least_once(named.handler())
        .await
        .expect("subscribe");
    let received = named.wait_for(5, harness.patience()).await;
    assert_eq!(distinct_values(&received), sorted(sent));
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A group declared with its topic keeps what is published before its first subscriber.
pub async fn declared_group_keeps_early_messages(harness: &dyn Harness) {
    let broker = connect(harness).await;
    let topic = text_topic(&fresh_topic(&broker, "declared", &["stats"]).await);
    let sent = publish_texts(&broker.publisher(&topic), "early", 5).await;
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "stats")
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    let received = inbox.wait_for(5, harness.patience()).await;
    assert_eq!(distinct_values(&received), sorted(sent));
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}

/// A new group started from the latest message sees only what comes after it.
pub async fn start_from_latest(harness: &dyn Harness) {
    let broker = connect(harness).await;
    if !broker.capabilities().start_from_latest {
        skip(
            "start_from_latest",
            "the backend cannot start a group at the latest message",
        );
        return;
    }
    // "other" exists so that brokers which drop unrouted messages accept the early ones.
    let topic = text_topic(&fresh_topic(&broker, "latest", &["other"]).await);
    let publisher = broker.publisher(&topic);
    publish_texts(&publisher, "old", 5).await;
    let inbox = Inbox::new();
    let running = broker
        .subscriber(&topic, "fresh")
        .start_from(StartFrom::Latest)
        .at_least_once(inbox.handler())
        .await
        .expect("subscribe");
    // A subscription that is open but not yet assigned could miss messages published now.
    tokio::time::sleep(harness.quiet_period()).await;
    let sent = publish_texts(&publisher, "new", 5).await;
    let received = inbox.wait_for(5, harness.patience()).await;
    inbox.expect_no_more_than(5, harness.quiet_period()).await;
    assert_eq!(distinct_values(&received), sorted(sent));
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}
