//! With dead-lettering off, a payload an `at_least_once` subscription cannot decode stops it
//! with a `Decode` error. Apart from `dead_letter_off.rs`, whose log capture another test's
//! subscription stopping on its own thread would disturb (tracing's callsite interest is
//! process-wide).

use std::time::Duration;

use broker_api::{Broker, ErrorKind, Received, RetryPolicy, Topic, TopicSpec};
use broker_memory::MemoryBackend;
use bytes::Bytes;

const PATIENCE: Duration = Duration::from_secs(10);

/// Not with a handler's failure: the message stays unacknowledged.
#[tokio::test]
async fn at_least_once_stops_on_an_undecodable_payload_with_a_decode_error() {
    let broker = Broker::new(MemoryBackend::new());
    broker
        .ensure_topic(&TopicSpec::new("numbers").group("g"))
        .await
        .expect("topic");
    broker
        .publisher(&Topic::bytes("numbers"))
        .publish(&Bytes::from_static(b"{not json"))
        .await
        .expect("publish garbage");
    let running = broker
        .subscriber(&Topic::<u32>::json("numbers"), "g")
        .retry(RetryPolicy {
            dead_letter: false,
            ..RetryPolicy::default()
        })
        .at_least_once(|_: Received<u32>| async { Ok(()) })
        .await
        .expect("subscribe");
    let err = tokio::time::timeout(PATIENCE, running.join())
        .await
        .expect("the subscription stops")
        .expect_err("with the decode error");
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("cannot be decoded"), "{err}");
    broker.close().await.expect("close broker");
}
