//! `brokerctl publish`: one message per argument or per input line, many in flight, one
//! confirmation line per message, in input order.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use broker::{Broker, Confirmation, Key, MessageId, Publisher, Receipt, Topic};
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::cli::{Format, PublishArgs};
use crate::output;

/// Confirmations awaited at once; reading waits when this many are pending.
const WINDOW: usize = 1024;

/// Publishes every message, printing each confirmation as it arrives (in input order).
///
/// After the first failure no more messages are sent; the ones in flight are still confirmed
/// and printed, and the command fails saying how many were published.
pub async fn run(broker: &Broker, args: PublishArgs) -> anyhow::Result<()> {
    broker::naming::validate_topic_name(&args.topic)?;
    let publisher = broker.publisher(&Topic::bytes(args.topic.as_str()));
    let mut input = spawn_input(&args)?;
    let mut pending = FuturesOrdered::new();
    let mut published = 0u64;
    let mut sent = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let mut reading = true;
    let mut printing = true;
    // Ctrl-C stops reading; what was sent is still confirmed and printed, and the error says
    // how many were published. A second Ctrl-C ends the process at once.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut can_interrupt = true;
    loop {
        tokio::select! {
            // Ctrl-C first: confirmations and lines may be ready at every turn.
            biased;
            result = &mut interrupted, if reading && can_interrupt => {
                can_interrupt = false;
                if result.is_ok() {
                    failure.get_or_insert(anyhow::anyhow!("interrupted"));
                    reading = false;
                    super::exit_on_interrupt();
                }
            }
            Some((number, id, result)) = pending.next() => {
                match result {
                    Ok(receipt) => {
                        published += 1;
                        // Every confirmed message is printed, also after another failed: which
                        // were published is what a user sending the rest again needs. Once
                        // stdout is gone (`| head`), the rest are still confirmed, unprinted.
                        if printing {
                            if let Err(e) = print_receipt(&receipt, args.format) {
                                failure.get_or_insert(e);
                                printing = false;
                                reading = false;
                            }
                        }
                    }
                    Err(e) => {
                        let e = anyhow::Error::new(e)
                            .context(format!("message {number} ({id}) was not published"));
                        failure.get_or_insert(e);
                        reading = false;
                    }
                }
            }
            line = input.recv(), if reading && pending.len() < WINDOW => match line {
                Some(Ok(payload)) => {
                    sent += 1;
                    match send(&publisher, &args, payload).await {
                        Ok((id, confirmation)) => {
                            let number = sent;
                            pending.push_back(async move { (number, id, confirmation.await) });
                        }
                        Err(e) => {
                            failure.get_or_insert(e.context(format!("message {sent} was not sent")));
                            reading = false;
                        }
                    }
                }
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                    reading = false;
                }
                None => reading = false,
            },
            else => break,
        }
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e.context(format!("{published} of {sent} messages published"))),
    }
}

/// Builds the message for `payload` and hands it to the broker.
async fn send(
    publisher: &Publisher<Bytes>,
    args: &PublishArgs,
    payload: Bytes,
) -> anyhow::Result<(MessageId, Confirmation)> {
    let mut message = publisher.message(&payload)?;
    message.key = args.key.as_deref().map(Key::from);
    for (name, value) in &args.headers {
        message.headers.insert(name, value);
    }
    if let Some(content_type) = &args.content_type {
        message.content_type = Some(content_type.clone().into());
    }
    let id = message.id.clone();
    let confirmation = publisher.send_message(message).await?;
    Ok((id, confirmation))
}

fn print_receipt(receipt: &Receipt, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => output::print_line(output::receipt_text(receipt)),
        Format::Json => output::print_line(output::receipt_json(receipt)),
    }
}

/// The messages to publish, read by a task of their own: the arguments, or the lines of the
/// file or of stdin.
fn spawn_input(args: &PublishArgs) -> anyhow::Result<mpsc::Receiver<anyhow::Result<Bytes>>> {
    let (sender, receiver) = mpsc::channel(WINDOW);
    if !args.messages.is_empty() {
        let messages = args.messages.clone();
        tokio::spawn(async move {
            for message in messages {
                if sender.send(Ok(Bytes::from(message))).await.is_err() {
                    break;
                }
            }
        });
        return Ok(receiver);
    }
    match args.file.as_deref() {
        Some(path) if path != Path::new("-") => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let name = path.display().to_string();
            tokio::spawn(read_lines(tokio::fs::File::from_std(file), name, sender));
        }
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading messages from stdin, one per line; end with Ctrl-D");
            }
            tokio::spawn(read_lines(tokio::io::stdin(), "stdin".to_owned(), sender));
        }
    }
    Ok(receiver)
}

/// Sends each line of `reader` (without its line break; any bytes, not only UTF-8).
async fn read_lines(
    reader: impl AsyncRead + Unpin,
    name: String,
    sender: mpsc::Sender<anyhow::Result<Bytes>>,
) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let item = match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Ok(Bytes::from(line))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {name}"))),
        };
        let failed = item.is_err();
        if sender.send(item).await.is_err() || failed {
            return;
        }
    }
}
