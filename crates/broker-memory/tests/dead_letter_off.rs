//! With dead-lettering off, `at_most_once` yields an undecodable payload as an error instead
//! of writing a dead letter, and goes on with the next message.

use std::time::Duration;

use broker_api::{Broker, ErrorKind, HandlerError, Received, RetryPolicy, Topic, TopicSpec};
use broker_memory::MemoryBackend;
use broker_testkit::support::CapturedLogs;
use bytes::Bytes;
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn at_most_once_yields_undecodable_payloads_as_errors() {
    let broker = Broker::new(MemoryBackend::new());
    broker
        .ensure_topic(&TopicSpec::new("numbers").group("g"))
        .await
        .expect("topic");
    let numbers = Topic::<u32>::json("numbers");
    broker
        .publisher(&Topic::bytes("numbers"))
        .publish(&Bytes::from_static(b"{not json"))
        .await
        .expect("publish garbage");
    broker
        .publisher(&numbers)
        .publish(&7)
        .await
        .expect("publish");

    let mut stream = broker
        .subscriber(&numbers, "g")
        .retry(RetryPolicy {
            dead_letter: false,
            ..RetryPolicy::default()
        })
        .at_most_once()
        .await
        .expect("subscribe");
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an item")
        .expect("the stream goes on");
    let err = first.expect_err("the undecodable payload is an error");
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("dead-lettering is off"), "{err}");
    let second = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an item")
        .expect("the stream goes on")
        .expect("the next message");
    assert_eq!(second.value, 7);
    stream.close().await.expect("close");

    // Nothing was written to the dead-letter topic.
    let dead_letters = broker.backend().list_topics().await.expect("topics");
    assert!(
        !dead_letters.iter().any(|name| name.ends_with(".dlq")),
        "{dead_letters:?}"
    );
    broker.close().await.expect("close broker");
}

/// Names whose dead-letter topic would be too long for the brokers are refused when
/// subscribing with dead-lettering on, not at the first message dead-lettered; with it off
/// they subscribe.
#[tokio::test]
async fn a_dead_letter_topic_too_long_is_refused_when_subscribing() {
    let broker = Broker::new(MemoryBackend::new());
    let name = "t".repeat(100);
    let topic = Topic::<u32>::json(name.as_str());
    let group = "g".repeat(97);
    let err = broker
        .subscriber(&topic, group.as_str())
        .at_most_once()
        .await
        .map(drop)
        .expect_err("the dead-letter topic would be 202 characters");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("dead-letter topic"), "{err}");
    let without_dead_letters = broker
        .subscriber(&topic, group.as_str())
        .retry(RetryPolicy {
            dead_letter: false,
            ..RetryPolicy::default()
        })
        .at_most_once()
        .await;
    assert!(without_dead_letters.is_ok());
}

/// A subscription stopped by a message it could not handle says so at error level: its
/// handle may have been dropped, and then nobody reads the error it ended with.
#[tokio::test]
async fn a_subscription_stopped_by_a_failure_logs_it() {
    // Current-thread runtime: the subscription's task logs on this thread.
    let logs = CapturedLogs::default();
    let _capture = tracing::subscriber::set_default(logs.subscriber());
    let broker = Broker::new(MemoryBackend::new());
    broker
        .ensure_topic(&TopicSpec::new("orders").group("g"))
        .await
        .expect("topic");
    let orders = Topic::<String>::text("orders");
    broker
        .publisher(&orders)
        .publish(&"poison".to_owned())
        .await
        .expect("publish");
    let running = broker
        .subscriber(&orders, "g")
        .retry(RetryPolicy {
            dead_letter: false,
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .at_least_once(|_: Received<String>| async { Err(HandlerError::from("always failing")) })
        .await
        .expect("subscribe");
    drop(running);
    let stopped = || {
        logs.lines()
            .into_iter()
            .find(|line| line.contains("subscription stopped"))
    };
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            match stopped() {
                Some(line) => return line,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    let line = waited.unwrap_or_else(|_| panic!("nothing logged: {:?}", logs.lines()));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("always failing") && line.contains("orders"),
        "{line}"
    );
    broker.close().await.expect("close broker");
}
