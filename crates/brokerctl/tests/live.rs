//! The CLI against real brokers: create a topic with its group, publish, consume as JSON and
//! check payload, key and header. Each test runs when its broker's endpoint is in
//! `BROKER_TEST_KAFKA`, `BROKER_TEST_RABBITMQ` or `BROKER_TEST_PUBSUB` (skipped otherwise, a
//! failure with `BROKER_REQUIRE_LIVE=1`).

mod support;

use broker_testkit::live::require;
use predicates::prelude::*;
use support::{brokerctl, unique};

/// `brokerctl` on `kind` at `endpoint`, set through the variable the services would use.
fn on(kind: &str, variable: &str, endpoint: &str) -> assert_cmd::Command {
    let mut command = brokerctl();
    command.env("BROKER__KIND", kind).env(variable, endpoint);
    command
}

fn round_trip(kind: &str, variable: &str, endpoint: &str) {
    let topic = unique(&format!("brokerctl-live-{kind}"));
    on(kind, variable, endpoint)
        .args(["topics", "create", &topic, "--group", "g"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("topic {topic} is ready")));
    on(kind, variable, endpoint)
        .args(["publish", &topic, "--key", "k", "--header", "a=b", "hello"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("published "));
    let output = on(kind, variable, endpoint)
        .args(["consume", &topic, "--group", "g", "--count", "1"])
        .args(["--format", "json", "--timeout", "60s"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(output).expect("JSON output is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one message, one line: {text}");
    let message: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
    assert_eq!(message["payload"], "hello", "{message}");
    assert_eq!(message["payload_encoding"], "utf8", "{message}");
    assert_eq!(message["key"], "k", "{message}");
    assert_eq!(message["headers"]["a"], "b", "{message}");
    assert_eq!(message["topic"], topic.as_str(), "{message}");
    assert!(message["message_id"].is_string(), "{message}");
    // Cleaning up is best effort: it is not what is tested here.
    let _ = on(kind, variable, endpoint)
        .args(["topics", "delete", &topic])
        .output();
}

#[test]
fn kafka_round_trip() {
    if let Some(endpoint) = require("BROKER_TEST_KAFKA") {
        round_trip("kafka", "BROKER__KAFKA__BOOTSTRAP_SERVERS", &endpoint);
    }
}

#[test]
fn rabbitmq_round_trip() {
    if let Some(endpoint) = require("BROKER_TEST_RABBITMQ") {
        round_trip("rabbitmq", "BROKER__RABBITMQ__URI", &endpoint);
    }
}

#[test]
fn pubsub_round_trip() {
    if let Some(endpoint) = require("BROKER_TEST_PUBSUB") {
        round_trip("pubsub", "BROKER__PUBSUB__ENDPOINT", &endpoint);
    }
}
