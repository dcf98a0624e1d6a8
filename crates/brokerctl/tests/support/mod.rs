//! What the CLI tests share: a `brokerctl` command with a clean environment.

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use assert_cmd::Command;

/// `brokerctl` run in an empty directory of its own (no `./broker.toml`), without the
/// caller's `BROKER_CONFIG`, `BROKER__*` or `RUST_LOG`.
pub fn brokerctl() -> Command {
    let mut command = Command::from_std(brokerctl_process());
    command.timeout(std::time::Duration::from_secs(120));
    command
}

/// [`brokerctl`] as a process to spawn, for a test that handles its pipes itself.
pub fn brokerctl_process() -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("brokerctl"));
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("BROKER__")
            || name_text == "BROKER_CONFIG"
            || name_text == "RUST_LOG"
        {
            command.env_remove(&name);
        }
    }
    command.current_dir(scratch_dir("cwd"));
    command
}

/// A fresh directory under Cargo's temporary directory for integration tests.
pub fn scratch_dir(what: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("brokerctl-{}", unique(what)));
    std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
    dir
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Asserts that stderr is exactly one line, `error: ...`, and returns it.
pub fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line on stderr, got: {text}"
    );
    assert!(
        lines[0].starts_with("error: "),
        "expected `error: ...`, got: {text}"
    );
    lines[0].to_owned()
}
