//! Live tests of every backend against real brokers, in `tests/`: one file per broker runs the
//! conformance suite of `broker-testkit`, and one per broker runs the restart case alone (it
//! stops the broker under every other test). Brokers are found through `BROKER_TEST_KAFKA`,
//! `BROKER_TEST_RABBITMQ` and `BROKER_TEST_PUBSUB`; `scripts/test.sh` starts them and sets
//! `BROKER_REQUIRE_LIVE=1` so that a missing broker fails the run instead of skipping.
