use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::error::{InvalidQuota, RateLimited};
use super::future::ResponseFuture;
use super::{NoReport, Report, Status};
use crate::BoxError;
use crate::keyed::{MakeKey, Registry};

/// governor's clock, read from tokio so paused-time tests drive the limiter. Instants are
/// durations since the limiter was built (governor implements its `Reference` for `Duration`).
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    base: Instant,
}

impl GovernorClock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.base)
    }
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// The one limiter of a [`RateLimitLayer`], and the calls it refused.
struct Direct {
    limiter: DirectLimiter,
    refused: AtomicU64,
}
type Keyed<K> = RateLimiter<K, BoundedStore<K>, TokioClock, StateInformationMiddleware>;

/// Keyed GCRA state in the bounded registry of [`crate::keyed`]: at most `max_keys` keys,
/// replaced by the CLOCK algorithm at a constant amortised cost per new key.
struct BoundedStore<K>(Arc<Registry<K, Arc<InMemoryState>>>);

impl<K: std::hash::Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // No call holds a limit's state across an await: any key may be replaced.
        let state = self.0.get_or_insert(key, Arc::default);
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    quota: Quota,
    burst: u32,
    period: Duration,
}

impl Limits {
    fn new(burst: u32, period: Duration) -> Result<Self, InvalidQuota> {
        let burst_nz = NonZeroU32::new(burst).ok_or(InvalidQuota)?;
        let quota = Quota::with_period(period / burst)
            .ok_or(InvalidQuota)?
            .allow_burst(burst_nz);
        Ok(Self {
            quota,
            burst,
            period,
        })
    }

    fn admitted(&self, snapshot: &StateSnapshot) -> Status {
        let remaining = snapshot.remaining_burst_capacity().min(self.burst);
        Status {
            limit: self.burst,
            remaining,
            reset: (self.period / self.burst) * (self.burst - remaining),
            period: self.period,
        }
    }

    fn refused(&self, not_until: &NotUntil<Duration>, clock: &TokioClock) -> RateLimited {
        RateLimited {
            retry_after: not_until.wait_time_from(clock.now()),
            limit: self.burst,
            period: self.period,
        }
    }
}

/// One limit for every request through every service this layer makes; see the
/// [module docs](super).
#[derive(Clone)]
pub struct RateLimitLayer<H = NoReport> {
    limiter: Arc<Direct>,
    clock: TokioClock,
    limits: Limits,
    report: H,
}

impl<H> fmt::Debug for RateLimitLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("burst", &self.limits.burst)
            .field("period", &self.limits.period)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Admits `burst` calls at once and refills them evenly over `period` (so the sustained rate
    /// is `burst / period`).
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `burst` is zero or `period / burst` is zero.
    pub fn new(burst: u32, period: Duration) -> Result<Self, InvalidQuota> {
        let limits = Limits::new(burst, period)?;
        let clock = TokioClock {
            base: Instant::now(),
        };
        Ok(Self {
            limiter: Arc::new(Direct {
                limiter: RateLimiter::direct_with_clock(limits.quota, clock)
                    .with_middleware::<StateInformationMiddleware>(),
                refused: AtomicU64::new(0),
            }),
            clock,
            limits,
            report: NoReport,
        })
    }

    /// `per_second` calls per second, in bursts of up to `per_second`.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `per_second` is zero.
    pub fn per_second(per_second: u32) -> Result<Self, InvalidQuota> {
        Self::new(per_second, Duration::from_secs(1))
    }
}

impl<H> RateLimitLayer<H> {
    /// Calls refused since the layer was built.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.limiter.refused.load(Ordering::Relaxed)
    }

    /// Gives every response this layer admits the draft's `RateLimit` and `RateLimit-Policy`
    /// headers (see [`crate::http::set_rate_limit_headers`]).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn headers(self) -> RateLimitLayer<super::Headers> {
        RateLimitLayer {
            limiter: self.limiter,
            clock: self.clock,
            limits: self.limits,
            report: super::Headers,
        }
    }
}

impl<S, H: Clone> Layer<S> for RateLimitLayer<H> {
    type Service = RateLimit<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// Global rate-limit middleware made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S, H = NoReport> {
    inner: S,
    layer: RateLimitLayer<H>,
}

impl<S: fmt::Debug, H> fmt::Debug for RateLimit<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, H> RateLimit<S, H> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, H, Req> Service<Req> for RateLimit<S, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: Report<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let layer = &self.layer;
        match layer.limiter.limiter.check() {
            Ok(snapshot) => ResponseFuture::called(
                self.inner.call(request),
                layer.report.clone(),
                layer.limits.admitted(&snapshot),
            ),
            Err(not_until) => {
                layer.limiter.refused.fetch_add(1, Ordering::Relaxed);
                ResponseFuture::limited(layer.limits.refused(&not_until, &layer.clock))
            }
        }
    }
}

struct KeyedShared<K: std::hash::Hash + Eq + Clone> {
    limiter: Keyed<K>,
    refused: AtomicU64,
    keys: Arc<Registry<K, Arc<InMemoryState>>>,
    clock: TokioClock,
    limits: Limits,
}

/// One limit per key (see [`MakeKey`]), shared by every service this layer makes.
pub struct KeyedRateLimitLayer<M, K: std::hash::Hash + Eq + Clone, H = NoReport> {
    make_key: M,
    max_keys: usize,
    shared: Arc<KeyedShared<K>>,
    report: H,
}

impl<M: Clone, K: std::hash::Hash + Eq + Clone, H: Clone> Clone for KeyedRateLimitLayer<M, K, H> {
    fn clone(&self) -> Self {
        Self {
            make_key: self.make_key.clone(),
            max_keys: self.max_keys,
            shared: self.shared.clone(),
            report: self.report.clone(),
        }
    }
}

impl<M, K: std::hash::Hash + Eq + Clone, H> fmt::Debug for KeyedRateLimitLayer<M, K, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("burst", &self.shared.limits.burst)
            .field("period", &self.shared.limits.period)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<M, K> KeyedRateLimitLayer<M, K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Admits `burst` calls at once per key, refilled evenly over `period`. Keys are made by
    /// `make_key`; at most 100,000 keys are tracked (see [`max_keys`](Self::max_keys)).
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `burst` is zero or `period / burst` is zero.
    pub fn new(burst: u32, period: Duration, make_key: M) -> Result<Self, InvalidQuota> {
        let limits = Limits::new(burst, period)?;
        let clock = TokioClock {
            base: Instant::now(),
        };
        let max_keys = 100_000;
        let keys = Arc::new(Registry::new(max_keys, |_: &Arc<InMemoryState>| false));
        Ok(Self {
            make_key,
            max_keys,
            shared: Arc::new(KeyedShared {
                limiter: Keyed::new(limits.quota, BoundedStore(Arc::clone(&keys)), clock),
                refused: AtomicU64::new(0),
                keys,
                clock,
                limits,
            }),
            report: NoReport,
        })
    }
}

impl<M, K, H> KeyedRateLimitLayer<M, K, H>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Gives every response this layer admits the draft's `RateLimit` and `RateLimit-Policy`
    /// headers for its key's limit (see [`crate::http::set_rate_limit_headers`]).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn headers(self) -> KeyedRateLimitLayer<M, K, super::Headers> {
        KeyedRateLimitLayer {
            make_key: self.make_key,
            max_keys: self.max_keys,
            shared: self.shared,
            report: super::Headers,
        }
    }

    /// Track at most `max_keys` keys (at least one; the bound is shared by every clone of
    /// this layer). Beyond it, a new key replaces one not used recently (see
    /// [`crate::keyed`]), at a constant amortised cost, so a flood of distinct keys costs
    /// neither memory nor time beyond the bound; a replaced key starts again with a full burst.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self.shared.keys.set_max_keys(self.max_keys);
        self
    }

    /// Keys currently tracked.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.shared.keys.len()
    }

    /// Takes one call from `key`'s limit, outside any service: for keys only a handler knows,
    /// such as the account named in a login form. Shares state with the services this layer
    /// makes. The [`Status`] says what is left, for the response's `RateLimit` headers.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when `key` is over its limit.
    pub fn check(&self, key: &K) -> Result<Status, RateLimited> {
        let shared = &*self.shared;
        shared
            .limiter
            .check_key(key)
            .map(|snapshot| shared.limits.admitted(&snapshot))
            .map_err(|not_until| {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                shared.limits.refused(&not_until, &shared.clock)
            })
    }

    /// Calls refused since the layer was built, over all keys.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl<S, M: Clone, K: std::hash::Hash + Eq + Clone, H: Clone> Layer<S>
    for KeyedRateLimitLayer<M, K, H>
{
    type Service = KeyedRateLimit<S, M, K, H>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// Per-key rate-limit middleware made by [`KeyedRateLimitLayer`].
pub struct KeyedRateLimit<S, M, K: std::hash::Hash + Eq + Clone, H = NoReport> {
    inner: S,
    layer: KeyedRateLimitLayer<M, K, H>,
}

impl<S: Clone, M: Clone, K: std::hash::Hash + Eq + Clone, H: Clone> Clone
    for KeyedRateLimit<S, M, K, H>
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, M, K: std::hash::Hash + Eq + Clone, H> fmt::Debug
    for KeyedRateLimit<S, M, K, H>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M, H, Req> Service<Req> for KeyedRateLimit<S, M, M::Key, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: MakeKey<Req>,
    H: Report<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.layer.make_key.make_key(&request);
        match self.layer.check(&key) {
            Ok(status) => {
                ResponseFuture::called(self.inner.call(request), self.layer.report.clone(), status)
            }
            Err(limited) => ResponseFuture::limited(limited),
        }
    }
}
