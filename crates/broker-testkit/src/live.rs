//! Live brokers: where tests find them, and what happens when one is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::NoRestart;

/// The variable that turns a missing live broker into a failure instead of a skip.
pub const REQUIRE_LIVE: &str = "BROKER_REQUIRE_LIVE";

/// Whether live brokers are required (`BROKER_REQUIRE_LIVE=1`, as set by `scripts/test.sh`).
pub fn required() -> bool {
    std::env::var(REQUIRE_LIVE).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The endpoint in environment variable `var` (e.g. `BROKER_TEST_KAFKA`).
///
/// When it is unset, the test says it was skipped and gets `None`; with `BROKER_REQUIRE_LIVE=1`
/// it panics instead, so a missing broker fails the run.
pub fn require(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if required() => panic!(
            "{var} is not set and {REQUIRE_LIVE}=1: start the broker with scripts/brokers.sh \
             start and export its endpoint (eval \"$(scripts/brokers.sh env)\")"
        ),
        _ => {
            crate::support::say(&format!("skipped: {var} is not set (run scripts/brokers.sh start, or set {REQUIRE_LIVE}=1 to fail instead)"));
            None
        }
    }
}

/// The repository root (the directory holding `scripts/brokers.sh`), found from this crate.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts").join("brokers.sh").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Runs `scripts/brokers.sh <action> <broker>` and returns its output, or why it failed.
pub async fn brokers_script(action: &str, broker: &str) -> Result<String, String> {
    let script = repository_root().join("scripts").join("brokers.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .arg(broker)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} {action} {broker} failed: {text}",
            script.display()
        ))
    }
}

/// Restarts `broker` (`kafka`, `rabbitmq`, `pubsub`) with `scripts/brokers.sh restart`, for
/// the restart case, when the endpoint under test (`address`, from `var`) is the one that
/// script runs. Restarting it while the tests use another broker (Docker's, say) would not
/// restart the broker under test: that fails, saying so.
pub async fn restart_managed(broker: &str, var: &str, address: &str) -> Result<(), NoRestart> {
    let exports = brokers_script("env", broker)
        .await
        .map_err(NoRestart::Failed)?;
    let managed = exports
        .lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .find_map(|(name, value)| (name == var).then_some(value));
    if managed != Some(address) {
        return Err(NoRestart::Failed(format!(
            "{var}={address} is not the {broker} that scripts/brokers.sh runs ({}): the restart \
             case needs a broker it can restart",
            managed.unwrap_or("it runs none")
        )));
    }
    brokers_script("restart", broker)
        .await
        .map(drop)
        .map_err(NoRestart::Failed)
}

/// Cases that share the live broker hold a read turn; a case that disturbs it (restarts it,
/// drops its connections) holds the write turn and so runs alone. The lock is fair: once a
/// disturbing case waits, later cases wait behind it.
static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A case's turn on the live broker of its test binary; held for the whole case.
#[derive(Debug)]
pub struct Turn {
    _guard: TurnGuard,
}

#[derive(Debug)]
enum TurnGuard {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

impl Turn {
    /// A turn shared with every other ordinary case.
    pub async fn shared() -> Turn {
        Turn {
            _guard: TurnGuard::Shared(TURNS.read().await),
        }
    }

    /// The broker alone: waits until running cases finish; later ones wait for this one.
    pub async fn exclusive() -> Turn {
        Turn {
            _guard: TurnGuard::Exclusive(TURNS.write().await),
        }
    }
}

/// A live broker's address with the case's turn on it: what a live test's harness holds.
#[derive(Debug)]
pub struct Endpoint {
    /// The broker's address, as its environment variable gives it.
    pub address: String,
    _turn: Turn,
}

impl Endpoint {
    /// For an ordinary case: the address in `var` and a turn shared with the other ordinary
    /// cases, or `None` to skip (see [`require`]).
    pub async fn shared(var: &str) -> Option<Endpoint> {
        let address = require(var)?;
        Some(Endpoint {
            address,
            _turn: Turn::shared().await,
        })
    }

    /// For a case that disturbs the broker (restarts it, drops its connections): the address
    /// in `var` and the broker to itself, or `None` to skip.
    pub async fn exclusive(var: &str) -> Option<Endpoint> {
        let address = require(var)?;
        Some(Endpoint {
            address,
            _turn: Turn::exclusive().await,
        })
    }
}
