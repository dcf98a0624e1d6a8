//! Subscriber settings: where a group starts, how much is in flight, how failures are retried.
//!
//! They deserialize from the `[subscriber]` section of `broker.toml`; every field has a default.
//! Also the checks and the redaction the backends' own sections share.

mod number;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use number::{number, optional_number, Number};

use crate::backend::StartFrom;
use crate::error::{Error, Result};

/// The longest timeout a setting accepts: a day. A longer one is surely a mistake, and far
/// longer ones overflow clocks and client limits (librdkafka's wrap after 24.8 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks the timeout setting `key` (named as in `broker.toml`, e.g. `kafka.close_timeout`):
/// at least a millisecond and at most [`MAX_TIMEOUT`]; the error names the key, the value and
/// the range. The clients count in milliseconds: less would become 0, which librdkafka reads
/// as no limit at all.
pub fn check_timeout(key: &str, value: Duration) -> Result<()> {
    if value < Duration::from_millis(1) || value > MAX_TIMEOUT {
        return Err(Error::config(format!(
            "{key} = {}: expected a duration of at least 1ms and at most 1 day, such as \"10s\"",
            humantime::format_duration(value)
        )));
    }
    Ok(())
}

/// Checks the delay setting `key`, which may be zero: at most [`MAX_TIMEOUT`]; the error names
/// the key, the value and the range.
pub fn check_delay(key: &str, value: Duration) -> Result<()> {
    if value > MAX_TIMEOUT {
        return Err(Error::config(format!(
            "{key} = {}: expected a duration of at most 1 day, such as \"10s\"",
            humantime::format_duration(value)
        )));
    }
    Ok(())
}

/// `uri` as shown in errors, logs and `Debug`: its user information (`user:password@`, or a
/// token in the user's place) replaced by `***`. The user information ends at the last `@` (a
/// password may hold `/`). Text that is not a URI is shown only when it has the shape `host`
/// or `host:port`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        let host_and_port = !uri.contains('@')
            && uri
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
        return if host_and_port {
            uri.to_owned()
        } else {
            "***".to_owned()
        };
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => uri.to_owned(),
    }
}

/// How a subscription reads and handles messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriberSettings {
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// The most messages fetched and not yet acknowledged; bounds the subscription's memory.
    /// From 1 to [`SubscriberSettings::MAX_IN_FLIGHT`].
    #[serde(deserialize_with = "number")]
    pub max_in_flight: usize,
    /// How many handler calls run at once in `at_least_once`; messages with the same key still
    /// run one after another, in order. Defaults to 1 (strictly sequential, like Lagom).
    #[serde(deserialize_with = "number")]
    pub concurrency: usize,
    /// How long closing waits for running handlers before giving up on them (they are then
    /// delivered again later, not lost).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Retries and dead letters.
    pub retry: RetryPolicy,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        SubscriberSettings {
            start_from: StartFrom::Earliest,
            max_in_flight: 256,
            concurrency: 1,
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

impl SubscriberSettings {
    /// The largest `max_in_flight`: a million unsettled messages is past what any broker
    /// prefetches (RabbitMQ's limit is 65 535), and larger counts overflow the clients'
    /// flow-control permits.
    pub const MAX_IN_FLIGHT: usize = 1_000_000;

    /// Checks the values; the error names the key and what would be accepted.
    pub fn validate(&self) -> Result<()> {
        if !(1..=Self::MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(Error::config(format!(
                "subscriber.max_in_flight = {}: expected a number of messages from 1 to {}",
                self.max_in_flight,
                Self::MAX_IN_FLIGHT
            )));
        }
        if self.concurrency == 0 {
            return Err(Error::config(
                "subscriber.concurrency = 0: expected a number of handler calls of at least 1",
            ));
        }
        check_delay("subscriber.shutdown_timeout", self.shutdown_timeout)?;
        self.retry.validate()
    }
}

/// Exponential backoff with jitter for handler failures, then dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// The delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// The longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The random part of each delay, from 0.0 (none) to 1.0 (up to the whole delay).
    #[serde(deserialize_with = "number")]
    pub jitter: f64,
    /// Handler calls per message, the first included, before it is dead-lettered.
    #[serde(deserialize_with = "number")]
    pub max_attempts: u32,
    /// Whether exhausted and undecodable messages go to `<topic>.<group>.dlq`. When false, an
    /// `at_least_once` subscription stops with the error instead, and the message is delivered
    /// again later; an `at_most_once` stream yields an undecodable message as a `Decode` error
    /// and goes on (the message was acknowledged: it is not delivered again). `manual`
    /// streams never dead-letter: what to do is the caller's.
    pub dead_letter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
            max_attempts: 5,
            dead_letter: true,
        }
    }
}

impl RetryPolicy {
    /// Checks the values; the error names the key and what would be accepted.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::config(format!(
                "subscriber.retry.jitter = {}: expected a fraction from 0.0 to 1.0",
                self.jitter
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::config(
                "subscriber.retry.max_attempts = 0: expected at least 1 (the first attempt counts)",
            ));
        }
        check_delay("subscriber.retry.min_backoff", self.min_backoff)?;
        check_delay("subscriber.retry.max_backoff", self.max_backoff)?;
        if self.min_backoff > self.max_backoff {
            return Err(Error::config(format!(
                "subscriber.retry.min_backoff = {} is longer than max_backoff = {}",
                humantime::format_duration(self.min_backoff),
                humantime::format_duration(self.max_backoff)
            )));
        }
        Ok(())
    }

    /// The delay after failed attempt number `attempt` (1 for the first call): `min_backoff`
    /// doubled per attempt, capped at `max_backoff`, minus up to `jitter` of it at random.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self
            .min_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff);
        // Clamped: the fields are public, and an unchecked policy may reach here.
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return base;
        }
        let cut = rand::random::<f64>() * jitter;
        base.mul_f64(1.0 - cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_user_information_wherever_it_ends() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://***@127.0.0.1:5672/%2f",
            ),
            ("amqp://u:p/w@d@host/vh", "amqp://***@host/vh"),
            (
                "https://svc:pa/ss@proxy.example.com",
                "https://***@proxy.example.com",
            ),
            (
                "https://token@pubsub.example.com/x",
                "https://***@pubsub.example.com/x",
            ),
            ("amqp://host:5672", "amqp://host:5672"),
            ("127.0.0.1:8085", "127.0.0.1:8085"),
            ("localhost", "localhost"),
            ("u:secret@host", "***"),
            ("guest:s3cret", "***"),
        ];
        for (uri, shown) in cases {
            assert_eq!(redact_uri(uri), shown, "{uri}");
        }
    }

    #[test]
    fn timeouts_are_a_millisecond_to_a_day() {
        assert!(check_timeout("x.timeout", Duration::from_secs(10)).is_ok());
        assert!(check_timeout("x.timeout", Duration::from_millis(1)).is_ok());
        assert!(check_timeout("x.timeout", MAX_TIMEOUT).is_ok());
        for wrong in [
            Duration::ZERO,
            Duration::from_micros(500),
            MAX_TIMEOUT + Duration::from_secs(1),
            Duration::MAX,
        ] {
            let err = check_timeout("x.timeout", wrong).unwrap_err();
            assert!(err.to_string().contains("x.timeout = "), "{err}");
        }
    }

    #[test]
    fn delays_are_at_most_a_day() {
        let huge = Duration::from_secs(u64::MAX);
        let policy = RetryPolicy {
            min_backoff: huge,
            max_backoff: huge,
            jitter: 1e-300,
            ..RetryPolicy::default()
        };
        let err = policy.validate().unwrap_err();
        assert!(
            err.to_string().contains("subscriber.retry.min_backoff = "),
            "{err}"
        );
        let settings = SubscriberSettings {
            shutdown_timeout: MAX_TIMEOUT + Duration::from_secs(1),
            ..SubscriberSettings::default()
        };
        let err = settings.validate().unwrap_err();
        assert!(
            err.to_string().contains("subscriber.shutdown_timeout = "),
            "{err}"
        );
        let zero = SubscriberSettings {
            shutdown_timeout: Duration::ZERO,
            retry: RetryPolicy {
                min_backoff: Duration::ZERO,
                ..RetryPolicy::default()
            },
            ..SubscriberSettings::default()
        };
        assert!(zero.validate().is_ok(), "zero waits are allowed");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = (1..=6).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(1000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let policy = RetryPolicy {
            min_backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_secs(10),
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let delay = policy.backoff(1);
            assert!(delay <= Duration::from_millis(1000) && delay >= Duration::from_millis(500));
        }
    }

    /// A policy that skipped validation does not panic: jitter past 1 cuts the whole delay at
    /// most, NaN none of it.
    #[test]
    fn jitter_out_of_range_is_clamped() {
        for jitter in [2.0, -1.0, f64::NAN, f64::INFINITY] {
            let policy = RetryPolicy {
                min_backoff: Duration::from_millis(1000),
                jitter,
                ..RetryPolicy::default()
            };
            for _ in 0..100 {
                assert!(policy.backoff(1) <= Duration::from_millis(1000), "{jitter}");
            }
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        let mut settings = SubscriberSettings::default();
        settings.retry.jitter = 1.5;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("subscriber.retry.jitter"), "{err}");
        settings.retry.jitter = 0.1;
        for out_of_range in [0, SubscriberSettings::MAX_IN_FLIGHT + 1, usize::MAX] {
            settings.max_in_flight = out_of_range;
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains("subscriber.max_in_flight"), "{err}");
        }
        settings.max_in_flight = SubscriberSettings::MAX_IN_FLIGHT;
        assert!(settings.validate().is_ok());
    }
}
