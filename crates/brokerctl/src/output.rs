//! How messages, positions and errors are printed, for people (`text`) and scripts (`json`).
//!
//! The JSON field names are part of the tool's interface (see the README's brokerctl section);
//! add fields, never rename them.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use base64::Engine as _;
use broker::{Metadata, Position, Receipt};
use serde_json::{json, Map, Value};

/// The one-line form of an error and its causes: `outer: inner: root`.
///
/// Causes whose text the line already holds are skipped (the library's errors print their
/// source themselves), and line breaks become spaces, so the result is exactly one line.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The broker position as `name=value` pairs (empty when the broker gives none).
pub fn position_text(position: &Position) -> String {
    match position {
        Position::Memory { offset } => format!("offset={offset}"),
        Position::Kafka { partition, offset } => format!("partition={partition} offset={offset}"),
        Position::Amqp(amqp) => format!(
            "delivery-tag={} redelivered={} exchange={} routing-key={}",
            amqp.delivery_tag, amqp.redelivered, amqp.exchange, amqp.routing_key
        ),
        Position::PubSub(pubsub) => match &pubsub.ordering_key {
            Some(key) => format!("pubsub-id={} ordering-key={key}", pubsub.message_id),
            None => format!("pubsub-id={}", pubsub.message_id),
        },
        Position::Unknown => String::new(),
        other => format!("{other:?}"),
    }
}

/// The broker position as a JSON object with a `kind` field: `memory`, `kafka`, `amqp`,
/// `pubsub` or `unknown`.
pub fn position_json(position: &Position) -> Value {
    match position {
        Position::Memory { offset } => json!({ "kind": "memory", "offset": offset }),
        Position::Kafka { partition, offset } => {
            json!({ "kind": "kafka", "partition": partition, "offset": offset })
        }
        Position::Amqp(amqp) => json!({
            "kind": "amqp",
            "delivery_tag": amqp.delivery_tag,
            "redelivered": amqp.redelivered,
            "exchange": amqp.exchange,
            "routing_key": amqp.routing_key,
        }),
        Position::PubSub(pubsub) => json!({
            "kind": "pubsub",
            "message_id": pubsub.message_id,
            "ordering_key": pubsub.ordering_key,
        }),
        Position::Unknown => json!({ "kind": "unknown" }),
        other => json!({ "kind": "other", "debug": format!("{other:?}") }),
    }
}

/// The confirmation of one published message, as one line.
pub fn receipt_text(receipt: &Receipt) -> String {
    let position = position_text(&receipt.position);
    if position.is_empty() {
        format!("published {}", receipt.message_id)
    } else {
        format!("published {} {position}", receipt.message_id)
    }
}

/// The confirmation of one published message, as one JSON object.
pub fn receipt_json(receipt: &Receipt) -> Value {
    json!({
        "message_id": receipt.message_id.as_str(),
        "position": position_json(&receipt.position),
    })
}

/// One consumed message for people: labelled lines, the payload last, then a blank line.
/// Control characters in the values (a line break, a terminal escape) are escaped: whoever
/// published the message cannot add lines or steer the terminal.
pub fn message_text(payload: &[u8], metadata: &Metadata) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{name:<13} {}", escape_controls(&value.to_string()));
    };
    field("topic:", &metadata.topic);
    let position = position_text(&metadata.position);
    if !position.is_empty() {
        field("position:", &position);
    }
    if let Some(id) = &metadata.message_id {
        field("message-id:", id);
    }
    if let Some(key) = &metadata.key {
        field("key:", key);
    }
    if let Some(content_type) = &metadata.content_type {
        field("content-type:", content_type);
    }
    if let Some(time) = metadata.publish_time {
        field("published:", &time_text(time));
    }
    if let Some(attempt) = metadata.attempt {
        field("attempt:", &attempt);
    }
    for (name, value) in metadata.headers.iter() {
        field("header:", &format_args!("{name}={value}"));
    }
    let payload = match std::str::from_utf8(payload) {
        Ok("") => "(empty)".to_owned(),
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "({} bytes, not UTF-8, escaped) {}",
            payload.len(),
            payload.escape_ascii()
        ),
    };
    field("payload:", &payload);
    out.push('\n');
    out
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`).
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// One consumed message for scripts: one JSON object (no line break).
///
/// Fields: `topic`, `key`, `headers` (object), `message_id`, `content_type`, `publish_time`
/// (RFC 3339, UTC; null when RFC 3339 cannot write it), `attempt`, `position` (object with
/// `kind`), `size` (payload bytes), `payload` and `payload_encoding` (`utf8`, or `base64` when
/// the payload is not UTF-8). Absent values are `null`.
pub fn message_json(payload: &[u8], metadata: &Metadata) -> Value {
    let headers: Map<String, Value> = metadata
        .headers
        .iter()
        .map(|(name, value)| (name.to_owned(), Value::from(value)))
        .collect();
    let (payload_text, encoding) = match std::str::from_utf8(payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            "base64",
        ),
    };
    json!({
        "topic": &*metadata.topic,
        "key": metadata.key,
        "headers": headers,
        "message_id": metadata.message_id.as_ref().map(|id| id.as_str()),
        "content_type": metadata.content_type.as_deref(),
        // Always RFC 3339 for scripts: null when absent or out of its range.
        "publish_time": metadata.publish_time.and_then(rfc3339),
        "attempt": metadata.attempt,
        "position": position_json(&metadata.position),
        "size": payload.len(),
        "payload": payload_text,
        "payload_encoding": encoding,
    })
}

/// Writes one line to stdout. A closed stdout (`brokerctl ... | head`) is an error, not the
/// panic `println!` makes of it.
pub fn print_line(line: impl fmt::Display) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to stdout")
}

/// A time as RFC 3339 in UTC with milliseconds; one that RFC 3339 cannot write (another
/// program's timestamp before 1970 or past the year 9999) as seconds from the Unix epoch.
pub fn time_text(time: SystemTime) -> String {
    rfc3339(time).unwrap_or_else(|| match time.duration_since(UNIX_EPOCH) {
        Ok(since) => format!("{} s after the Unix epoch", since.as_secs()),
        Err(before) => format!("{} s before the Unix epoch", before.duration().as_secs()),
    })
}

/// A time as RFC 3339 in UTC with milliseconds, when RFC 3339 can write it (from 1970 to the
/// year 9999).
fn rfc3339(time: SystemTime) -> Option<String> {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    // humantime's formatting panics before the epoch: checked first.
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() < YEAR_10000).then(|| humantime::format_rfc3339_millis(time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::{ErrorKind, Headers, MessageId};
    use std::sync::Arc;

    #[test]
    fn times_rfc3339_cannot_write_are_written_not_panicked_on() {
        let far = UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_800);
        assert_eq!(time_text(far), "253402300800 s after the Unix epoch");
        let early = UNIX_EPOCH - std::time::Duration::from_secs(86_400);
        assert_eq!(time_text(early), "86400 s before the Unix epoch");
        let ordinary = UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        assert_eq!(time_text(ordinary), "1970-01-01T00:00:01.500Z");
        // JSON keeps to RFC 3339: null where it cannot.
        let mut far_message = metadata();
        far_message.publish_time = Some(far);
        assert_eq!(
            message_json(b"x", &far_message)["publish_time"],
            Value::Null
        );
        far_message.publish_time = Some(ordinary);
        assert_eq!(
            message_json(b"x", &far_message)["publish_time"],
            "1970-01-01T00:00:01.500Z"
        );
    }

    fn metadata() -> Metadata {
        let mut metadata = Metadata::new(Arc::from("orders"));
        metadata.key = Some("k".into());
        metadata.headers = [("a", "b")].into_iter().collect::<Headers>();
        metadata.message_id = Some(MessageId::from("id-1"));
        metadata.attempt = Some(2);
        metadata.position = Position::Kafka {
            partition: 1,
            offset: 7,
        };
        metadata
    }

    #[test]
    fn error_line_skips_causes_already_shown_and_stays_on_one_line() {
        let inner = broker::Error::new(ErrorKind::Connection, "broker down")
            .backend("kafka")
            .operation("connect")
            .source(std::io::Error::other("refused\nagain"));
        let error = anyhow::Error::new(inner).context("checking the broker");
        assert_eq!(
            error_line(&error),
            "checking the broker: kafka connect (connection): broker down: refused again"
        );
    }

    #[test]
    fn json_messages_have_stable_fields_and_base64_for_binary() {
        let value = message_json(b"hello", &metadata());
        assert_eq!(value["payload"], "hello");
        assert_eq!(value["payload_encoding"], "utf8");
        assert_eq!(value["key"], "k");
        assert_eq!(value["headers"]["a"], "b");
        assert_eq!(value["message_id"], "id-1");
        assert_eq!(value["attempt"], 2);
        assert_eq!(value["position"]["kind"], "kafka");
        assert_eq!(value["position"]["offset"], 7);
        assert_eq!(value["publish_time"], Value::Null);
        let binary = message_json(&[0xff, 0x00], &metadata());
        assert_eq!(binary["payload"], "/wA=");
        assert_eq!(binary["payload_encoding"], "base64");
        assert_eq!(binary["size"], 2);
    }

    #[test]
    fn text_messages_escape_binary() {
        let text = message_text(&[0xff, b'a'], &metadata());
        assert!(
            text.contains("position:     partition=1 offset=7"),
            "{text}"
        );
        assert!(text.contains("header:       a=b"), "{text}");
        assert!(
            text.contains("(2 bytes, not UTF-8, escaped) \\xffa"),
            "{text}"
        );
    }
    /// A published value cannot add labelled lines or send escapes to the terminal.
    #[test]
    fn text_messages_escape_control_characters() {
        let mut metadata = metadata();
        metadata.key = Some("k\nkey:          admin".into());
        metadata.headers.insert("h", "\u{1b}[2J");
        let text = message_text(b"line\nkey: forged", &metadata);
        let keys = text.lines().filter(|l| l.starts_with("key:")).count();
        assert_eq!(keys, 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("payload:      line\\nkey: forged"), "{text}");
        assert!(text.contains("header:       h=\\u{1b}[2J"), "{text}");
    }
}
