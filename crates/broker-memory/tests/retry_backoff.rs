//! A failed handler is called again only after the retry policy's backoff: `min_backoff`
//! doubled per attempt and capped at `max_backoff` (no jitter here, so the delays are exact
//! lower bounds).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_api::{Broker, HandlerError, Received, RetryPolicy, Topic, TopicSpec};
use broker_memory::MemoryBackend;
use tokio::sync::Notify;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_the_backoff_doubling_up_to_its_cap() {
    const MIN: Duration = Duration::from_millis(80);
    const MAX: Duration = Duration::from_millis(200);
    let broker = Broker::new(MemoryBackend::new());
    let topic = Topic::<String>::text("backoff");
    broker
        .ensure_topic(&TopicSpec::new("backoff").group("g"))
        .await
        .expect("topic");
    let calls = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let succeeded = Arc::new(Notify::new());
    let handler = {
        let calls = calls.clone();
        let succeeded = succeeded.clone();
        move |_: Received<String>| {
            let call = {
                let mut calls = calls.lock().expect("calls");
                calls.push(Instant::now());
                calls.len()
            };
            if call == 4 {
                succeeded.notify_one();
            }
            async move {
                if call < 4 {
                    Err(HandlerError::from(format!("call {call} fails")))
                } else {
                    Ok(())
                }
            }
        }
    };
    let running = broker
        .subscriber(&topic, "g")
        .retry(RetryPolicy {
            min_backoff: MIN,
            max_backoff: MAX,
            jitter: 0.0,
            max_attempts: 5,
            dead_letter: false,
        })
        .at_least_once(handler)
        .await
        .expect("subscribe");
    broker
        .publisher(&topic)
        .publish(&"m".to_owned())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(20), succeeded.notified())
        .await
        .expect("the fourth call comes");
    running.close().await.expect("close");

    let calls = calls.lock().expect("calls").clone();
    let waits: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // After attempt 1: MIN; after 2: 2 × MIN; after 3: 4 × MIN, capped at MAX.
    let backoffs = [MIN, MIN * 2, MAX];
    assert_eq!(waits.len(), backoffs.len(), "calls at {calls:?}");
    for (attempt, (waited, backoff)) in waits.iter().zip(backoffs).enumerate() {
        assert!(
            *waited >= backoff,
            "attempt {} came {waited:?} after the one before, before its backoff {backoff:?}",
            attempt + 2
        );
    }
}
