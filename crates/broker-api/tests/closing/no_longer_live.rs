//! A failed delivery that is no longer live (its partition revoked or rewound) is dropped, not
//! retried; the message, when it comes back, goes on with its attempts.

use super::*;

/// A message whose delivery stops being live while it fails (its Kafka partition revoked, its
/// RabbitMQ channel closed) is neither retried further nor dead-lettered — the broker delivers
/// it again to whoever handles it — and the subscription goes on with the next message.
#[tokio::test]
async fn a_failed_message_no_longer_live_is_neither_retried_nor_dead_lettered() {
    let backend = ScriptedBackend::new(&[("failing", None), ("next", None)]);
    let (events, live) = (backend.events.clone(), backend.live.clone());
    let broker = Broker::new(backend);
    let calls = Arc::new(AtomicU32::new(0));
    let handled_next = Arc::new(Notify::new());
    let handler = {
        let (calls, handled_next) = (calls.clone(), handled_next.clone());
        move |message: Received<String>| {
            let (calls, handled_next, live) = (calls.clone(), handled_next.clone(), live.clone());
            async move {
                if message.value == "next" {
                    handled_next.notify_one();
                    return HandlerResult::Ok(());
                }
                if calls.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                    // Revoked while its second attempt runs.
                    live.store(false, Ordering::SeqCst);
                }
                Err(HandlerError::from("the database is down"))
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_attempts: 10,
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(5), handled_next.notified())
        .await
        .expect("the next message was handled: the subscription went on");
    running.close().await.expect("close succeeds");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no retry after it was revoked"
    );
    assert_eq!(
        seen(&events),
        ["failing rejected", "next acked", "closed"],
        "dropped, not dead-lettered (this backend refuses every publish)"
    );
}

/// What the handler does at its `n`th call (from 1): whether it revokes the delivery it was
/// given (no longer live), and whether it succeeds.
type Plan = fn(u32) -> (bool, bool);

/// Runs `script` with a handler that follows `plan`, 3 attempts 1 ms apart, sequentially and
/// then concurrently (`concurrency` 2, every message with one key, so still in order), until
/// each subscription ends (this backend refuses dead letters: giving a message up ends it).
/// Returns the calls made and the outcome of each run.
async fn calls_until_given_up(script: &[&'static str], plan: Plan) -> Vec<(u32, Result<()>)> {
    let mut runs = Vec::new();
    for (concurrency, key) in [(1, None), (2, Some("k"))] {
        let script: Vec<_> = script.iter().map(|&value| (value, key)).collect();
        let backend = ScriptedBackend::new(&script);
        let revoked = backend.revoked.clone();
        let broker = Broker::new(backend);
        let calls = Arc::new(AtomicU32::new(0));
        let handler = {
            let calls = calls.clone();
            move |message: Received<String>| {
                let (calls, revoked) = (calls.clone(), revoked.clone());
                async move {
                    let (revokes, succeeds) = plan(calls.fetch_add(1, Ordering::SeqCst) + 1);
                    if revokes {
                        if let Ok(mut revoked) = revoked.lock() {
                            revoked.push(message.value);
                        }
                    }
                    if succeeds {
                        return HandlerResult::Ok(());
                    }
                    Err(HandlerError::from("the database is down"))
                }
            }
        };
        let running = broker
            .subscriber(&Topic::<String>::text("orders"), "g")
            .concurrency(concurrency)
            .retry(RetryPolicy {
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                max_attempts: 3,
                ..RetryPolicy::default()
            })
            .at_least_once(handler)
            .await
            .expect("subscribe");
        let ended = tokio::time::timeout(Duration::from_secs(5), running.join())
            .await
            .expect("the subscription ends: a message given up cannot be dead-lettered");
        runs.push((calls.load(Ordering::SeqCst), ended));
    }
    runs
}

/// A message that comes back after its delivery stopped being live while it failed is retried
/// from where its retries stopped: with rebalances more frequent than a full retry cycle, it
/// would otherwise never be dead-lettered.
#[tokio::test]
async fn a_message_that_comes_back_goes_on_with_its_attempts() {
    // Delivered again after its first delivery was revoked during its second attempt.
    let runs = calls_until_given_up(&["failing#1", "failing#2"], |call| (call == 2, false)).await;
    for (calls, ended) in runs {
        let error = ended.expect_err("this backend refuses the dead letter");
        assert!(
            error.to_string().contains("could not be dead-lettered"),
            "{error}"
        );
        assert_eq!(calls, 3, "given up after 3 calls in all");
    }
}

/// A message that came back and was handled is forgotten: a later message with its id (a
/// producer's retry, a replay) gets every attempt.
#[tokio::test]
async fn a_message_handled_when_it_came_back_is_forgotten() {
    // Revoked during its second attempt, handled when it came back, then sent again.
    let script = ["again#1", "again#2", "again#3"];
    let runs = calls_until_given_up(&script, |call| (call == 2, call == 3)).await;
    for (calls, ended) in runs {
        assert!(ended.is_err());
        assert_eq!(calls, 6, "3 calls on the third delivery");
    }
}

/// How the first message of a key ends while the next one waits behind it.
#[derive(Clone, Copy)]
enum FirstOfKey {
    /// Fails, every delivery no longer live (the subscription's partitions revoked).
    FailsRevoked,
    /// Succeeds, the delivery waiting behind it no longer live (its partition went to
    /// another member).
    SucceedsNextRevoked,
}

/// Runs "first" and "second" with key "k", then "other" with key "j", four at a time: once
/// "other" runs ("second" then waits behind "first"), "first" ends as `how` says. Returns the
/// handler calls and the backend's events.
async fn run_key_after_a_revocation(how: FirstOfKey) -> (Vec<String>, Vec<String>) {
    let backend = ScriptedBackend::new(&[
        ("first", Some("k")),
        ("second", Some("k")),
        ("other", Some("j")),
    ]);
    let (events, live, revoked) = (
        backend.events.clone(),
        backend.live.clone(),
        backend.revoked.clone(),
    );
    let broker = Broker::new(backend);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let other_started = Arc::new(Notify::new());
    let handler = {
        let (calls, other_started) = (calls.clone(), other_started.clone());
        move |message: Received<String>| {
            let (calls, other_started) = (calls.clone(), other_started.clone());
            let (live, revoked) = (live.clone(), revoked.clone());
            async move {
                if let Ok(mut calls) = calls.lock() {
                    calls.push(message.value.clone());
                }
                match (message.value.as_str(), how) {
                    ("first", FirstOfKey::FailsRevoked) => {
                        other_started.notified().await;
                        live.store(false, Ordering::SeqCst);
                        Err(HandlerError::from("the database is down"))
                    }
                    ("first", FirstOfKey::SucceedsNextRevoked) => {
                        other_started.notified().await;
                        if let Ok(mut revoked) = revoked.lock() {
                            revoked.push("second".to_owned());
                        }
                        HandlerResult::Ok(())
                    }
                    ("other", _) => {
                        other_started.notify_one();
                        HandlerResult::Ok(())
                    }
                    _ => HandlerResult::Ok(()),
                }
            }
        }
    };
    let running = broker
        .subscriber(&Topic::<String>::text("orders"), "g")
        .concurrency(4)
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    // Let "first" end (and a failed one's retry loop see that it is no longer live).
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.close().await.expect("close succeeds");
    let called = calls.lock().map(|c| c.clone()).unwrap_or_default();
    (called, seen(&events))
}

/// With messages handled concurrently, the next message of a key that failed and is no longer
/// live is not started while it is not live either: it would be handled before the failed one
/// comes back.
#[tokio::test]
async fn the_next_message_of_a_key_no_longer_live_is_not_started() {
    let (called, seen) = run_key_after_a_revocation(FirstOfKey::FailsRevoked).await;
    assert_eq!(called, ["first", "other"], "{seen:?}");
    assert!(seen.contains(&"first rejected".to_owned()), "{seen:?}");
    assert!(seen.contains(&"second rejected".to_owned()), "{seen:?}");
}

/// With messages handled concurrently, a message waiting behind its key that stopped being
/// live meanwhile (its partition went to another member) is not started when the one before it
/// succeeds: the member that holds it now handles it, after which it would be handled here a
/// second time, after later messages of its key.
#[tokio::test]
async fn a_waiting_message_no_longer_live_is_not_started_after_its_key_succeeded() {
    let (called, seen) = run_key_after_a_revocation(FirstOfKey::SucceedsNextRevoked).await;
    assert_eq!(called, ["first", "other"], "{seen:?}");
    assert!(seen.contains(&"first acked".to_owned()), "{seen:?}");
    assert!(seen.contains(&"second rejected".to_owned()), "{seen:?}");
}
