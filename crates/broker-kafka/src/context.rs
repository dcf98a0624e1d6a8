//! librdkafka's callbacks for logs and errors, routed to `tracing`.
//!
//! librdkafka reconnects by itself; what it reports while a broker is away (connection refused,
//! all brokers down, request timeouts) is logged here as warnings, never treated as fatal. The
//! last error is kept so that a failed `connect` can say why.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The last error librdkafka reported on one client.
#[derive(Debug, Clone)]
pub(crate) struct LastError {
    pub(crate) code: Option<RDKafkaErrorCode>,
    pub(crate) text: String,
}

/// Logs and errors of one client (producer, admin client or one consumer).
#[derive(Debug, Clone)]
pub(crate) struct ClientLog {
    role: &'static str,
    last_error: Arc<Mutex<Option<LastError>>>,
}

impl ClientLog {
    /// The callbacks of a client playing `role` ("producer", "admin", "consumer").
    pub(crate) fn new(role: &'static str) -> Self {
        ClientLog {
            role,
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    /// The last error reported, if any.
    pub(crate) fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
        } else {
            tracing::warn!(target: "librdkafka", role = self.role, %error, reason, "client error; librdkafka retries by itself");
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(LastError {
            code: error.rdkafka_error_code(),
            text: if reason.is_empty() {
                error.to_string()
            } else {
                reason.to_owned()
            },
        });
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
