//! The Kafka record of a message: its headers and its size against `message.max.bytes`.

use broker_api::{Message, CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
use rdkafka::message::{Header, OwnedHeaders};

/// The record headers: message id, content type, then the application's headers (entries
/// named like the first two are left out: the message's own fields win).
pub(super) fn wire_headers(message: &Message) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2).insert(Header {
        key: MESSAGE_ID_HEADER,
        value: Some(message.id.as_str()),
    });
    if let Some(content_type) = &message.content_type {
        headers = headers.insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(content_type.as_ref()),
        });
    }
    for (name, value) in message.headers.without_wire_names() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers
}

/// Payload, key and headers, in bytes: what counts against `message.max.bytes`.
pub(super) fn wire_size(message: &Message) -> usize {
    message.payload.len()
        + message.key.as_deref().map_or(0, str::len)
        + MESSAGE_ID_HEADER.len()
        + message.id.as_str().len()
        + message
            .content_type
            .as_ref()
            .map_or(0, |c| CONTENT_TYPE_HEADER.len() + c.len())
        + message
            .headers
            .without_wire_names()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn headers_carry_id_and_content_type_first() {
        let message = Message::new("x")
            .with_id("id-1")
            .with_content_type("text/plain")
            .with_header("a", "1")
            .with_header(MESSAGE_ID_HEADER, "spoofed");
        let headers = wire_headers(&message);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("message-id".to_owned(), "id-1".to_owned()),
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
        );
        assert_eq!(wire_size(&message), 1 + 10 + 4 + 12 + 10 + 2);
    }
}
