//! The CLI on the in-memory broker (which lives inside one process, so each test is one
//! `brokerctl` run), malformed arguments and configuration, and unreachable brokers.

mod support;

use predicates::prelude::*;
use support::{brokerctl, brokerctl_process, one_error_line, scratch_dir};

#[test]
fn check_on_memory_prints_kind_endpoint_and_capabilities() {
    brokerctl()
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains("kind:      memory"))
        .stdout(predicate::str::contains("endpoint:  memory://default"))
        .stdout(predicate::str::is_match(r"per-key order within a group\s+yes").unwrap())
        .stdout(predicate::str::contains("16 MiB"));
}

#[test]
fn bench_on_memory_prints_throughput_and_latency() {
    brokerctl()
        .args([
            "bench",
            "--messages",
            "500",
            "--size",
            "64",
            "--publishers",
            "2",
        ])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"published:\s+500 msgs in .* msgs/s .* MB/s").unwrap())
        .stdout(predicate::str::is_match(r"consumed:\s+500 msgs in").unwrap())
        .stdout(
            predicate::str::is_match(r"latency:\s+p50 \S+\s+p99 \S+\s+p999 \S+\s+max").unwrap(),
        );
}

#[test]
fn bench_with_payloads_shorter_than_the_timestamp_uses_a_header() {
    brokerctl()
        .args([
            "bench",
            "--messages",
            "50",
            "--size",
            "3",
            "--topic",
            "tiny",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("latency:"));
}

#[test]
fn publish_prints_one_confirmation_per_argument_in_order() {
    brokerctl()
        .args([
            "publish", "orders", "--key", "k", "--header", "a=b", "one", "two", "three",
        ])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"^published \S+ offset=0\npublished \S+ offset=1\npublished \S+ offset=2\n$",
            )
            .unwrap(),
        );
}

#[test]
fn publish_reads_lines_from_stdin_and_files_and_prints_json() {
    let output = brokerctl()
        .args(["publish", "orders", "--format", "json"])
        .write_stdin("first\r\nsecond\n\nlast")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let lines: Vec<serde_json::Value> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[3]["position"]["kind"], "memory");
    assert_eq!(lines[3]["position"]["offset"], 3);
    assert!(lines[0]["message_id"]
        .as_str()
        .is_some_and(|id| id.len() == 36));

    let file = scratch_dir("publish").join("messages.txt");
    std::fs::write(&file, "a\nb\n").unwrap();
    brokerctl()
        .args(["publish", "orders", "--file"])
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"^(published \S+ offset=\d\n){2}$").unwrap());
    brokerctl()
        .args(["publish", "orders", "--file", "nowhere.txt"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot open nowhere.txt"));
}

#[test]
fn consume_times_out_saying_how_many_arrived() {
    let assert = brokerctl()
        .args([
            "consume",
            "orders",
            "--group",
            "g",
            "--count",
            "2",
            "--timeout",
            "300ms",
        ])
        .assert()
        .failure()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(
        line.contains("timed out after 300ms: 0 of 2 messages arrived"),
        "{line}"
    );
}

#[test]
fn consume_without_count_stops_quietly_at_the_timeout() {
    brokerctl()
        .args([
            "consume",
            "orders",
            "--group",
            "g",
            "--timeout",
            "200ms",
            "--format",
            "json",
        ])
        .assert()
        .success()
        .stdout("");
}

#[test]
fn topics_declared_in_the_configuration_are_listed_and_deleted() {
    let config = scratch_dir("topics").join("broker.toml");
    std::fs::write(&config, "[topics.orders]\ngroups = [\"billing\"]\n").unwrap();
    brokerctl()
        .arg("--config")
        .arg(&config)
        .args(["topics", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("orders\n"));
    brokerctl()
        .arg("--config")
        .arg(&config)
        .args(["topics", "delete", "orders"])
        .assert()
        .success()
        .stdout("deleted topic orders\n");
    brokerctl()
        .args([
            "topics", "create", "orders", "--group", "billing", "--group", "audit",
        ])
        .assert()
        .success()
        .stdout("topic orders is ready with groups billing, audit\n");
}

#[test]
fn topic_operations_the_backend_lacks_are_unsupported_errors() {
    let assert = brokerctl()
        .args(["topics", "create", "orders", "--partitions", "3"])
        .assert()
        .failure();
    let line = one_error_line(&assert.get_output().stderr);
    assert!(
        line.contains("(unsupported)") && line.contains("unsupported on memory"),
        "{line}"
    );

    let assert = brokerctl()
        .args(["topics", "delete", "nosuch"])
        .assert()
        .failure();
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("nosuch"), "{line}");
}

/// `brokerctl publish ... | head -0`: the confirmations cannot be printed, which is one error
/// line and exit code 1, not a panic (101).
#[test]
fn a_closed_stdout_is_one_clear_error_not_a_panic() {
    let commands: [&[&str]; 2] = [
        &["publish", "orders", "one", "two", "three"],
        &["bench", "--messages", "10"],
    ];
    for args in commands {
        let mut child = brokerctl_process()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start brokerctl");
        // Closed before brokerctl has started up, let alone published.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("brokerctl ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors = match args[0] {
            // It first says what it runs, on stderr too.
            "bench" => stderr.split_once('\n').map_or("", |(_, rest)| rest),
            _ => &stderr,
        };
        let line = one_error_line(errors.as_bytes());
        assert_eq!(output.status.code(), Some(1), "{args:?}: {line}");
        assert!(line.contains("cannot write to stdout"), "{args:?}: {line}");
    }
}

#[test]
fn malformed_arguments_are_usage_errors() {
    brokerctl()
        .arg("publish")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("<TOPIC>"));
    brokerctl()
        .args(["publish", "orders", "--header", "novalue", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected NAME=VALUE"));
    brokerctl()
        .args(["consume", "orders"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--group"));
    brokerctl()
        .args(["consume", "orders", "--group", "g", "--timeout", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("250ms"));
    brokerctl()
        .args(["--kind", "nats", "check"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown kind \"nats\""));
    brokerctl()
        .args(["bench", "--messages", "0"])
        .assert()
        .code(2);
    brokerctl()
        .args(["bench", "--size", "100000000000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--size"));
    let assert = brokerctl()
        .args(["publish", "bad/name", "x"])
        .assert()
        .failure();
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("invalid topic name \"bad/name\""), "{line}");
}

#[test]
fn malformed_configuration_is_one_clear_error_line() {
    let dir = scratch_dir("config");
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "kind = \"memory\"\nflavour = \"vanilla\"\n").unwrap();
    let assert = brokerctl()
        .arg("--config")
        .arg(&unknown_key)
        .arg("check")
        .assert()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("flavour"), "{line}");

    let assert = brokerctl()
        .env("BROKER__KIND", "nats")
        .arg("check")
        .assert()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("nats") && line.contains("kafka"), "{line}");

    let assert = brokerctl()
        .args(["--config", "missing.toml", "check"])
        .assert()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("missing.toml does not exist"), "{line}");

    let assert = brokerctl()
        .env("BROKER_CONFIG", dir.join("absent.toml"))
        .arg("check")
        .assert()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("absent.toml does not exist"), "{line}");

    let assert = brokerctl()
        .env("BROKER__SUBSCRIBER__SHUTDOWN_TIMEOUT", "forever")
        .arg("check")
        .assert()
        .code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("30s"), "{line}");
}

#[test]
fn the_config_file_is_found_in_the_working_directory() {
    let dir = scratch_dir("cwd-config");
    std::fs::write(
        dir.join("broker.toml"),
        "[memory]\ninstance = \"from-file\"\n",
    )
    .unwrap();
    brokerctl()
        .current_dir(&dir)
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains("memory://from-file"));
}

/// Asserts that `check` on `kind` with these variables fails with one line naming the cause.
fn check_fails_on_a_dead_endpoint(kind: &str, vars: &[(&str, &str)]) {
    let mut command = brokerctl();
    command.args(["--kind", kind, "check"]);
    for (name, value) in vars {
        command.env(name, value);
    }
    let assert = command.assert().code(1).stdout("");
    let line = one_error_line(&assert.get_output().stderr);
    assert!(
        line.contains(&format!("cannot connect to {kind}")),
        "{line}"
    );
    assert!(line.contains("connection"), "{line}");
}

#[test]
fn check_fails_clearly_on_a_dead_kafka() {
    check_fails_on_a_dead_endpoint(
        "kafka",
        &[
            ("BROKER__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1"),
            ("BROKER__KAFKA__CONNECT_TIMEOUT", "2s"),
        ],
    );
}

#[test]
fn check_fails_clearly_on_a_dead_rabbitmq_without_showing_the_password() {
    let mut command = brokerctl();
    command
        .args(["--kind", "rabbitmq", "check"])
        .env(
            "BROKER__RABBITMQ__URI",
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
        )
        .env("BROKER__RABBITMQ__CONNECT_TIMEOUT", "2s");
    let assert = command.assert().code(1);
    let line = one_error_line(&assert.get_output().stderr);
    assert!(line.contains("cannot connect to rabbitmq"), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn check_fails_clearly_on_a_dead_pubsub() {
    check_fails_on_a_dead_endpoint(
        "pubsub",
        &[
            ("BROKER__PUBSUB__ENDPOINT", "http://127.0.0.1:1"),
            ("BROKER__PUBSUB__CONNECT_TIMEOUT", "2s"),
        ],
    );
}
