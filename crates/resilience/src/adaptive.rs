//! Adaptive concurrency limits and load shedding, as Netflix's concurrency-limits does.
//!
//! The limit on calls in flight moves with what the service below can take: [`Aimd`] grows it
//! by one while calls succeed and cuts it by a factor when one fails or takes too long;
//! [`Gradient2`] compares a short-term latency with a long-term baseline and shrinks the limit
//! as queueing makes the short one grow. A call that arrives when the limit is reached is shed
//! at once with [`error::Shed`] instead of queueing: a local rejection (see
//! [`crate::rejection`]), answered with `503` by [`crate::http::ProblemLayer`].
//!
//! Local rejections from layers below (an open circuit, a full bulkhead) are not samples: they
//! say nothing about the latency of the service, so they neither lower nor raise the limit.
//!
//! What counts as a drop is the [`Sampler`]'s to say: by default an error; for an HTTP client,
//! [`HttpSampler`] (feature `http`) also counts the overload answers `503`, `504` and `429`, so
//! that a caller backs off when its upstream sheds load instead of sending it more.
//!
//! # Example
//!
//! ```
//! use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = AdaptiveLimitLayer::new(Aimd::default().initial(10).max(100));
//! let mut service = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|n: u64| async move { Ok::<_, std::convert::Infallible>(n) }));
//! for n in 0..50 {
//!     service.ready().await.unwrap().call(n).await.unwrap();
//! }
//! assert_eq!(layer.limit(), 10, "calls one at a time never use half the limit, so it holds");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::rejection::local_rejection_of;

pub mod error {
    //! Errors returned by the adaptive limiter.

    /// The adaptive limit was reached and the call was shed without being sent.
    ///
    /// A local rejection (see [`crate::rejection`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("load shed: concurrency limit {limit} reached")]
    pub struct Shed {
        pub(crate) limit: usize,
    }

    impl Shed {
        /// The limit in force when the call was shed.
        #[must_use]
        pub fn limit(&self) -> usize {
            self.limit
        }

        pub(crate) fn rejection(self) -> crate::rejection::LocalRejection {
            crate::rejection::LocalRejection {
                kind: crate::rejection::RejectionKind::Shed,
                // A second is long enough for the limit to move: a client that comes back
                // sooner would only be shed again.
                retry_after: Some(std::time::Duration::from_secs(1)),
            }
        }
    }
}

use self::error::Shed;

/// One completed call, as the limit algorithms see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took.
    pub rtt: Duration,
    /// Calls in flight when it started (itself included).
    pub in_flight: usize,
    /// Whether it failed or timed out: a sign of overload.
    pub dropped: bool,
}

/// A concurrency limit algorithm.
pub trait Algorithm {
    /// The limit to start with.
    fn initial_limit(&self) -> usize;

    /// The new limit after `sample`, given the current one.
    fn update(&mut self, limit: usize, sample: Sample) -> usize;
}

/// Additive increase, multiplicative decrease.
///
/// Grows the limit by one after a successful call made while at least half of it was in use
/// (so an idle service does not inflate its limit), and multiplies it by `backoff` after a
/// dropped call or one slower than `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Aimd {
    initial: usize,
    min: usize,
    max: usize,
    backoff: f64,
    timeout: Duration,
}

impl Default for Aimd {
    /// Initial 20, between 1 and 200, backoff 0.9, calls over 5 s count as dropped.
    fn default() -> Self {
        Self {
            initial: 20,
            min: 1,
            max: 200,
            backoff: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Aimd {
    /// The starting limit.
    #[must_use]
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.max(1);
        self
    }

    /// The lowest limit (at least 1).
    #[must_use]
    pub fn min(mut self, min: usize) -> Self {
        self.min = min.max(1);
        self
    }

    /// The highest limit.
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// The factor applied on a drop (clamped to 0.5..1).
    #[must_use]
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = if backoff.is_finite() {
            backoff.clamp(0.5, 1.0)
        } else {
            0.9
        };
        self
    }

    /// Calls slower than this count as dropped.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Algorithm for Aimd {
    fn initial_limit(&self) -> usize {
        self.initial.clamp(self.min, self.max.max(self.min))
    }

    fn update(&mut self, limit: usize, sample: Sample) -> usize {
        let next = if sample.dropped || sample.rtt > self.timeout {
            (limit as f64 * self.backoff).floor() as usize
        } else if sample.in_flight * 2 >= limit {
            limit + 1
        } else {
            limit
        };
        next.clamp(self.min, self.max.max(self.min))
    }
}

/// Netflix's Gradient2: the limit follows the ratio of a long-term latency baseline to the
/// current latency, plus a queue allowance of √limit.
///
/// `gradient = clamp(tolerance × long_rtt / short_rtt, 0.5, 1)`; the new limit is
/// `limit × gradient + √limit`, smoothed, and only grows while the service is using at least
/// half of it. The baseline is an exponential average over `long_window` samples.
#[derive(Debug, Clone, Copy)]
pub struct Gradient2 {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    tolerance: f64,
    long_window: u32,
    long_rtt: Option<f64>,
}

impl Default for Gradient2 {
    /// Initial 20, between 20 and 200, smoothing 0.2, tolerance 1.5, baseline over 600 samples.
    fn default() -> Self {
        Self {
            initial: 20,
            min: 20,
            max: 200,
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
            long_rtt: None,
        }
    }
}

impl Gradient2 {
    /// The starting limit.
    #[must_use]
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.max(1);
        self
    }

    /// The lowest limit (at least 1).
    #[must_use]
    pub fn min(mut self, min: usize) -> Self {
        self.min = min.max(1);
        self
    }

    /// The highest limit.
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// How much latency growth over the baseline is tolerated before the limit shrinks
    /// (at least 1).
    #[must_use]
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = if tolerance.is_finite() {
            tolerance.max(1.0)
        } else {
            1.5
        };
        self
    }
}

impl Algorithm for Gradient2 {
    fn initial_limit(&self) -> usize {
        self.initial.clamp(self.min, self.max.max(self.min))
    }

    fn update(&mut self, limit: usize, sample: Sample) -> usize {
        let short = sample.rtt.as_secs_f64().max(1e-9);
        let long = match self.long_rtt {
            None => short,
            Some(long) => {
                let factor = 2.0 / (f64::from(self.long_window) + 1.0);
                let long = long * (1.0 - factor) + short * factor;
                // Recover quickly when latency drops well below the baseline (Netflix does the
                // same): otherwise an old slow period keeps the limit inflated.
                if long / short > 2.0 {
                    long * 0.95
                } else {
                    long
                }
            }
        };
        self.long_rtt = Some(long);
        let current = limit as f64;
        // An under-used limit carries no information about capacity: do not grow it.
        if (sample.in_flight as f64) < current / 2.0 && !sample.dropped {
            return limit;
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let gradient = if sample.dropped { 0.5 } else { gradient };
        let target = current * gradient + current.sqrt();
        let smoothed = current * (1.0 - self.smoothing) + target * self.smoothing;
        (smoothed.round() as usize).clamp(self.min, self.max.max(self.min))
    }
}

/// Says what a completed call tells the limit.
///
/// Implemented for closures `Fn(Result<&T, &E>) -> Option<bool>`.
pub trait Sampler<T, E> {
    /// `Some(true)`: the call was dropped (a sign of overload); `Some(false)`: it went through;
    /// `None`: it is not a sample at all.
    fn dropped(&self, result: Result<&T, &E>) -> Option<bool>;
}

impl<F, T, E> Sampler<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Option<bool>,
{
    fn dropped(&self, result: Result<&T, &E>) -> Option<bool> {
        self(result)
    }
}

/// Errors are drops, except local rejections from layers below and a caller's deadline running
/// out, which are not samples (the first never reached the service; the second says how much
/// time the caller gave, not how the service is doing).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsDrop;

impl<T, E: 'static> Sampler<T, E> for ErrorsDrop {
    fn dropped(&self, result: Result<&T, &E>) -> Option<bool> {
        match result {
            Ok(_) => Some(false),
            Err(e)
                if local_rejection_of(e).is_some()
                    || crate::deadline::deadline_exceeded_of(e).is_some() =>
            {
                None
            }
            Err(_) => Some(true),
        }
    }
}

/// As [`ErrorsDrop`], and the answers of an overloaded server are drops too: `503 Service
/// Unavailable`, `504 Gateway Timeout` (but for one that says the caller's deadline ran out,
/// see [`crate::http::DEADLINE_RAN_OUT`]) and `429 Too Many Requests`.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpSampler;

#[cfg(feature = "http")]
impl<B, E: 'static> Sampler<http::Response<B>, E> for HttpSampler {
    fn dropped(&self, result: Result<&http::Response<B>, &E>) -> Option<bool> {
        use http::StatusCode;
        match result {
            // The caller's own deadline ran out at the server: not a sample either.
            Ok(response) if crate::http::deadline_ran_out(response.headers()) => None,
            Ok(response) => Some(matches!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            )),
            Err(e) => Sampler::<http::Response<B>, E>::dropped(&ErrorsDrop, Err(e)),
        }
    }
}

struct Shared<A> {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// Calls shed since the layer was built.
    shed: AtomicU64,
    algorithm: Mutex<A>,
}

/// Limits concurrency adaptively with algorithm `A`, judging calls with sampler `C`; all
/// services from one layer share the limit.
pub struct AdaptiveLimitLayer<A, C = ErrorsDrop> {
    shared: Arc<Shared<A>>,
    sampler: C,
}

impl<A, C: Clone> Clone for AdaptiveLimitLayer<A, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            sampler: self.sampler.clone(),
        }
    }
}

impl<A, C> std::fmt::Debug for AdaptiveLimitLayer<A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<A: Algorithm> AdaptiveLimitLayer<A> {
    /// A limiter driven by `algorithm`, counting errors as drops ([`ErrorsDrop`]).
    pub fn new(algorithm: A) -> Self {
        Self {
            shared: Arc::new(Shared {
                limit: AtomicUsize::new(algorithm.initial_limit().max(1)),
                in_flight: AtomicUsize::new(0),
                shed: AtomicU64::new(0),
                algorithm: Mutex::new(algorithm),
            }),
            sampler: ErrorsDrop,
        }
    }
}

impl<A, C> AdaptiveLimitLayer<A, C> {
    /// Judges calls with `sampler` instead (for an HTTP client, [`HttpSampler`]).
    pub fn sampler<C2>(self, sampler: C2) -> AdaptiveLimitLayer<A, C2> {
        AdaptiveLimitLayer {
            shared: self.shared,
            sampler,
        }
    }

    /// The current limit.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Calls in flight now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Calls shed since the layer was built.
    #[must_use]
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }
}

impl<S, A, C: Clone> Layer<S> for AdaptiveLimitLayer<A, C> {
    type Service = AdaptiveLimit<S, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            shared: self.shared.clone(),
            sampler: self.sampler.clone(),
            slot: None,
        }
    }
}

/// Middleware made by [`AdaptiveLimitLayer`].
pub struct AdaptiveLimit<S, A, C = ErrorsDrop> {
    inner: S,
    shared: Arc<Shared<A>>,
    sampler: C,
    /// Taken in `poll_ready`, consumed in `call`.
    slot: Option<Result<Slot<A>, Shed>>,
}

impl<S: Clone, A, C: Clone> Clone for AdaptiveLimit<S, A, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            sampler: self.sampler.clone(),
            slot: None,
        }
    }
}

impl<S: std::fmt::Debug, A, C> std::fmt::Debug for AdaptiveLimit<S, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("limit", &self.shared.limit.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One call in flight; gives its place back when dropped.
struct Slot<A> {
    shared: Arc<Shared<A>>,
    in_flight: usize,
}

impl<A> Drop for Slot<A> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<A> Slot<A> {
    fn try_take(shared: &Arc<Shared<A>>) -> Result<Self, Shed> {
        let limit = shared.limit.load(Ordering::Relaxed);
        let mut current = shared.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                shared.shed.fetch_add(1, Ordering::Relaxed);
                return Err(Shed { limit });
            }
            match shared.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Self {
                        shared: shared.clone(),
                        in_flight: current + 1,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }
}

impl<A: Algorithm> Slot<A> {
    fn sample(&self, rtt: Duration, dropped: bool) {
        // A contended lock means another call is updating the limit right now: skip this sample
        // rather than make a call wait on bookkeeping.
        if let Ok(mut algorithm) = self.shared.algorithm.try_lock() {
            let limit = self.shared.limit.load(Ordering::Relaxed);
            let next = algorithm.update(
                limit,
                Sample {
                    rtt,
                    in_flight: self.in_flight,
                    dropped,
                },
            );
            self.shared.limit.store(next.max(1), Ordering::Relaxed);
        }
    }
}

impl<S, A, C, Req> Service<Req> for AdaptiveLimit<S, A, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    A: Algorithm,
    C: Sampler<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, A, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.is_none() {
            self.slot = Some(Slot::try_take(&self.shared));
        }
        match &self.slot {
            Some(Err(_)) => Poll::Ready(Ok(())),
            _ => match self.inner.poll_ready(cx) {
                Poll::Ready(Err(e)) => {
                    self.slot = None;
                    Poll::Ready(Err(e.into()))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let slot = self
            .slot
            .take()
            .unwrap_or_else(|| Slot::try_take(&self.shared));
        match slot {
            Ok(slot) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                slot: Some(slot),
                sampler: self.sampler.clone(),
                started: Instant::now(),
                shed: None,
            },
            Err(shed) => ResponseFuture {
                inner: None,
                slot: None,
                sampler: self.sampler.clone(),
                started: Instant::now(),
                shed: Some(shed),
            },
        }
    }
}

pin_project! {
    /// Response future of [`AdaptiveLimit`].
    pub struct ResponseFuture<F, A, C = ErrorsDrop> {
        #[pin]
        inner: Option<F>,
        slot: Option<Slot<A>>,
        sampler: C,
        started: Instant,
        shed: Option<Shed>,
    }
}

impl<F, A, C> std::fmt::Debug for ResponseFuture<F, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("shed", &self.shed)
            .finish_non_exhaustive()
    }
}

impl<F, A, C, T, E> Future for ResponseFuture<F, A, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    A: Algorithm,
    C: Sampler<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(this.shed.take().map_or_else(
                || "adaptive limit future polled after completion".into(),
                Into::into,
            )));
        };
        let result = ready!(inner.poll(cx));
        if let Some(slot) = this.slot.take()
            && let Some(dropped) = this.sampler.dropped(result.as_ref())
        {
            slot.sample(this.started.elapsed(), dropped);
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            dropped,
        }
    }

    #[test]
    fn aimd_adds_one_when_busy_and_backs_off_on_a_drop() {
        let mut aimd = Aimd::default().initial(10).min(2).max(12);
        assert_eq!(
            aimd.update(10, sample(5, 5, false)),
            11,
            "half in use: grow"
        );
        assert_eq!(aimd.update(10, sample(5, 4, false)), 10, "under half: hold");
        assert_eq!(aimd.update(10, sample(5, 10, true)), 9, "drop: × 0.9");
        assert_eq!(aimd.update(12, sample(5, 12, false)), 12, "capped at max");
        assert_eq!(aimd.update(2, sample(5, 2, true)), 2, "floored at min");
        assert_eq!(
            aimd.update(10, sample(6_000, 10, false)),
            9,
            "slower than the timeout is a drop"
        );
    }

    #[test]
    fn gradient2_shrinks_when_latency_rises_above_the_baseline_and_recovers() {
        let mut gradient = Gradient2::default().initial(100).min(10).max(200);
        let mut limit = gradient.initial_limit();
        for _ in 0..50 {
            limit = gradient.update(limit, sample(10, limit, false));
        }
        let steady = limit;
        assert!(
            steady >= 100,
            "steady latency at full use lets the limit grow: {steady}"
        );
        for _ in 0..30 {
            limit = gradient.update(limit, sample(100, limit, false));
        }
        assert!(
            limit < steady / 2,
            "ten times the baseline latency shrinks the limit: {limit}"
        );
        for _ in 0..200 {
            limit = gradient.update(limit, sample(10, limit, false));
        }
        assert!(
            limit > steady / 2,
            "it recovers when latency falls back: {limit}"
        );
    }
}
