//! `shop-gateway`: the one front door of the commerce system.
//!
//! The public API lives under `/api/v1`. Each route names the service behind it, and the
//! gateway calls that service through a client balanced over its discovered endpoints. A
//! proxied request goes down one stack of named layers over one service, top to bottom
//! ([`app`] assembles it; no router is on the way):
//!
//! | layer | module | what it does |
//! | --- | --- | --- |
//! | CORS, security headers | here ([`app`]) | an explicit origin allow-list; `Strict-Transport-Security`, `X-Content-Type-Options`, `Content-Security-Policy`, `Referrer-Policy` on every response |
//! | [`TraceTrustLayer`] | [`trust`] | a client's `traceparent`, `tracestate` and `baggage` dropped unless it is a trusted proxy: the gateway's sampling decides |
//! | [`RouteLayer`] | [`routes`](mod@routes) | the route and upstream target, resolved once against the route table and the API document, with the document's template as the route label; what the gateway answers itself (its page, the document, probes, metrics) goes to its own router instead |
//! | server layer | `shop_common::Kit::server_layer` | request id, sampling, span, RED metrics |
//! | limits | `shop_common::Kit::limits` | the deadline (the caller's, floored, or the request timeout) and its enforcement, adaptive concurrency, their failures as problems |
//! | [`AdmissionLayer`] | [`admission`] | the client address, the bearer token as the route's [`Access`] says, one request from the caller's rate limit, `RateLimit` headers |
//! | proxy | `proxy` | 404 beyond the document, 405 with `Allow` within it; the body buffered (413 beyond the limit), the upstream request built once, hop-by-hop headers dropped both ways |
//! | client stack | `shop_common::client` | client span and metrics, deadline, adaptive limit, budgeted retries, bulkhead, p2c over discovered endpoints, breaker, attempt timeout, the endpoint's own pool of kept-alive HTTP/1 connections (the kit's, as every service's outbound calls) |
//!
//! A route marked [`Route::cached`] is answered from a shared response cache on `GET`
//! (mainstay-cache). Upstream failures become 502, 503 or 504 problems, never a hang.
//!
//! `GET /api/v1/home` aggregates products, the caller's cart and recommendations, each with
//! its own timeout and fallback, behind the same admission. `/console` is the ops console
//! ([`console`]): a page, and admin routes behind the same admission. `GET /api/v1/openapi.json`
//! describes the public API, and `/docs` serves Swagger UI over it. These, `/metrics` and
//! `/health/*` are an axum router in the kit's server stack (`shop_common::Kit::stack`),
//! sharing the proxy's metrics and adaptive limit.

pub mod admission;
pub mod config;
pub mod console;
mod discovery;
mod home;
mod openapi;
mod problems;
mod proxy;
pub mod routes;
pub mod trust;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};
use mainstay_auth::Validator;
use mainstay_cache::CacheCollector;
use mainstay_cache::http::{ResponseCacheLayer, UriKey};
use mainstay_discovery::Snapshot;
use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
use mainstay_telemetry::ServerTelemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shop_common::tasks::Stage;
use shop_common::{Kit, Limits};
use shop_messaging::config::TransportConfig;
use shop_messaging::{Followed, follow_config};
use tokio::sync::watch;
use tower::util::{BoxCloneSyncService, Either, MapResponse, MapResponseLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

pub use self::admission::{Admission, AdmissionLayer, Caller};
pub use self::config::{Discovery, GatewayConfig};
pub use self::discovery::discover;
pub use self::proxy::Proxy;
use self::proxy::Upstreams;
pub use self::routes::{
    Access, BACKENDS, Backend, Mount, Resolved, Route, RouteLayer, Routed, Unrouted, resolve,
    routes,
};
pub use self::trust::{TraceTrust, TraceTrustLayer};
use shop_common::client::{self as upstream, ClientSettings};

struct Inner {
    upstreams: Arc<Upstreams>,
    /// The response cache of each service with cached routes.
    caches: Vec<(&'static str, ResponseCacheLayer)>,
    admission: AdmissionLayer,
    trace_trust: TraceTrustLayer,
    body_limit: usize,
    home_part_timeout: Duration,
    console_tick: Duration,
    /// The kit's breakers and the rest (the console shows and switches them).
    resilience: mainstay_resilience::metrics::ResilienceCollector,
    /// The kit's metrics (the console reads the refusals there).
    metrics: mainstay_telemetry::Metrics,
}

/// The gateway: its upstream clients and its admission. Cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "upstreams",
                &self.0.upstreams.services().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A rate limit of zero.
    #[error("bad rate limit: {0}")]
    Limit(String),
    /// A service's discovery is not configured.
    #[error("no discovery configured for `{0}`")]
    NoDiscovery(&'static str),
    /// Discovery could not start.
    #[error("discovery: {0}")]
    Discovery(String),
}

impl Gateway {
    /// A gateway over `sources` (one per service in [`BACKENDS`]), validating tokens
    /// with `validator` and recording upstream calls into `kit`'s metrics.
    ///
    /// # Errors
    ///
    /// A rate limit of zero, or a service without a source.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(
        config: &GatewayConfig,
        kit: &Kit,
        validator: Validator,
        sources: &HashMap<&'static str, watch::Receiver<Snapshot>>,
    ) -> Result<Self, StartError> {
        let settings = ClientSettings {
            deadline: config.service.request_timeout,
            attempt_timeout: config.attempt_timeout,
            max_concurrent: config.max_concurrent,
        };
        let mut upstreams = Upstreams::default();
        let mut caches = Vec::new();
        for &Backend { name, .. } in BACKENDS {
            let source = sources.get(name).ok_or(StartError::NoDiscovery(name))?;
            let client = upstream::upstream(
                name,
                source.clone(),
                settings,
                &kit.metrics,
                &kit.resilience,
            );
            // A service with cached routes gets a second client, through its response cache.
            let cached = routes()
                .iter()
                .any(|route| route.cached && route.service == name)
                .then(|| {
                    let cache = ResponseCacheLayer::new(config.response_cache_bytes);
                    caches.push((name, cache.clone()));
                    let stats = cache.clone();
                    kit.metrics.register_collector(Box::new(CacheCollector::new(
                        format!("gateway_{name}_responses"),
                        move || stats.stats(),
                    )));
                    BoxCloneSyncService::new(
                        cache
                            .make_key(UriKey)
                            .layer(client.clone())
                            .map_response(|response| response.map(Body::new)),
                    )
                });
            upstreams.insert(name, client, cached);
        }
        let (burst, period) = config.per_principal;
        let per_principal = KeyedRateLimitLayer::new(burst, period, ())
            .map_err(|e| StartError::Limit(e.to_string()))?;
        let (burst, period) = config.per_ip;
        let per_ip = KeyedRateLimitLayer::new(burst, period, ())
            .map_err(|e| StartError::Limit(e.to_string()))?;
        kit.resilience
            .keyed_rate_limit("gateway_per_principal", &per_principal);
        kit.resilience.keyed_rate_limit("gateway_per_ip", &per_ip);
        Ok(Self(Arc::new(Inner {
            upstreams: Arc::new(upstreams),
            caches,
            trace_trust: TraceTrustLayer::new(&config.trusted_proxies),
            admission: AdmissionLayer::new(
                validator,
                per_principal,
                per_ip,
                config.trusted_proxies.clone(),
            ),
            body_limit: config.service.body_limit,
            home_part_timeout: config.home_part_timeout,
            console_tick: config.console_tick,
            resilience: kit.resilience.clone(),
            metrics: kit.metrics.clone(),
        })))
    }
}

impl Gateway {
    /// Keeps the response caches true to their services: any message a service with cached
    /// routes publishes on `<service>.events` drops that service's cached responses (a change
    /// to one product touches every listing it is in). What a service does not announce
    /// (catalog announces price changes) expires with the answers' `max-age` (5 to 10 s for
    /// catalog).
    /// A gap in which one may have been missed (the subscription opened, or opened again after
    /// it was lost) drops them all.
    ///
    /// It runs under `kit.tasks` (stopped by `serve` after the last request), and opens
    /// `transport` itself, again with back-off until it can: the gateway serves meanwhile, its
    /// cached answers bounded by their `max-age` alone.
    ///
    /// Each drop is counted in `gateway_cache_invalidations_total{service, cause}`, where
    /// `cause` is `event` or `gap`.
    pub fn invalidate_on_events(&self, kit: &Kit, transport: TransportConfig) {
        if self.0.caches.is_empty() {
            return;
        }
        let invalidations = Family::<InvalidationLabels, Counter>::default();
        kit.metrics.register(
            "gateway_cache_invalidations",
            "Response caches dropped, by service and cause (an event, or a gap in the events)",
            invalidations.clone(),
        );
        let caches = self.0.caches.clone();
        let subjects: Vec<String> = caches
            .iter()
            .map(|(service, _)| format!("{service}.events"))
            .collect();
        kit.tasks
            .spawn("cache-invalidation", Stage::Consumers, move |stop| {
                follow_config(
                    transport,
                    subjects,
                    stop.cancelled_owned(),
                    move |followed| {
                        for (service, cache) in &caches {
                            let cause = match followed {
                                Followed::Gap => "gap",
                                Followed::Message(message)
                                    if message
                                        .subject
                                        .strip_prefix(service)
                                        .is_some_and(|rest| rest == ".events") =>
                                {
                                    "event"
                                }
                                Followed::Message(_) => continue,
                            };
                            cache.invalidate_all();
                            invalidations
                                .get_or_create(&InvalidationLabels { service, cause })
                                .inc();
                        }
                    },
                )
            });
    }
}

/// Labels of a dropped response cache.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvalidationLabels {
    service: &'static str,
    cause: &'static str,
}

/// The security headers every response carries, unless the upstream set its own.
fn security_headers(mut response: Response) -> Response {
    const HEADERS: [(HeaderName, &str); 4] = [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    response
}

/// CORS for the allow-listed origins; none without any (same origin only: no CORS headers,
/// and no work per request).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::try_from(o.as_str()).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        // What a browser script needs to act on an answer; the CORS-safelisted ones aside.
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            mainstay_resilience::http::RATELIMIT,
            mainstay_resilience::http::RATELIMIT_POLICY,
            shop_common::idempotency::IDEMPOTENT_REPLAYED,
            header::ALLOW,
            header::LOCATION,
            header::ETAG,
        ])
        .max_age(Duration::from_secs(600));
    Some(layer)
}

/// The proxied API's stack, below the [`RouteLayer`].
type Proxied = ServerTelemetry<<Limits as Layer<Admission<Proxy>>>::Service>;

/// The stack below CORS: security headers, trace trust, the route, and the two ways.
type Secured = MapResponse<TraceTrust<Routed<Proxied, Router>>, fn(Response) -> Response>;

/// The whole stack, as [`app`] assembles it (CORS only with allowed origins).
type Front = Either<Cors<Secured>, Secured>;

/// The whole gateway, as [`app`] assembles it: a service of axum's requests, served by
/// `shop_common::serve`. Cheap to clone.
#[derive(Clone)]
pub struct App(Front);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl Service<Request<Body>> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = <Front as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.0.call(request)
    }
}

/// The whole gateway: the public API in `kit`'s server stack, with CORS and the security
/// headers outermost (see the [crate docs](crate) for the layers in order).
pub fn app(gateway: Gateway, kit: &Kit, cors_origins: &[String]) -> App {
    let admission = gateway.0.admission.clone();
    let trace_trust = gateway.0.trace_trust.clone();
    let proxied = ServiceBuilder::new()
        .layer(kit.server_layer())
        .layer(kit.limits())
        .layer(admission.clone())
        .service(Proxy::new(
            gateway.0.upstreams.clone(),
            gateway.0.body_limit,
        ));
    let console = console::routes(
        console::Console::new(gateway.clone(), gateway.0.console_tick),
        admission.clone(),
    );
    let home = Router::new()
        .route(
            "/api/v1/home",
            // `route_layer`: a method the page does not have is a plain 405, never admitted.
            axum::routing::get(home::home).route_layer(admission),
        )
        .with_state(gateway)
        .merge(console);
    let local = kit.stack(home).merge(openapi::routes());
    let front = ServiceBuilder::new()
        .option_layer(cors(cors_origins))
        .layer(MapResponseLayer::new(
            security_headers as fn(Response) -> Response,
        ))
        .layer(trace_trust)
        .layer(RouteLayer::new(local))
        .service(proxied);
    App(front)
}

/// The gateway as its binary runs it, without serving: its kit (to serve with
/// `shop_common::serve`, or `serve_until` in the one-process system) and its whole app, with
/// discovery started and the cached answers following the services' events.
///
/// # Errors
///
/// The token configuration, discovery or a rate limit is unusable.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn launch(config: &GatewayConfig) -> std::io::Result<(Kit, App)> {
    let validator = config.tokens.validator()?;
    let sources = discover(config).map_err(std::io::Error::other)?;
    let kit = Kit::new(config.service.clone());
    let gateway = Gateway::new(config, &kit, validator, &sources).map_err(std::io::Error::other)?;
    // What catalog announces (price changes) drops its cached answers at once, not at max-age.
    gateway.invalidate_on_events(&kit, config.messaging.clone());
    let app = app(gateway, &kit, &config.cors_origins);
    Ok((kit, app))
}
