use std::time::Duration;

use tower_layer::Layer;

use super::{ExponentialBackoff, MakeBackoff, Retry, RetryBudget, RetryErrors};

/// Wraps services in [`Retry`]; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct RetryLayer<P = RetryErrors, B = ExponentialBackoff> {
    pub(crate) config: Config<P, B>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config<P, B> {
    pub(crate) policy: P,
    pub(crate) backoff: B,
    pub(crate) max_attempts: u32,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) max_retry_after: Duration,
}

impl RetryLayer {
    /// Up to 3 attempts for errors of clonable requests, with decorrelated-jitter exponential
    /// backoff (50 ms to 5 s), no budget.
    #[must_use]
    pub fn new() -> Self {
        Self {
            config: Config {
                policy: RetryErrors,
                backoff: ExponentialBackoff::default(),
                max_attempts: 3,
                budget: None,
                max_retry_after: Duration::from_secs(30),
            },
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<P, B> RetryLayer<P, B> {
    /// Attempts in all, the first included (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Charges retries to `budget` (shared by all clones of the budget).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// A server asking to wait longer than this (`Retry-After`) gets its answer returned instead
    /// of a retry (default 30 s).
    #[must_use]
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.config.max_retry_after = wait;
        self
    }

    /// Uses another policy.
    #[must_use]
    pub fn policy<P2>(self, policy: P2) -> RetryLayer<P2, B> {
        RetryLayer {
            config: self.config.map(|_| policy, |backoff| backoff),
        }
    }

    /// Uses another backoff: an [`ExponentialBackoff`] with other settings, or any
    /// [`MakeBackoff`], such as a closure returning an iterator of durations.
    #[must_use]
    pub fn backoff<B2: MakeBackoff>(self, backoff: B2) -> RetryLayer<P, B2> {
        RetryLayer {
            config: self.config.map(|policy| policy, |_| backoff),
        }
    }
}

impl<P, B> Config<P, B> {
    /// The same settings with the policy and backoff replaced.
    fn map<P2, B2>(
        self,
        policy: impl FnOnce(P) -> P2,
        backoff: impl FnOnce(B) -> B2,
    ) -> Config<P2, B2> {
        let Config {
            policy: old_policy,
            backoff: old_backoff,
            max_attempts,
            budget,
            max_retry_after,
        } = self;
        Config {
            policy: policy(old_policy),
            backoff: backoff(old_backoff),
            max_attempts,
            budget,
            max_retry_after,
        }
    }
}

impl<S, P: Clone, B: Clone> Layer<S> for RetryLayer<P, B> {
    type Service = Retry<S, P, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            config: self.config.clone(),
        }
    }
}
