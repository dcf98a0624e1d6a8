//! Cooperative scheduling: publishing and consuming in-memory messages, which never wait for a
//! broker, still give the other tasks of the thread their turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use broker_api::{Broker, HandlerResult, Received, Topic, TopicSpec};
use broker_memory::MemoryBackend;

const MESSAGES: usize = 10_000;

/// On one thread, a subscriber handles messages while a publisher is still publishing: the
/// publisher's confirmations yield once its task budget is spent.
#[tokio::test(flavor = "current_thread")]
async fn a_publishing_loop_lets_its_subscribers_run() {
    let broker = Broker::new(MemoryBackend::new());
    let topic = Topic::<String>::text("events");
    broker
        .ensure_topic(&TopicSpec::new("events").group("g"))
        .await
        .expect("topic");
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let running = broker
        .subscriber(&topic, "g")
        .at_least_once(move |_: Received<String>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                HandlerResult::Ok(())
            }
        })
        .await
        .expect("subscribe");
    let publisher = broker.publisher(&topic);
    let mut handled_while_publishing = 0;
    for i in 0..MESSAGES {
        publisher.publish(&i.to_string()).await.expect("publish");
        handled_while_publishing = handled.load(Ordering::SeqCst);
    }
    assert!(
        handled_while_publishing > 0,
        "the subscriber never ran while {MESSAGES} messages were published"
    );
    running.close().await.expect("close");
    broker.close().await.expect("close broker");
}
