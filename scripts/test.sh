#!/usr/bin/env bash
# The full test run, as CI runs it: formatting, lints, every unit and conformance test, the live
# suites against real Kafka, RabbitMQ and the Pub/Sub emulator (started here, on loopback, by
# scripts/brokers.sh), and the example on every kind. Live tests run with BROKER_REQUIRE_LIVE=1:
# a missing broker fails the run instead of being skipped.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --no-live  # no brokers: unit tests, the memory backend, mock clusters
set -euo pipefail
cd "$(dirname "$0")/.."

# The brokers whose backends are complete; each gets its live suites and an example run.
LIVE_BROKERS="${LIVE_BROKERS-kafka rabbitmq pubsub}"

live=1
for arg in "$@"; do
  case "$arg" in
    --no-live) live=0 ;;
    *) echo "usage: scripts/test.sh [--no-live]" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/broker-rs/target}"
# A shared target directory reused by clones at different paths: incremental state would pile
# up per path (gigabytes each) and a test run gains nothing from it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Each commit built there leaves its own artifacts of the workspace's crates, and nothing
# removes them: past a bound the directory starts afresh (one full build, librdkafka included).
TARGET_LIMIT_GIB="${TARGET_LIMIT_GIB:-30}"
if [ -d "$CARGO_TARGET_DIR" ]; then
  used_gib=$(( $(du -sk "$CARGO_TARGET_DIR" | cut -f1) / 1024 / 1024 ))
  if [ "$used_gib" -ge "$TARGET_LIMIT_GIB" ]; then
    echo "$CARGO_TARGET_DIR holds $used_gib GiB (limit $TARGET_LIMIT_GIB): removing it"
    rm -rf "$CARGO_TARGET_DIR"
  fi
fi

step() {
  local name="$1"; shift
  local started=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name: $((SECONDS - started)) s"
}

step "system packages" scripts/install-deps.sh
# rustup's minimal profile leaves these out (added only when missing: no network otherwise).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  step "rust components" rustup component add rustfmt clippy
fi
step "format" cargo fmt --all -- --check
step "clippy" cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

if [ -z "$LIVE_BROKERS" ]; then live=0; fi

if [ "$live" -eq 1 ]; then
  # shellcheck disable=SC2086 # one argument per broker
  for broker in $LIVE_BROKERS; do step "start $broker" scripts/brokers.sh start "$broker"; done
  for broker in $LIVE_BROKERS; do
    eval "$(scripts/brokers.sh env "$broker")"
    endpoint="BROKER_TEST_$(tr '[:lower:]' '[:upper:]' <<<"$broker")"
    if [ -z "${!endpoint:-}" ]; then
      echo "$broker was started but is not up (scripts/brokers.sh status $broker)" >&2
      exit 1
    fi
  done
  # Every backend is live: a missing broker is a failure, not a skip.
  # shellcheck disable=SC2086 # one word per broker, in any order
  if [ "$(printf '%s\n' $LIVE_BROKERS | sort -u | tr '\n' ' ')" = "kafka pubsub rabbitmq " ]; then
    export BROKER_REQUIRE_LIVE=1
  fi
fi

step "build tests" cargo test --locked --workspace --all-features --no-run
step "unit, memory and mock tests" cargo test --locked --workspace --all-features --exclude integration-tests
# The facade with its default features: what a kind that is not compiled in says.
step "facade without backend features" cargo test --locked -p broker --test config_errors

if [ "$live" -eq 1 ]; then
  ran=()
  for broker in $LIVE_BROKERS; do
    # Each broker's suites: <broker>.rs (or <broker>/main.rs, split into modules), then any
    # <broker>_<what>.rs or <broker>_<what>/main.rs (a binary of its own).
    for file in integration-tests/tests/"$broker".rs integration-tests/tests/"$broker"/main.rs \
      integration-tests/tests/"$broker"_*.rs integration-tests/tests/"$broker"_*/main.rs; do
      [ -f "$file" ] || continue
      suite=$(basename "${file%/main.rs}" .rs)
      step "live: $suite" cargo test --locked --all-features -p integration-tests --test "$suite"
      if [ "$suite" = rabbitmq ]; then
        # Classic queues are a supported choice too (rabbitmq.queue_type).
        step "live: $suite, classic queues" env BROKER_TEST_RABBITMQ_QUEUE_TYPE=classic \
          cargo test --locked --all-features -p integration-tests --test "$suite"
      fi
      ran+=("$file")
    done
  done
  if [ "${BROKER_REQUIRE_LIVE:-}" = 1 ]; then
    # With every broker live, every suite must have run: one named otherwise would be skipped.
    for file in integration-tests/tests/*.rs integration-tests/tests/*/main.rs; do
      [ -f "$file" ] || continue
      if [[ ! " ${ran[*]} " == *" $file "* ]]; then
        echo "$file is not named after a broker (<broker>[_<what>].rs or <broker>[_<what>]/main.rs): not run" >&2
        exit 1
      fi
    done
  fi
fi

# The examples run on every kind by configuration alone: the kind and its endpoint.
examples_on() {
  local broker="$1" kind_env=()
  case "$broker" in
    memory) kind_env=() ;;
    kafka) kind_env=(BROKER__KIND=kafka BROKER__KAFKA__BOOTSTRAP_SERVERS="$BROKER_TEST_KAFKA") ;;
    rabbitmq) kind_env=(BROKER__KIND=rabbitmq BROKER__RABBITMQ__URI="$BROKER_TEST_RABBITMQ") ;;
    pubsub) kind_env=(BROKER__KIND=pubsub BROKER__PUBSUB__ENDPOINT="$BROKER_TEST_PUBSUB") ;;
  esac
  local features=()
  if [ "$broker" != memory ]; then features=(--features "$broker"); fi
  for example in hello dead-letters; do
    env "${kind_env[@]}" cargo run -q -p "$example" "${features[@]}"
  done
  if [ "$broker" != memory ]; then
    # The dead letters that run left on the broker are there for its report mode to show.
    local report
    report=$(env "${kind_env[@]}" cargo run -q -p dead-letters "${features[@]}" -- report)
    echo "$report"
    grep -q '^  order ' <<<"$report"
  fi
  if [ "$broker" = rabbitmq ] || [ "$broker" = pubsub ]; then
    # The producer alone, first on a fresh topic: the group it declares keeps its events on
    # the brokers that keep messages only for existing groups (built by "build tests").
    local brokerctl="$CARGO_TARGET_DIR/debug/brokerctl"
    env "${kind_env[@]}" "$brokerctl" topics delete greetings
    env "${kind_env[@]}" cargo run -q -p hello "${features[@]}" -- greet
    env "${kind_env[@]}" "$brokerctl" consume greetings --group greeting-stats --count 6 \
      --timeout 60s >/dev/null
  fi
}
step "examples on memory" examples_on memory
if [ "$live" -eq 1 ]; then
  for broker in $LIVE_BROKERS; do step "examples on $broker" examples_on "$broker"; done
fi
echo "all green"
