//! Errors returned by the rate limiters.

use std::time::Duration;

use super::Status;

/// The rate limit refused the call; it was not sent.
///
/// A local rejection (see [`crate::rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited")]
pub struct RateLimited {
    pub(crate) retry_after: Duration,
    pub(crate) limit: u32,
    pub(crate) period: Duration,
}

impl RateLimited {
    /// The limit's state: nothing remaining, full again once the next call's wait and the
    /// refill of the rest of the burst have passed.
    #[must_use]
    pub fn status(&self) -> Status {
        let interval = self.period / self.limit.max(1);
        Status {
            limit: self.limit,
            remaining: 0,
            reset: self.retry_after + interval * self.limit.saturating_sub(1),
            period: self.period,
        }
    }

    /// When the next call would be admitted.
    #[must_use]
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The burst size: calls admitted at once from a full limiter.
    #[must_use]
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The time in which a drained limiter refills completely.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    pub(crate) fn rejection(&self) -> crate::rejection::LocalRejection {
        crate::rejection::LocalRejection {
            kind: crate::rejection::RejectionKind::RateLimited,
            retry_after: Some(self.retry_after),
        }
    }
}

/// A quota with a zero burst or a zero period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rate limit needs a burst of at least 1 and a period longer than zero")]
pub struct InvalidQuota;
