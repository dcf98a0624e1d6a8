//! Names the library derives, written once so every backend maps them alike.

use crate::error::{Error, Result};

/// Suffix of dead-letter topics.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// The dead-letter topic of `group` on `topic`: `<topic>.<group>.dlq`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}{DEAD_LETTER_SUFFIX}")
}

/// The broker resource (RabbitMQ queue, Pub/Sub subscription) that holds `group`'s messages of
/// `topic`: `<topic>.<group>`.
///
/// One exception keeps dead letters in one well-known place: the dead-letter topic
/// `<t>.<g>.dlq` read by its own group `g` is held in `<t>.<g>.dlq` itself, the name the wire
/// conventions give the dead-letter queue.
pub fn group_resource(topic: &str, group: &str) -> String {
    let own_dead_letters = topic
        .strip_suffix(DEAD_LETTER_SUFFIX)
        .and_then(|rest| rest.strip_suffix(group))
        .is_some_and(|rest| rest.ends_with('.'));
    if own_dead_letters {
        topic.to_owned()
    } else {
        format!("{topic}.{group}")
    }
}

/// Checks a topic or group name: 1 to 200 characters of ASCII letters, digits, `.`, `_` and
/// `-`, starting with a letter — the names every supported broker accepts.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid {what} name {name:?}: expected 1 to 200 ASCII letters, digits, '.', '_' or \
             '-', starting with a letter"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_resources_follow_the_wire_conventions() {
        assert_eq!(group_resource("orders", "billing"), "orders.billing");
        assert_eq!(dead_letter_topic("orders", "billing"), "orders.billing.dlq");
        assert_eq!(
            group_resource("orders.billing.dlq", "billing"),
            "orders.billing.dlq"
        );
        assert_eq!(
            group_resource("orders.billing.dlq", "audit"),
            "orders.billing.dlq.audit"
        );
        assert_eq!(
            group_resource("orders.xbilling.dlq", "billing"),
            "orders.xbilling.dlq.billing"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("topic", "greetings.v1_a-b").is_ok());
        for bad in ["", "1abc", "a b", "a/b", &"x".repeat(201)] {
            let err = validate_name("topic", bad).unwrap_err().to_string();
            assert!(err.contains("invalid topic name"), "{err}");
        }
    }
}
