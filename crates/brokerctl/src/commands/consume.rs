//! `brokerctl consume`: at least once, one message at a time, each printed before it is
//! acknowledged.
//!
//! With `--count N` exactly the N printed messages are acknowledged: a message that arrives
//! after the N-th (or after the timeout, or Ctrl-C) is not printed and its handler fails until
//! the subscription closes, which gives it back to the group unacknowledged. Retries never run
//! out and dead-lettering is off, so this tool never moves a message to a dead-letter topic.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use broker::{Broker, HandlerError, HandlerResult, Received, RetryPolicy, StartFrom, Topic};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::cli::{ConsumeArgs, Format, StartAt};
use crate::output;

/// How often the command looks whether the subscription ended by itself.
const POLL: Duration = Duration::from_millis(100);

/// What the handler and the command share.
struct State {
    format: Format,
    count: Option<u64>,
    printed: AtomicU64,
    /// Set by the handler when `count` messages were printed, or printing failed.
    finished: CancellationToken,
    /// Set by the command before it closes: no more messages are printed.
    closing: CancellationToken,
    /// Why printing failed (stdout closed, ...).
    output_error: Mutex<Option<std::io::Error>>,
}

impl State {
    /// Prints the message unless the command is done; `false` when it was not printed.
    fn print(&self, message: &Received<Bytes>) -> Result<bool, std::io::Error> {
        if self.closing.is_cancelled() {
            return Ok(false);
        }
        let reserved = self
            .printed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |printed| {
                match self.count {
                    Some(count) if printed >= count => None,
                    _ => Some(printed + 1),
                }
            });
        let Ok(before) = reserved else {
            return Ok(false);
        };
        let text = match self.format {
            Format::Text => output::message_text(&message.value, &message.metadata),
            Format::Json => format!(
                "{}\n",
                output::message_json(&message.value, &message.metadata)
            ),
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        if self.count == Some(before + 1) {
            self.finished.cancel();
        }
        Ok(true)
    }

    async fn handle(&self, message: Received<Bytes>) -> HandlerResult {
        match self.print(&message) {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Not ours to acknowledge: fail until the close gives it back to the group.
                self.closing.cancelled().await;
                Err(HandlerError::from("brokerctl consume is closing"))
            }
            Err(e) => {
                let text = e.to_string();
                self.output_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
                self.finished.cancel();
                self.closing.cancelled().await;
                Err(HandlerError::from(format!(
                    "cannot print the message: {text}"
                )))
            }
        }
    }
}

/// Why the command stopped waiting.
enum Stop {
    Finished,
    TimedOut(Duration),
    Interrupted,
    Ended,
}

/// Consumes and prints until `--count` messages were printed, `--timeout` passed or Ctrl-C.
pub async fn run(broker: &Broker, args: ConsumeArgs) -> anyhow::Result<()> {
    let state = Arc::new(State {
        format: args.format,
        count: args.count,
        printed: AtomicU64::new(0),
        finished: CancellationToken::new(),
        closing: CancellationToken::new(),
        output_error: Mutex::new(None),
    });
    if args.count == Some(0) {
        return Ok(());
    }
    let topic = Topic::bytes(args.topic.as_str());
    let mut subscriber = broker
        .subscriber(&topic, args.group.as_str())
        .concurrency(1)
        .retry(RetryPolicy {
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            jitter: 0.0,
            max_attempts: u32::MAX,
            dead_letter: false,
        });
    if let Some(count) = args.count {
        // Fetch no more than will be printed: fewer messages to hand back on close.
        let limit = usize::try_from(count).unwrap_or(usize::MAX);
        subscriber =
            subscriber.max_in_flight(broker.subscriber_defaults().max_in_flight.min(limit));
    }
    if let Some(from) = args.from {
        subscriber = subscriber.start_from(match from {
            StartAt::Earliest => StartFrom::Earliest,
            StartAt::Latest => StartFrom::Latest,
        });
    }
    let handler_state = state.clone();
    let running = subscriber
        .at_least_once(move |message: Received<Bytes>| {
            let state = handler_state.clone();
            async move { state.handle(message).await }
        })
        .await
        .with_context(|| format!("cannot subscribe to {} as {}", args.topic, args.group))?;

    let stop = wait(&state, &running, args.timeout).await;
    // However the wait ended, a Ctrl-C while closing ends the process (a second one, after
    // an interrupt).
    super::exit_on_interrupt();
    state.closing.cancel();
    let closed = running.close().await;
    let printed = state.printed.load(Ordering::Acquire);
    if let Some(e) = state
        .output_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(anyhow::Error::new(e).context("cannot write to stdout"));
    }
    closed.context("the subscription failed")?;
    let of = args.count.map_or_else(String::new, |n| format!(" of {n}"));
    match (stop, args.count) {
        (Stop::Finished, _) | (Stop::TimedOut(_) | Stop::Interrupted, None) => Ok(()),
        (Stop::TimedOut(timeout), Some(_)) => Err(anyhow::anyhow!(
            "timed out after {}: {printed}{of} messages arrived",
            humantime::format_duration(timeout)
        )),
        (Stop::Interrupted, Some(_)) => Err(anyhow::anyhow!(
            "interrupted: {printed}{of} messages arrived"
        )),
        (Stop::Ended, _) => Err(anyhow::anyhow!(
            "the subscription ended after {printed}{of} messages"
        )),
    }
}

async fn wait(state: &State, running: &broker::Running, timeout: Option<Duration>) -> Stop {
    let deadline = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut can_interrupt = true;
    loop {
        tokio::select! {
            // Finished first: the last message and the deadline may come in the same poll.
            biased;
            () = state.finished.cancelled() => return Stop::Finished,
            () = &mut deadline => return Stop::TimedOut(timeout.unwrap_or_default()),
            result = &mut interrupted, if can_interrupt => {
                can_interrupt = false;
                if result.is_ok() {
                    return Stop::Interrupted;
                }
            }
            () = tokio::time::sleep(POLL) => {
                if running.is_finished() {
                    return Stop::Ended;
                }
            }
        }
    }
}
