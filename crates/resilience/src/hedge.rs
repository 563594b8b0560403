//! Hedging: when a call is slower than most, send a second one and take whichever answers first.
//!
//! The hedge delay is a latency percentile (p95 by default) of the last complete period, kept in
//! a lock-free histogram. A call still running after that delay gets one hedge, if
//!
//! * the request may be sent twice (the retry [`Policy`] decides, so
//!   [`HttpRetryPolicy`](crate::http::HttpRetryPolicy) hedges only idempotent requests),
//! * the [`RetryBudget`] given to [`budget`](HedgeLayer::budget) allows one more attempt, and
//! * the request's deadline leaves time for it.
//!
//! The first success wins and the other call is dropped (cancelled); if both fail, the last error
//! is returned.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::hedge::HedgeLayer;
//! use mainstay_resilience::retry::{RetryBudget, RetryErrors};
//! use tower::{ServiceBuilder, service_fn};
//!
//! let service = ServiceBuilder::new()
//!     // Hedge at the p99 of the last 10 s, at most 5 % extra requests (plus 2 per second).
//!     .layer(
//!         HedgeLayer::new(RetryErrors)
//!             .percentile(0.99)
//!             .budget(RetryBudget::new(Duration::from_secs(10), 2, 0.05)),
//!     )
//!     .service(service_fn(|n: u64| async move { Ok::<_, std::io::Error>(n) }));
//! # let _ = service;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::histogram::RotatingHistogram;
use crate::retry::{Policy, RetryBudget};

#[derive(Debug)]
struct Shared {
    latencies: RotatingHistogram,
    budget: Option<RetryBudget>,
}

/// Hedges slow calls; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HedgeLayer<P> {
    policy: P,
    percentile: f64,
    period: Duration,
    min_samples: u32,
    budget: Option<RetryBudget>,
    shared: Arc<Shared>,
}

impl<P> HedgeLayer<P> {
    /// Hedges requests `policy` can clone, at the p95 latency of the last 10 s once that period
    /// saw at least 20 calls, with no budget.
    pub fn new(policy: P) -> Self {
        let (percentile, period, min_samples) = (0.95, Duration::from_secs(10), 20);
        Self {
            policy,
            percentile,
            period,
            min_samples,
            budget: None,
            shared: Arc::new(Shared {
                latencies: RotatingHistogram::new(period, percentile, min_samples),
                budget: None,
            }),
        }
    }

    /// Hedge at this latency percentile (0..=1) instead of p95.
    #[must_use]
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self.rebuild()
    }

    /// Measure latencies over periods of this length instead of 10 s.
    #[must_use]
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self.rebuild()
    }

    /// Do not hedge until a period saw this many calls (default 20).
    #[must_use]
    pub fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self.rebuild()
    }

    /// Charge every hedge to `budget` (each request deposits into it).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self.rebuild()
    }

    /// The latency statistics are shared by every service this layer makes; settings are fixed
    /// before the layer is used, so rebuilding them here loses nothing.
    fn rebuild(mut self) -> Self {
        self.shared = Arc::new(Shared {
            latencies: RotatingHistogram::new(self.period, self.percentile, self.min_samples),
            budget: self.budget.clone(),
        });
        self
    }

    /// The current hedge delay, once enough latencies were seen.
    #[must_use]
    pub fn delay(&self) -> Option<Duration> {
        self.shared.latencies.delay()
    }
}

impl<S, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            policy: self.policy.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Middleware made by [`HedgeLayer`].
#[derive(Debug, Clone)]
pub struct Hedge<S, P> {
    inner: S,
    policy: P,
    shared: Arc<Shared>,
}

impl<S, P> Hedge<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Everything needed to send the hedge later.
struct Plan<S, P, Req> {
    service: S,
    request: Req,
    policy: P,
    delay: Duration,
}

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if let Some(budget) = &self.shared.budget {
            budget.deposit();
        }
        // Clone the request and the service only when a hedge is possible at all.
        let plan = self.shared.latencies.delay().and_then(|delay| {
            let request = self.policy.clone_request(&request)?;
            Some(Plan {
                service: self.inner.clone(),
                request,
                policy: self.policy.clone(),
                delay,
            })
        });
        ResponseFuture {
            primary: Some(self.inner.call(request)),
            hedge: None,
            timer: None,
            plan,
            failed: None,
            started: Instant::now(),
            shared: self.shared.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`Hedge`].
    pub struct ResponseFuture<S, P, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        hedge: Option<S::Future>,
        // Boxed and made lazily: only slow calls pay for a timer.
        timer: Option<Pin<Box<Sleep>>>,
        plan: Option<Plan<S, P, Req>>,
        failed: Option<BoxError>,
        started: Instant,
        shared: Arc<Shared>,
    }
}

impl<S: Service<Req>, P, Req> std::fmt::Debug for ResponseFuture<S, P, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedged", &self.hedge.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, P, Req> Future for ResponseFuture<S, P, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(primary) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = primary.poll(cx)
            {
                this.primary.set(None);
                this.shared.latencies.record(this.started.elapsed());
                match result {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(e) if this.hedge.is_none() => return Poll::Ready(Err(e.into())),
                    Err(e) => *this.failed = Some(e.into()),
                }
            }
            if let Some(hedge) = this.hedge.as_mut().as_pin_mut()
                && let Poll::Ready(result) = hedge.poll(cx)
            {
                this.hedge.set(None);
                match result {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(e) if this.primary.is_none() => return Poll::Ready(Err(e.into())),
                    Err(e) => *this.failed = Some(e.into()),
                }
            }
            if this.primary.is_none() && this.hedge.is_none() {
                return Poll::Ready(Err(this
                    .failed
                    .take()
                    .unwrap_or_else(|| "hedge future polled after completion".into())));
            }
            // Still waiting: is it time to hedge?
            let Some(plan) = this.plan.as_mut() else {
                return Poll::Pending;
            };
            let timer = this.timer.get_or_insert_with(|| {
                Box::pin(sleep(plan.delay.saturating_sub(this.started.elapsed())))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline_allows = plan
                .policy
                .deadline(&plan.request)
                .is_none_or(|deadline| deadline.remaining() > plan.delay);
            if !deadline_allows || this.primary.is_none() {
                *this.plan = None;
                continue;
            }
            match plan.service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    *this.plan = None;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            if this.shared.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                *this.plan = None;
                continue;
            }
            let Some(Plan {
                mut service,
                request,
                ..
            }) = this.plan.take()
            else {
                continue;
            };
            this.hedge.set(Some(service.call(request)));
        }
    }
}
