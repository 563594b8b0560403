//! Errors returned by the circuit breaker.

use std::time::Duration;

use super::State;

/// The circuit refused a call without sending it: it is open, forced open, or half-open with
/// every probe permit taken.
///
/// This is a *local rejection* (see [`crate::rejection`]): retry layers do not retry it on the same
/// endpoint, do not charge it to the retry budget, and adaptive limiters do not sample it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit open")]
pub struct Open {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) state: State,
}

impl Open {
    /// How long until the circuit admits calls again, when it is known (open with a deadline).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The state the breaker was in when it refused the call.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }
}

/// A breaker configuration value is out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A rate was not a number above 0 and at most 1.
    #[error("{name} must be above 0 and at most 1, got {value}")]
    Rate {
        /// Which setting.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count was zero or above its maximum.
    #[error("{name} must be between 1 and {max}, got {value}")]
    Count {
        /// Which setting.
        name: &'static str,
        /// The value given.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A duration was zero where a positive one is needed.
    #[error("{name} must be longer than zero")]
    ZeroDuration {
        /// Which setting.
        name: &'static str,
    },
    /// The open-duration multiplier was below 1 or not finite.
    #[error("open backoff multiplier must be a finite number of at least 1, got {0}")]
    Multiplier(f64),
}

impl Open {
    pub(crate) fn rejection(&self) -> crate::rejection::LocalRejection {
        crate::rejection::LocalRejection {
            kind: crate::rejection::RejectionKind::CircuitOpen,
            retry_after: self.retry_after,
        }
    }
}
