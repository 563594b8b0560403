//! [`ServiceBuilderExt`]: one method per middleware on tower's `ServiceBuilder`.

use tower::ServiceBuilder;
#[allow(unused_imports)] // unused when no middleware feature is enabled
use tower::layer::util::Stack;

/// Adds this crate's middleware to a [`ServiceBuilder`]. Sealed: only implemented here.
///
/// Layers are listed from the one that sees the request first, as with `ServiceBuilder::layer`.
///
/// ```
/// # #[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use mainstay_resilience::{ServiceBuilderExt, circuit_breaker::Breaker, retry::RetryLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// let service = ServiceBuilder::new()
///     .deadline(Duration::from_secs(5))
///     .retries(RetryLayer::new())
///     .circuit_breaker(Breaker::builder().build()?)
///     .bulkhead(32, Duration::ZERO)
///     .attempt_timeout(Duration::from_secs(1))
///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
/// # let _ = service;
/// # Ok(())
/// # }
/// # #[cfg(not(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout")))]
/// # fn main() {}
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// A [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer) over `breaker`.
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker(
        self,
        breaker: crate::circuit_breaker::Breaker,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer, L>>;

    /// A [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) of `max_concurrent` slots and
    /// `max_wait`.
    #[cfg(feature = "bulkhead")]
    fn bulkhead(
        self,
        max_concurrent: usize,
        max_wait: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer, L>>;

    /// A configured [`RetryLayer`](crate::retry::RetryLayer). (Not `retry`: tower's own
    /// `ServiceBuilder::retry` would shadow it.)
    #[cfg(feature = "retry")]
    fn retries<P, B>(
        self,
        layer: crate::retry::RetryLayer<P, B>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer<P, B>, L>>;

    /// A per-attempt [`TimeoutLayer`](crate::timeout::TimeoutLayer) that also respects the
    /// request's deadline.
    #[cfg(feature = "timeout")]
    fn attempt_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::TimeoutLayer<crate::timeout::FromRequest>, L>>;

    /// A [`DeadlineLayer`](crate::timeout::DeadlineLayer): the whole request gets `budget`.
    #[cfg(feature = "timeout")]
    fn deadline(
        self,
        budget: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::DeadlineLayer, L>>;

    /// A configured [`RateLimitLayer`](crate::rate_limit::RateLimitLayer): one limit shared by
    /// every clone. (Not `rate_limit`: tower's own per-instance `ServiceBuilder::rate_limit`
    /// would shadow it.)
    #[cfg(feature = "rate-limit")]
    fn shared_rate_limit(
        self,
        layer: crate::rate_limit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>>;

    /// A [`ProblemLayer`](crate::http::ProblemLayer): rejections and timeouts below become
    /// problem responses.
    #[cfg(feature = "http")]
    fn problem_responses(self) -> ServiceBuilder<Stack<crate::http::ProblemLayer, L>>;

    /// A [`FallbackLayer`](crate::fallback::FallbackLayer) answering every error with
    /// `fallback(error)`.
    #[cfg(feature = "fallback")]
    fn fallback<F>(
        self,
        fallback: F,
    ) -> ServiceBuilder<Stack<crate::fallback::FallbackLayer<F>, L>>;

    /// A configured [`HedgeLayer`](crate::hedge::HedgeLayer).
    #[cfg(feature = "hedge")]
    fn hedge<P>(
        self,
        layer: crate::hedge::HedgeLayer<P>,
    ) -> ServiceBuilder<Stack<crate::hedge::HedgeLayer<P>, L>>;

    /// A configured [`AdaptiveLimitLayer`](crate::adaptive::AdaptiveLimitLayer).
    #[cfg(feature = "adaptive")]
    fn adaptive_limit<A, C>(
        self,
        layer: crate::adaptive::AdaptiveLimitLayer<A, C>,
    ) -> ServiceBuilder<Stack<crate::adaptive::AdaptiveLimitLayer<A, C>, L>>;
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker(
        self,
        breaker: crate::circuit_breaker::Breaker,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer, L>> {
        self.layer(crate::circuit_breaker::CircuitBreakerLayer::new(breaker))
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead(
        self,
        max_concurrent: usize,
        max_wait: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::bulkhead::BulkheadLayer, L>> {
        self.layer(crate::bulkhead::BulkheadLayer::new(max_concurrent).max_wait(max_wait))
    }

    #[cfg(feature = "retry")]
    fn retries<P, B>(
        self,
        layer: crate::retry::RetryLayer<P, B>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer<P, B>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn attempt_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::TimeoutLayer<crate::timeout::FromRequest>, L>> {
        self.layer(crate::timeout::TimeoutLayer::new(timeout).within_deadline())
    }

    #[cfg(feature = "timeout")]
    fn deadline(
        self,
        budget: std::time::Duration,
    ) -> ServiceBuilder<Stack<crate::timeout::DeadlineLayer, L>> {
        self.layer(crate::timeout::DeadlineLayer::new(budget))
    }

    #[cfg(feature = "rate-limit")]
    fn shared_rate_limit(
        self,
        layer: crate::rate_limit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "http")]
    fn problem_responses(self) -> ServiceBuilder<Stack<crate::http::ProblemLayer, L>> {
        self.layer(crate::http::ProblemLayer::new())
    }

    #[cfg(feature = "fallback")]
    fn fallback<F>(
        self,
        fallback: F,
    ) -> ServiceBuilder<Stack<crate::fallback::FallbackLayer<F>, L>> {
        self.layer(crate::fallback::FallbackLayer::new(fallback))
    }

    #[cfg(feature = "hedge")]
    fn hedge<P>(
        self,
        layer: crate::hedge::HedgeLayer<P>,
    ) -> ServiceBuilder<Stack<crate::hedge::HedgeLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "adaptive")]
    fn adaptive_limit<A, C>(
        self,
        layer: crate::adaptive::AdaptiveLimitLayer<A, C>,
    ) -> ServiceBuilder<Stack<crate::adaptive::AdaptiveLimitLayer<A, C>, L>> {
        self.layer(layer)
    }
}
