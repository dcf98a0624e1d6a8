//! The example on the in-memory broker: what flows, what is retried, what is dead-lettered.

use assert_cmd::Command;
use predicates::prelude::*;

#[test]
fn retries_then_dead_letters_on_memory() {
    let mut command = Command::cargo_bin("dead-letters").expect("the example is built");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BROKER") {
            command.env_remove(&name);
        }
    }
    command
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .success()
        .stdout(predicate::str::contains("will retry"))
        .stdout(
            predicate::str::is_match(r"charged order \S+ \(899.00 EUR for bob\) on attempt 2")
                .unwrap(),
        )
        .stdout(predicate::str::contains(
            "7 of 10 orders charged, 3 dead-lettered",
        ))
        .stdout(predicate::str::contains(
            "dead letters in orders.payments.dlq",
        ))
        .stdout(predicate::str::contains("reason: no exchange rate for ZWL"))
        .stdout(predicate::str::contains("after 3 attempt(s)"))
        .stdout(predicate::str::contains("reason: invalid amount -5.00 USD"));
}
