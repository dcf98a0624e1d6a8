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

/// The longest topic or group name accepted, dead-letter topics included.
pub const MAX_NAME_LEN: usize = 200;

/// Checks the dead-letter topic of `group` on `topic` (see [`dead_letter_topic`]): it is a
/// topic too, and two names that pass [`validate_name`] can make one too long, which the broker
/// would only refuse at the first message dead-lettered, stopping the subscription there.
pub fn validate_dead_letter_topic(topic: &str, group: &str) -> Result<()> {
    let name = dead_letter_topic(topic, group);
    if name.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    Err(Error::config(format!(
        "the dead-letter topic of group {group:?} on topic {topic:?} would be {} characters \
         long, over {MAX_NAME_LEN}: shorten the names, or turn dead-lettering off \
         (subscriber.retry.dead_letter = false)",
        name.len()
    )))
}

/// The most partitions a topic may have: librdkafka's limit for creating a Kafka topic.
pub const MAX_PARTITIONS: u32 = 100_000;

/// Checks a partition count, named `key` in the error: 1 to [`MAX_PARTITIONS`].
pub fn validate_partitions(key: &str, partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::config(format!(
            "{key} = {partitions}: expected 1 to {MAX_PARTITIONS}, or leave it out for the \
             broker default"
        )));
    }
    Ok(())
}

/// The shortest topic name accepted: Pub/Sub's shortest topic and subscription id.
pub const MIN_TOPIC_LEN: usize = 3;

/// Checks a topic name: [`validate_name`]'s rules, at least [`MIN_TOPIC_LEN`] characters, and
/// not starting with `goog`, which Pub/Sub reserves (for its topics and for the subscriptions
/// named after them) — so that a name accepted on one broker is accepted on every other.
pub fn validate_topic_name(name: &str) -> Result<()> {
    validate_name("topic", name)?;
    if name.len() < MIN_TOPIC_LEN {
        return Err(Error::config(format!(
            "invalid topic name {name:?}: expected at least {MIN_TOPIC_LEN} characters"
        )));
    }
    if name.starts_with("goog") {
        return Err(Error::config(format!(
            "invalid topic name {name:?}: names starting with \"goog\" are reserved by Pub/Sub"
        )));
    }
    Ok(())
}

/// Checks the name of `group` on `topic`: [`validate_name`]'s rules, and the resource that
/// holds its messages ([`group_resource`], a RabbitMQ queue or a Pub/Sub subscription) no
/// longer than [`MAX_NAME_LEN`], which the broker would only refuse at run time.
pub fn validate_group_name(topic: &str, group: &str) -> Result<()> {
    validate_name("group", group)?;
    let resource = group_resource(topic, group);
    if resource.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    Err(Error::config(format!(
        "group {group:?} on topic {topic:?} would be held in {resource:?}, {} characters long, \
         over {MAX_NAME_LEN}: shorten the names",
        resource.len()
    )))
}

/// Checks a topic or group name: 1 to 200 characters of ASCII letters, digits, `.`, `_` and
/// `-`, starting with a letter — the characters every supported broker accepts. Topics and
/// groups have more rules: [`validate_topic_name`], [`validate_group_name`].
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
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
    fn a_dead_letter_topic_too_long_for_the_brokers_is_refused() {
        let topic = "t".repeat(150);
        assert!(validate_dead_letter_topic(&topic, &"g".repeat(45)).is_ok());
        let err = validate_dead_letter_topic(&topic, &"g".repeat(50)).unwrap_err();
        assert!(err.to_string().contains("205 characters"), "{err}");
    }

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
    fn topic_names_follow_the_strictest_broker() {
        assert!(validate_topic_name("abc").is_ok());
        assert!(validate_topic_name("Google-events").is_ok());
        for (bad, why) in [
            ("ab", "at least 3"),
            ("goog-events", "reserved by Pub/Sub"),
            ("1abc", "invalid topic name"),
        ] {
            let err = validate_topic_name(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_group_held_in_a_resource_too_long_is_refused() {
        let topic = "t".repeat(100);
        assert!(validate_group_name(&topic, &"g".repeat(99)).is_ok());
        let err = validate_group_name(&topic, &"g".repeat(100)).unwrap_err();
        assert!(err.to_string().contains("201 characters"), "{err}");
        assert!(validate_group_name("abc", "a b").is_err());
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
