//! librdkafka's callbacks for logs and errors, routed to `tracing`.
//!
//! librdkafka reconnects by itself; what it reports while a broker is away (connection refused,
//! all brokers down, request timeouts) is logged here as warnings, never treated as fatal. The
//! last error is kept so that a failed `connect` can say why.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The last error librdkafka reported on one client, and when.
#[derive(Debug, Clone)]
pub(crate) struct LastError {
    pub(crate) code: Option<RDKafkaErrorCode>,
    pub(crate) text: String,
    pub(crate) at: Instant,
}

/// How often the same error is logged as a warning at most; repeats in between are logged at
/// debug level and counted (librdkafka reports "all brokers down" on every reconnect attempt).
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// How long an error stays the last one against the "all brokers down" that follows it:
/// longer than librdkafka's longest reconnect backoff (10 s by default), so that a refused
/// login that repeats on every attempt stays what the last error says.
const CAUSE_KEPT_FOR: Duration = Duration::from_secs(30);

/// Logs and errors of one client (producer, admin client or one consumer).
#[derive(Debug, Clone)]
pub(crate) struct ClientLog {
    role: &'static str,
    last_error: Arc<Mutex<Option<LastError>>>,
    warned: Arc<Mutex<Vec<Warned>>>,
}

/// The error last logged as a warning, when, and how many repeats were not.
#[derive(Debug)]
struct Warned {
    code: Option<RDKafkaErrorCode>,
    at: Instant,
    repeats: u32,
}

impl ClientLog {
    /// The callbacks of a client playing `role` ("producer", "admin", "consumer").
    pub(crate) fn new(role: &'static str) -> Self {
        ClientLog {
            role,
            last_error: Arc::new(Mutex::new(None)),
            warned: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The last error reported, if any.
    pub(crate) fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last error reported, as a clause for an error that librdkafka gives no reason for
    /// (a message timed out, a queue stayed full): `"; librdkafka's last error, 4s ago: …"`,
    /// or nothing when there was none. It says why the cluster did not answer, such as a
    /// failed SASL authentication, which the timeout alone does not.
    pub(crate) fn last_error_clause(&self) -> String {
        self.last_error().map_or_else(String::new, |last| {
            let ago = Duration::from_secs(last.at.elapsed().as_secs());
            format!(
                "; librdkafka's last error, {} ago: {}",
                humantime::format_duration(ago),
                last.text
            )
        })
    }

    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let role = self.role;
        match level {
            // Properties meant for another client type: expected, since `properties` are shared.
            _ if facility == "CONFWARN" => {
                tracing::debug!(target: "librdkafka", role, facility, "{message}");
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", role, facility, "{message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", role, facility, "{message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", role, facility, "{message}");
            }
        }
    }

    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        let fatal = matches!(error, KafkaError::MessageConsumptionFatal(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
        if fatal {
            tracing::error!(target: "librdkafka", role = self.role, %error, reason, "fatal client error");
        } else if let Some(repeats) = self.should_warn(error.rdkafka_error_code()) {
            tracing::warn!(target: "librdkafka", role = self.role, %error, reason, repeats,
                "client error (librdkafka retries by itself; `repeats` identical errors since the last warning were logged at debug level)");
        } else {
            tracing::debug!(target: "librdkafka", role = self.role, %error, reason, "client error, repeated");
        }
        let code = error.rdkafka_error_code();
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // "All brokers down" follows every failed connection: it must not hide why they failed
        // (a refused login, a TLS error), which the caller needs to hear about.
        let keeps_cause = code == Some(RDKafkaErrorCode::AllBrokersDown)
            && last
                .as_ref()
                .is_some_and(|cause| cause.code != code && cause.at.elapsed() < CAUSE_KEPT_FOR);
        if !keeps_cause {
            *last = Some(LastError {
                code,
                text: if reason.is_empty() {
                    error.to_string()
                } else {
                    reason.to_owned()
                },
                at: Instant::now(),
            });
        }
    }
}

impl ClientLog {
    /// Whether an error with `code` is to be logged as a warning now; if so, how many
    /// repeats were logged at debug level since the last warning.
    fn should_warn(&self, code: Option<RDKafkaErrorCode>) -> Option<u32> {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match warned.iter_mut().find(|w| w.code == code) {
            Some(last) if now.duration_since(last.at) < REPEAT_WARNING_EVERY => {
                last.repeats += 1;
                None
            }
            Some(last) => {
                let repeats = last.repeats;
                last.at = now;
                last.repeats = 0;
                Some(repeats)
            }
            None => {
                warned.push(Warned {
                    code,
                    at: now,
                    repeats: 0,
                });
                Some(0)
            }
        }
    }
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ClientLog::log(self, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        ClientLog::error(self, &error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_warn_once_per_period() {
        let log = ClientLog::new("test");
        let down = Some(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(log.should_warn(down), Some(0));
        assert_eq!(log.should_warn(down), None);
        assert_eq!(log.should_warn(down), None);
        let refused = Some(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(log.should_warn(refused), Some(0));
        assert_eq!(log.should_warn(down), None);
        assert_eq!(log.should_warn(refused), None);
    }

    #[test]
    fn all_brokers_down_does_not_hide_why_they_are() {
        let log = ClientLog::new("test");
        let refused = KafkaError::Global(RDKafkaErrorCode::Authentication);
        log.error(
            &refused,
            "SASL authentication error: Invalid username or password",
        );
        log.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let last = log.last_error().expect("an error");
        assert_eq!(last.code, Some(RDKafkaErrorCode::Authentication));
        assert!(
            last.text.contains("Invalid username or password"),
            "{}",
            last.text
        );

        let down = ClientLog::new("test");
        down.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let last = down.last_error().expect("an error");
        assert_eq!(last.code, Some(RDKafkaErrorCode::AllBrokersDown));
    }

    #[test]
    fn the_last_error_gives_a_reason_to_errors_without_one() {
        let log = ClientLog::new("test");
        assert_eq!(log.last_error_clause(), "");
        let refused = KafkaError::ClientCreation("SASL authentication failed".into());
        log.error(&refused, "");
        let clause = log.last_error_clause();
        assert!(
            clause.starts_with("; librdkafka's last error, 0s ago: ")
                && clause.contains("SASL authentication failed"),
            "{clause}"
        );
    }
}
