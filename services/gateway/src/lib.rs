//! `shop-gateway`: the one front door of the commerce system.
//!
//! The public API lives under `/api/v1`. Each route names the service behind it, and the
//! gateway calls that service through a client balanced over its discovered endpoints (see
//! [`upstream`]). A request meets, in order:
//!
//! 1. CORS (an explicit allow-list) and the security headers, on every response;
//! 2. the server stack of every service (`shop_common::Kit::stack`): request id, trace, RED
//!    metrics, health and metrics endpoints, body limit, deadline, adaptive concurrency;
//! 3. the route table ([`ROUTES`]) and the API document (`openapi.json`): a path the
//!    document does not describe is a 404 problem, a method it does not list on one it does a
//!    405 with `Allow`;
//! 4. authentication: a bearer token is validated against the users service's JWKS
//!    (mainstay-auth) when present, and required on protected routes; the sign-in routes
//!    never look at it ([`Access::Public`]);
//! 5. the rate limit: per principal when signed in, per client address otherwise (the
//!    address is the peer's, or `X-Forwarded-For` when the peer is a trusted proxy; an IPv6
//!    client counts by its /64); every response it decided carries the IETF draft's
//!    `RateLimit` and `RateLimit-Policy` headers;
//! 6. the body, buffered up to the body limit (413 beyond), so that it can be retried;
//! 7. the upstream call; for catalog `GET`s, through a shared response cache
//!    (mainstay-cache). Upstream failures become 502, 503 or 504 problems, never a hang.
//!
//! `GET /api/v1/home` aggregates products, the caller's cart and recommendations, each with
//! its own timeout and fallback. `GET /api/v1/openapi.json` describes the public API, and
//! `/docs` serves Swagger UI over it.

pub mod config;
mod home;
mod openapi;
pub mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::Full;
use mainstay_auth::{AuthError, Principal, Validator};
use mainstay_cache::CacheCollector;
use mainstay_cache::http::{ResponseCacheLayer, UriKey};
use mainstay_discovery::Snapshot;
use mainstay_discovery::balance::NoEndpoints;
use mainstay_resilience::deadline::Deadline;
use mainstay_resilience::http::{KeyHonoured, append_rate_limit_headers, problem_response};
use mainstay_resilience::rate_limit::error::RateLimited;
use mainstay_resilience::rate_limit::{KeyedRateLimitLayer, Status};
use shop_common::{Kit, Problem};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub use self::config::{Discovery, GatewayConfig};
use self::upstream::{ClientSettings, Upstream, UpstreamRequest};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, and a bearer token is not looked at: the sign-in routes, which a client calls
    /// precisely when its access token has expired (and may still send it). Limited per
    /// client address.
    Public,
    /// Anyone; a bearer token, if sent, must be valid (it keys the rate limit).
    Open,
    /// Only with a valid bearer token (401 otherwise). Roles are checked by the service.
    SignedIn,
}

/// A route of the public API: requests under `prefix` go to `service`, with `prefix` replaced
/// by `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The public path prefix (matched on segment boundaries).
    pub prefix: &'static str,
    /// The service behind it.
    pub service: &'static str,
    /// The service's own path prefix.
    pub upstream: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// The services that honour `Idempotency-Key` on their `POST`s and `PATCH`es (they run the
/// kit's idempotency layer): only to these is a keyed `POST` retried. A service joins the list
/// when it lands with `Kit::with_idempotency`.
pub const HONOUR_IDEMPOTENCY_KEYS: &[&str] = &["users", "catalog"];

const fn route(
    prefix: &'static str,
    service: &'static str,
    upstream: &'static str,
    access: Access,
) -> Route {
    Route {
        prefix,
        service,
        upstream,
        access,
    }
}

/// The route table, most specific prefixes first.
pub const ROUTES: &[Route] = &[
    // The sign-in routes one by one: the rest of users stays behind its own prefixes.
    route(
        "/api/v1/auth/register",
        "users",
        "/register",
        Access::Public,
    ),
    route("/api/v1/auth/login", "users", "/login", Access::Public),
    route(
        "/api/v1/auth/token/refresh",
        "users",
        "/token/refresh",
        Access::Public,
    ),
    route("/api/v1/auth/logout", "users", "/logout", Access::Public),
    route(
        "/api/v1/auth/email/confirm",
        "users",
        "/email/confirm",
        Access::Public,
    ),
    route(
        "/api/v1/auth/.well-known/jwks.json",
        "users",
        "/.well-known/jwks.json",
        Access::Public,
    ),
    route("/api/v1/me", "users", "/me", Access::SignedIn),
    route("/api/v1/admin/users", "users", "/users", Access::SignedIn),
    route(
        "/api/v1/admin/keys",
        "users",
        "/admin/keys",
        Access::SignedIn,
    ),
    route("/api/v1/products", "catalog", "/products", Access::Open),
    route("/api/v1/categories", "catalog", "/categories", Access::Open),
    route("/api/v1/cart", "carts", "/cart", Access::SignedIn),
    route("/api/v1/orders", "orders", "/orders", Access::SignedIn),
    route("/api/v1/checkout", "orders", "/checkout", Access::SignedIn),
];

/// Whether `path` has a `.` or `..` segment, plain or percent-encoded: a proxy that forwards
/// one lets a server that normalises paths reach what the route table did not allow.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// The route for `path`, and the upstream path (query not included). A path with a `.` or
/// `..` segment has none.
#[must_use]
pub fn resolve(path: &str) -> Option<(&'static Route, String)> {
    if has_dot_segment(path) {
        return None;
    }
    ROUTES.iter().find_map(|route| {
        let rest = path.strip_prefix(route.prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let mut upstream = format!("{}{rest}", route.upstream);
        if upstream.is_empty() {
            upstream.push('/');
        }
        Some((route, upstream))
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The headers `Connection` names: hop-by-hop too (RFC 9110 §7.6.1).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP.iter().chain(&connection_named(headers)) {
        headers.remove(name);
    }
}

struct Inner {
    validator: Validator,
    upstreams: HashMap<&'static str, Upstream>,
    /// The catalog client behind the shared response cache, for `GET`s.
    catalog_cached: Upstream,
    per_principal: KeyedRateLimitLayer<(), String>,
    per_ip: KeyedRateLimitLayer<(), IpAddr>,
    trusted_proxies: Vec<IpAddr>,
    body_limit: usize,
    home_part_timeout: Duration,
}

/// The gateway: its upstream clients, validator and limits. Cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.0.upstreams.keys().collect::<Vec<_>>())
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
    /// A gateway over `sources` (one per service in [`config::SERVICES`]), validating tokens
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
        let http = upstream::http_client();
        let settings = ClientSettings {
            deadline: config.service.request_timeout,
            attempt_timeout: config.attempt_timeout,
            max_concurrent: config.max_concurrent,
        };
        let mut upstreams = HashMap::new();
        for (name, _) in config::SERVICES {
            let source = sources.get(name).ok_or(StartError::NoDiscovery(name))?;
            upstreams.insert(
                name,
                upstream::upstream(
                    name,
                    source.clone(),
                    &http,
                    settings,
                    &kit.metrics,
                    &kit.resilience,
                ),
            );
        }
        let cache = ResponseCacheLayer::new(config.catalog_cache_entries);
        let stats = cache.clone();
        kit.metrics.register_collector(Box::new(CacheCollector::new(
            "gateway_catalog_responses",
            move || stats.stats(),
        )));
        let catalog = upstreams["catalog"].clone();
        let catalog_cached = BoxCloneSyncService::new(
            cache
                .make_key(UriKey)
                .layer(catalog)
                .map_response(|response| response.map(Body::new)),
        );
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
            validator,
            upstreams,
            catalog_cached,
            per_principal,
            per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            body_limit: config.service.body_limit,
            home_part_timeout: config.home_part_timeout,
        })))
    }

    /// The client for a request to `service`: every catalog request goes through the shared
    /// response cache, reads to be answered from it and writes to drop what they change.
    fn upstream(&self, service: &str, _method: &Method) -> Upstream {
        if service == "catalog" {
            self.0.catalog_cached.clone()
        } else {
            self.0.upstreams[service].clone()
        }
    }

    /// Admits a request (its `parts`) to a route of `access`: the connection's peer, the
    /// caller's principal (if any), and one request taken from the caller's budget, whose state
    /// the response reports ([`Admitted::finish`]). `Err` is the refusal to send.
    async fn admit(
        &self,
        request: &http::request::Parts,
        access: Access,
    ) -> Result<Admitted, Box<Response>> {
        let peer = request
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let client = self.client_ip(peer, &request.headers);
        let principal = self.authenticate(&request.headers, access, client).await?;
        let limit = self.rate_limit(principal.as_ref(), client)?;
        Ok(Admitted {
            peer,
            principal,
            limit,
        })
    }

    /// The client's address (see [`shop_common::client_ip`]).
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        shop_common::client_ip(peer, headers, &self.0.trusted_proxies)
    }

    /// Validates the bearer token, if any; `Err` is the refusal to send.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        access: Access,
        client: IpAddr,
    ) -> Result<Option<Principal>, Box<Response>> {
        let refusal = |error: AuthError| -> Box<Response> {
            // A bad token costs a verification: it counts against the address's limit.
            if let Err(limited) = self.0.per_ip.check(&shop_common::limit_key(client)) {
                return limited_response(&limited);
            }
            Box::new(error.to_response::<Body>())
        };
        // mainstay-auth's parser, as its JwtLayer reads tokens: any case of the scheme; a
        // repeated header or an empty token refused.
        let token = match mainstay_auth::bearer_token(headers) {
            Ok(token) => token,
            Err(_) if access == Access::Public => None,
            Err(error) => return Err(refusal(error)),
        };
        match (token, access) {
            (_, Access::Public) | (None, Access::Open) => Ok(None),
            (None, Access::SignedIn) => Err(refusal(AuthError::MissingToken)),
            (Some(token), _) => self
                .0
                .validator
                .validate(token.trim())
                .await
                .map(Some)
                .map_err(refusal),
        }
    }

    /// Takes one request from the caller's budget.
    fn rate_limit(
        &self,
        principal: Option<&Principal>,
        client: IpAddr,
    ) -> Result<Status, Box<Response>> {
        let checked = match principal {
            Some(principal) => self.0.per_principal.check(&principal.subject().to_owned()),
            None => self.0.per_ip.check(&shop_common::limit_key(client)),
        };
        checked.map_err(|limited| {
            tracing::info!(%client, signed_in = principal.is_some(), "rate limited");
            limited_response(&limited)
        })
    }
}

/// The gateway's 429: a problem with `Retry-After`, and its limit named as the gateway's.
fn limited_response(limited: &RateLimited) -> Box<Response> {
    let mut response: Response = problem_response(limited);
    let headers = response.headers_mut();
    headers.remove(mainstay_resilience::http::RATELIMIT);
    headers.remove(mainstay_resilience::http::RATELIMIT_POLICY);
    append_rate_limit_headers(GATEWAY_POLICY, &limited.status(), headers);
    Box::new(response)
}

/// The name of the gateway's rate limit in the `RateLimit` lists.
const GATEWAY_POLICY: &str = "gateway";

/// A request the gateway admitted.
struct Admitted {
    /// The connection's peer.
    peer: IpAddr,
    /// The caller, when signed in.
    principal: Option<Principal>,
    /// The caller's rate limit after this request.
    limit: Status,
}

impl Admitted {
    /// The response, with the caller's rate limit reported as the `"gateway"` policy of the
    /// draft's `RateLimit` and `RateLimit-Policy` lists, beside any limit the upstream reported
    /// (users' per-account sign-in limit, say): the client sees every limit that applies.
    fn finish(&self, mut response: Response) -> Response {
        append_rate_limit_headers(GATEWAY_POLICY, &self.limit, response.headers_mut());
        response
    }
}

/// An upstream failure as a problem: 503 when the service has no endpoint or refused
/// locally, 504 on a timeout, 502 otherwise.
fn upstream_problem(service: &str, error: &BoxError) -> Response {
    if error.is::<NoEndpoints>() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail(error.to_string())
            .with("service", service)
            .into_response();
    }
    let response: Response<Body> = problem_response(&**error);
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response; // 503 (breaker, bulkhead), 429 or 504 (timeout, deadline)
    }
    tracing::warn!(%service, %error, "upstream failed");
    Problem::new(StatusCode::BAD_GATEWAY)
        .detail(format!("the {service} service failed to answer"))
        .with("service", service)
        .into_response()
}

/// The upstream request for `request` (`None` when the mapped target is not a valid URI):
/// path mapped, hop-by-hop headers removed,
/// `X-Forwarded-*` set (the connection's peer appended to `X-Forwarded-For`), the deadline
/// carried, and marked [`KeyHonoured`] when `service` honours `Idempotency-Key` (so that a keyed
/// `POST` to it may be retried).
fn upstream_request(
    request: &http::request::Parts,
    (service, path): (&str, &str),
    body: Bytes,
    peer: IpAddr,
) -> Option<UpstreamRequest> {
    let path_and_query = match request.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut upstream = http::Request::new(Full::new(body));
    *upstream.method_mut() = request.method.clone();
    *upstream.uri_mut() = path_and_query.parse().ok()?;
    // One pass over the caller's headers: hop-by-hop ones (and those `Connection` names) and
    // `Host` stay behind.
    let named: Vec<HeaderName> = connection_named(&request.headers);
    let mut headers = HeaderMap::with_capacity(request.headers.len() + 3);
    for (name, value) in &request.headers {
        if name != header::HOST && !HOP_BY_HOP.contains(name) && !named.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let forwarded_for = match request
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(previous) => format!("{previous}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    if let Some(host) = request.headers.get(header::HOST) {
        headers.insert("x-forwarded-host", host.clone());
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    *upstream.headers_mut() = headers;
    if let Some(deadline) = request.extensions.get::<Deadline>() {
        upstream.extensions_mut().insert(*deadline);
    }
    if HONOUR_IDEMPOTENCY_KEYS.contains(&service) {
        // A keyed POST to this service may be retried: it answers a repeated key once.
        upstream.extensions_mut().insert(KeyHonoured);
    }
    Some(upstream)
}

/// `405 Method Not Allowed`, with the methods that are (`Allow`).
fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = Problem::new(StatusCode::METHOD_NOT_ALLOWED)
        .detail(format!(
            "{method} is not allowed on this path; allowed: {allow}"
        ))
        .into_response();
    if let Ok(value) = HeaderValue::try_from(allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Every `/api/v1` request but the gateway's own.
async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let Some((route, path)) = resolve(request.uri().path()) else {
        return Problem::not_found(format!("no route for {}", request.uri().path()))
            .into_response();
    };
    // The OpenAPI document is the contract: a path it does not describe is not the API (a
    // trailing slash, a deeper path: whatever else a service routes stays private), and a
    // method it does not list on a path it describes never reaches a service (TRACE, say, or a
    // write the service would only refuse later).
    let Some(allowed) = openapi::allowed_methods(request.uri().path()) else {
        return Problem::not_found(format!("no route for {}", request.uri().path()))
            .into_response();
    };
    if !allowed.contains(request.method()) {
        return method_not_allowed(request.method(), allowed);
    }
    let (parts, body) = request.into_parts();
    let admitted = match gateway.admit(&parts, route.access).await {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    admitted.finish(forward(&gateway, route, &path, parts, body, admitted.peer).await)
}

/// Buffers the body and sends the request upstream.
async fn forward(
    gateway: &Gateway,
    route: &Route,
    path: &str,
    parts: http::request::Parts,
    body: Body,
    peer: IpAddr,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, gateway.0.body_limit).await else {
        return Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .detail(format!(
                "the request body is larger than {} bytes",
                gateway.0.body_limit
            ))
            .into_response();
    };
    let Some(upstream_request) = upstream_request(&parts, (route.service, path), body, peer) else {
        return Problem::bad_request("the request target cannot be forwarded").into_response();
    };
    let service = gateway.upstream(route.service, &parts.method);
    match service.oneshot(upstream_request).await {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(error) => upstream_problem(route.service, &error),
    }
}

/// Starts discovery for every service in [`config::SERVICES`], as `config` says: a static
/// list, Consul's passing instances (`CONSUL_HTTP_ADDR`), or DNS SRV records.
///
/// # Errors
///
/// The Consul address or the system's DNS configuration is unusable.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn discover(
    config: &GatewayConfig,
) -> Result<HashMap<&'static str, watch::Receiver<Snapshot>>, StartError> {
    use mainstay_discovery::consul::{ConsulClient, WatchOptions, watch_service};
    use mainstay_discovery::dns::{DnsOptions, hickory_resolver::TokioResolver, watch_srv};

    let consul = config
        .consul_addr
        .as_deref()
        .map(ConsulClient::new)
        .transpose()
        .map_err(|e| StartError::Discovery(e.to_string()))?
        .map(|client| match &config.consul_token {
            Some(token) => client.token(token),
            None => client,
        });
    let mut resolver = None;
    let mut sources = HashMap::new();
    for (name, discovery) in &config.discovery {
        let source = match discovery {
            Discovery::Static(endpoints) => mainstay_discovery::fixed(endpoints.clone()),
            Discovery::Consul => {
                let client = consul
                    .clone()
                    .ok_or_else(|| StartError::Discovery("CONSUL_HTTP_ADDR is not set".into()))?;
                watch_service(client, *name, WatchOptions::default())
            }
            Discovery::Srv(srv) => {
                if resolver.is_none() {
                    let built = TokioResolver::builder_tokio()
                        .and_then(mainstay_discovery::dns::hickory_resolver::ResolverBuilder::build)
                        .map_err(|e| StartError::Discovery(format!("DNS: {e}")))?;
                    resolver = Some(built);
                }
                let resolver = resolver.clone().ok_or(StartError::NoDiscovery(name))?;
                watch_srv(resolver, srv.clone(), DnsOptions::default())
            }
        };
        sources.insert(*name, source);
    }
    Ok(sources)
}

/// Sets `name` on every response that lacks it.
fn always(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

/// CORS for the allow-listed origins (none: no CORS headers, same origin only).
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::try_from(o.as_str()).ok())
        .collect();
    CorsLayer::new()
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
        .max_age(Duration::from_secs(600))
}

/// The whole gateway: the public API in `kit`'s server stack, with CORS and the security
/// headers outermost.
pub fn app(gateway: Gateway, kit: &Kit, cors_origins: &[String]) -> Router {
    let api = Router::new()
        .route("/api/v1/home", axum::routing::get(home::home))
        .route("/api/v1/{*rest}", axum::routing::any(proxy))
        .with_state(gateway);
    // One `layer` call: axum boxes every route again on each, and clones every box on every
    // request (callgrind counted 28 clones per proxied request with one call per layer).
    let outer = ServiceBuilder::new()
        .layer(cors(cors_origins))
        .layer(always(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ))
        .layer(always(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(always(
            header::CONTENT_SECURITY_POLICY,
            "frame-ancestors 'none'",
        ))
        .layer(always(header::REFERRER_POLICY, "no-referrer"));
    kit.stack(api).merge(openapi::routes()).layer(outer)
}
