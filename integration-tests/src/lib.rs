//! Live tests of every backend against real brokers, in `tests/`: one file per broker runs the
//! conformance suite of `broker-testkit` and the broker's own cases; its restart case (which
//! stops the broker under every other test) takes the broker for itself, the cases sharing it
//! waiting for it and it for them (`live::Endpoint::exclusive`). Brokers are found through `BROKER_TEST_KAFKA`,
//! `BROKER_TEST_RABBITMQ` and `BROKER_TEST_PUBSUB`; `scripts/test.sh` starts them and sets
//! `BROKER_REQUIRE_LIVE=1` so that a missing broker fails the run instead of skipping.
