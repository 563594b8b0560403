//! The outbound client stack every service calls another with: one client per upstream
//! service, the client stack of ARCHITECTURE.md §3 over a balancer fed by discovery (the
//! gateway's upstreams, and the calls orders makes to catalog and payments).
//!
//! ```text
//! trace/inject + RED metrics   ClientLayer (mainstay-telemetry)
//! overall deadline             the server request's deadline, or REQUEST_TIMEOUT_MS
//! adaptive limit               AIMD on the calls in flight to the service: its 503s, 504s,
//!                              429s and timeouts shrink it, and what exceeds it is shed at
//!                              once with a 503 and Retry-After (a flash crowd is served at the
//!                              service's capacity, and the rest answered fast)
//! retry                        idempotent requests only, budgeted; never a local rejection
//!                              (an open breaker above, no endpoint at all)
//! bulkhead                     UPSTREAM_MAX_CONCURRENT calls at once, no queue
//! shared → balance             p2c on PeakEWMA, outlier ejection (mainstay-discovery), one
//!                              balancer for every caller, behind a lock rather than a task
//!   per endpoint: circuit breaker → per-attempt timeout → the endpoint's own pool of
//!                              kept-alive HTTP/1 connections (`pool`)
//!
//! Only what says an endpoint is broken (refused or reset connections, `5xx` other than a
//! `503` with `Retry-After`) opens its breaker or ejects it, and never the last endpoint:
//! slowness and shedding are for the adaptive limit to back off from and for PeakEWMA to weigh,
//! so a flash crowd is served at the service's capacity instead of cutting it off.
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::Full;
use mainstay_discovery::balance::{BalanceOptions, Balanced, BrokenOnly, Shared};
use mainstay_discovery::{Endpoint, Snapshot};
use mainstay_resilience::ServiceBuilderExt;
use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd, HttpSampler};
use mainstay_resilience::bulkhead::BulkheadLayer;
use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer};
use mainstay_resilience::http::{self as resilience_http, HttpRetryPolicy};
use mainstay_resilience::metrics::ResilienceCollector;
use mainstay_resilience::retry::{RetryBudget, RetryLayer};
use mainstay_telemetry::{ClientLayer, Metrics};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

mod pool;

use self::pool::{Pool, PoolSettings};

/// A request to an upstream: the body is buffered, so that it can be retried.
pub type UpstreamRequest = Request<Full<Bytes>>;

/// A client of one upstream service. Cheap to clone.
pub type Upstream = BoxCloneSyncService<UpstreamRequest, Response<Body>, BoxError>;

/// How upstream clients behave.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// The budget of a whole call, retries included, unless the request's deadline is sooner.
    pub deadline: Duration,
    /// One attempt.
    pub attempt_timeout: Duration,
    /// Calls in flight per service.
    pub max_concurrent: usize,
}

/// Sends a request to one endpoint, over its own pool of kept-alive connections.
#[derive(Clone)]
struct Dial {
    pool: Result<Pool, Arc<str>>,
}

impl Service<UpstreamRequest> for Dial {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: UpstreamRequest) -> Self::Future {
        match &self.pool {
            Ok(pool) => Box::pin(pool.clone().send(request)),
            Err(bad) => {
                let error: BoxError = format!("the endpoint {bad} is not a valid authority").into();
                Box::pin(std::future::ready(Err(error)))
            }
        }
    }
}

/// A client of `service`, balanced over the endpoints `source` publishes.
///
/// # Panics
///
/// Outside a tokio runtime.
#[must_use]
pub fn upstream(
    service: &'static str,
    source: watch::Receiver<Snapshot>,
    settings: ClientSettings,
    metrics: &Metrics,
    resilience: &ResilienceCollector,
) -> Upstream {
    let breakers = resilience.clone();
    let make = move |endpoint: &Endpoint| {
        // Opens at half of the last 20 calls failing (at least 10), and probes again after 5 s.
        let breaker = Breaker::builder()
            .count_window(20)
            .minimum_calls(10)
            .failure_rate(0.5)
            .open_for(Duration::from_secs(5))
            .build()
            .expect("a valid breaker configuration");
        // Exported while the endpoint's stack lives: it leaves with the endpoint.
        let authority = endpoint.authority();
        breakers.breaker(service, &authority, &breaker);
        ServiceBuilder::new()
            // Only what says the endpoint is broken opens it: its slowness and its requests to
            // back off are for the balancer's latency estimate and the adaptive limit above.
            .layer(CircuitBreakerLayer::new(breaker).classifier(resilience_http::BrokenOnly))
            .attempt_timeout(settings.attempt_timeout)
            .service(Dial {
                pool: authority
                    .parse::<Authority>()
                    .map(|authority| Pool::new(authority, PoolSettings::default()))
                    .map_err(|_| Arc::from(authority.as_str())),
            })
    };
    let balanced = Balanced::new(service, source, make, BrokenOnly, BalanceOptions::default());
    // Starts where most services are comfortable and finds the service's capacity from its
    // answers; never below a floor that keeps a slow service reachable.
    let limit = AdaptiveLimitLayer::new(
        Aimd::default()
            .initial(64)
            .min(4)
            .max(settings.max_concurrent)
            // Backs off at half the attempt timeout: before calls start timing out.
            .timeout(settings.attempt_timeout / 2),
    )
    .sampler(HttpSampler);
    let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
    let bulkhead = BulkheadLayer::new(settings.max_concurrent);
    resilience.adaptive_limit(service, &limit);
    resilience.retry_budget(service, &budget);
    resilience.bulkhead(service, &bulkhead);
    let client = ServiceBuilder::new()
        .layer(ClientLayer::new(service, metrics))
        .deadline(settings.deadline)
        .adaptive_limit(limit)
        .retries(
            RetryLayer::new()
                .policy(HttpRetryPolicy)
                .max_attempts(3)
                .budget(budget),
        )
        .layer(bulkhead)
        .service(Shared::new(balanced))
        .map_err(Into::into);
    BoxCloneSyncService::new(client)
}
