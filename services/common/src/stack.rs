//! The server stack of every service (ARCHITECTURE.md §3), in one place.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd};
use mainstay_resilience::http::ProblemLayer;
use mainstay_resilience::metrics::ResilienceCollector;
use mainstay_resilience::timeout::DeadlineLayer;
use mainstay_telemetry::{Health, Metrics, ServerLayer, routes};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};

use crate::config::ServiceConfig;
use crate::idempotency::{IdempotencyLayer, SqlIdempotency};
use crate::store::{Database, StoreError};

/// What a service shares between its stack, its handlers and its shutdown: configuration,
/// metrics and health checks.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The service's configuration.
    pub config: ServiceConfig,
    /// The registry `/metrics` serves; add the service's own metrics to it.
    pub metrics: Metrics,
    /// The resilience layers' state, exported in `metrics`: register the breakers, bulkheads,
    /// budgets and limits of the service's clients here (the server's own adaptive limit is
    /// registered by [`stack`](Self::stack), under the service's name).
    pub resilience: ResilienceCollector,
    /// The readiness checks `/health/ready` runs; add the service's dependencies to it.
    pub health: Health,
    /// The service's background tasks (relay, consumers, sweepers): started by the service,
    /// watched by readiness, stopped in order by [`serve`](crate::serve) after the last request.
    pub tasks: crate::tasks::Supervisor,
    /// `Idempotency-Key` on the service's `POST`s and `PATCH`es, once it has a database.
    idempotency: Option<IdempotencyLayer>,
    /// The server's adaptive concurrency limit: one per service, whatever serves its routes.
    limit: AdaptiveLimitLayer<Aimd>,
}

/// Steps 4 to 6 of [`Kit::stack`] as one layer (problems for their errors, the deadline,
/// adaptive concurrency): [`Kit::limits`].
pub type Limits = ServiceBuilder<
    Stack<AdaptiveLimitLayer<Aimd>, Stack<DeadlineLayer, Stack<ProblemLayer, Identity>>>,
>;

impl Kit {
    /// A kit with empty metrics and no checks.
    #[must_use]
    pub fn new(config: ServiceConfig) -> Self {
        let metrics = Metrics::new();
        let resilience = ResilienceCollector::new();
        metrics.register_collector(Box::new(resilience.clone()));
        let limit = AdaptiveLimitLayer::new(Aimd::default());
        resilience.adaptive_limit(&config.name, &limit);
        let health = Health::new();
        Self {
            config,
            metrics,
            resilience,
            tasks: crate::tasks::Supervisor::reporting_to(&health),
            health,
            idempotency: None,
            limit,
        }
    }

    /// Honours `Idempotency-Key` on the service's `POST`s and `PATCH`es, keeping answers in
    /// `database` (its kit migrations are run here); see [`crate::idempotency`]. Every service
    /// with a database calls this: the gateway retries a keyed `POST` only to services that do.
    ///
    /// # Errors
    ///
    /// The kit's migrations fail.
    pub async fn with_idempotency(mut self, database: &Database) -> Result<Self, StoreError> {
        database.migrate_kit().await?;
        self.idempotency = Some(
            IdempotencyLayer::new(
                std::sync::Arc::new(SqlIdempotency::new(database.clone())),
                self.config.body_limit,
                // A request runs at most the request timeout; past twice that, it died.
                self.config.request_timeout.saturating_mul(2),
            )
            .max_running(self.config.keyed_max_running),
        );
        Ok(self)
    }

    /// Completes when every keyed request started so far has finished, those whose caller
    /// went away included (at once without [`with_idempotency`](Self::with_idempotency)).
    /// [`serve`](crate::serve) waits on it after the server stops, within the grace period.
    pub async fn keyed_requests_finished(&self) {
        if let Some(idempotency) = &self.idempotency {
            idempotency.finished().await;
        }
    }

    /// Wraps the service's routes in the standard server stack. The request meets, in order:
    ///
    /// 1. the request id, the span (parented by the caller's `traceparent`) and RED metrics
    ///    ([`ServerLayer`]); they see every request, probes and unknown paths included;
    /// 2. `/metrics`, `/health/live` and `/health/ready`, answered here, outside the limits
    ///    below, so that a saturated service can still say so;
    /// 3. the body limit (413 as problem+json through [`Json`](crate::Json));
    /// 4. the answer for errors of the next layers: 504 or 503 as problem+json;
    /// 5. the deadline: the caller's `x-request-deadline` (raised to `DEADLINE_FLOOR_MS`) or
    ///    `REQUEST_TIMEOUT_MS`, whichever comes first, and the request timed out at it;
    /// 6. adaptive concurrency (AIMD), shedding load with 503 when latency rises;
    /// 7. `Idempotency-Key` on `POST` and `PATCH`, with [`with_idempotency`](Self::with_idempotency);
    /// 8. the routes (and the service's own auth layer, which it adds to them).
    pub fn stack(&self, api: Router) -> Router {
        let api = match &self.idempotency {
            Some(idempotency) => api.layer(idempotency.clone()),
            None => api,
        };
        // One `layer` call per group: axum boxes every route again on each call and clones
        // every box on every request.
        // 3: the body limit, read by the `Json`/`Bytes` extractors; then 4 to 6.
        let protected = ServiceBuilder::new()
            .layer(DefaultBodyLimit::max(self.config.body_limit))
            .layer(self.limits());
        api.layer(protected)
            .merge(routes(&self.metrics, &self.health))
            .layer(self.server_layer())
    }

    /// Step 1 of [`stack`](Self::stack): request ids, sampling, spans and RED metrics into
    /// [`metrics`](Self::metrics), for a service that assembles its own stack.
    #[must_use]
    pub fn server_layer(&self) -> ServerLayer {
        ServerLayer::new(&self.metrics).sampling(self.config.sampling)
    }

    /// Steps 4 to 6 of [`stack`](Self::stack), for a service that assembles its own stack
    /// (it bounds bodies itself: the body limit of step 3 is an axum extractor's). Every call
    /// shares the one adaptive limit, exported under the service's name.
    #[must_use]
    pub fn limits(&self) -> Limits {
        let timeout = self.config.request_timeout;
        ServiceBuilder::new()
            // 4: timeouts and shedding are errors below; axum needs responses.
            .layer(ProblemLayer::new())
            // 5: one deadline for the whole request, carried to outbound calls, and enforced
            // (the deadline layer times the request out itself: a timeout layer under it would
            // arm a second timer for the same instant).
            .layer(DeadlineLayer::new(timeout).floor(self.config.deadline_floor))
            // 6: shed before the handler queues work behind a slow dependency.
            .layer(self.limit.clone())
    }
}
