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

/// A message Kafka refuses (too large) stops the command, and every message confirmed before
/// or after that is still printed: the count in the error matches the receipts shown.
#[test]
fn kafka_publish_failure_prints_every_confirmed_receipt() {
    let Some(endpoint) = require("BROKER_TEST_KAFKA") else {
        return;
    };
    let variable = "BROKER__KAFKA__BOOTSTRAP_SERVERS";
    let topic = unique("brokerctl-live-partial");
    let mut input = String::new();
    for i in 0..2000 {
        input.push_str(&format!("m{i}\n"));
    }
    input.push_str(&"x".repeat(2 << 20));
    input.push('\n');
    let output = on("kafka", variable, &endpoint)
        .args(["publish", &topic])
        .write_stdin(input)
        .assert()
        .failure()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let printed = stdout
        .lines()
        .filter(|l| l.starts_with("published "))
        .count();
    assert!(stderr.contains("larger than the limit"), "{stderr}");
    assert!(
        stderr.contains(&format!("{printed} of 2001 messages published")),
        "{printed} receipts printed; {stderr}"
    );
    let _ = on("kafka", variable, &endpoint)
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
