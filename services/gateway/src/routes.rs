//! The public API's routes: which service answers a path, who may call it, and which methods
//! the API document allows on it, resolved once per request by [`RouteLayer`].
//!
//! The route table ([`BACKENDS`]) maps path prefixes to services; the API document
//! (`openapi.json`) bounds what is forwarded: a path it does not describe is a 404 problem (a
//! trailing slash, a deeper path: whatever else a service routes stays private), a method it
//! does not list on a path it describes a 405 with `Allow`. Both are read once, at start-up,
//! into one table of templates, each knowing its route: a request is one scan of it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use futures_util::future::Either;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri};
use mainstay_telemetry::RouteTemplate;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};
use utoipa::OpenApi;

use crate::openapi::ApiDoc;

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

/// A service behind the gateway, and what of it the public API exposes: adding a service is
/// one entry in [`BACKENDS`] (with its operations in the API document, `openapi.rs`, which
/// bounds what is forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Its name: in discovery (`<NAME>_URLS`, `<NAME>_SRV`, Consul), metrics and problems.
    pub name: &'static str,
    /// The port it listens on by default on this host (the embedded default). `None` for a
    /// service that has not landed yet: until `<NAME>_URLS`, Consul or DNS names one, its
    /// routes answer 503 naming it.
    pub default_port: Option<u16>,
    /// Whether it runs the kit's idempotency layer (`Kit::with_idempotency`): only to such a
    /// service is a `POST` or `PATCH` with an `Idempotency-Key` retried.
    pub honours_idempotency_keys: bool,
    /// Its public path prefixes.
    pub mounts: &'static [Mount],
}

/// A public path prefix of a [`Backend`]: requests under `prefix` go to the service, with
/// `prefix` replaced by `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    /// The public path prefix (matched on segment boundaries).
    pub prefix: &'static str,
    /// The service's own path prefix.
    pub upstream: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether its `GET`s are answered from the gateway's shared response cache (and its
    /// writes drop what they change from it).
    pub cached: bool,
}

const fn mount(prefix: &'static str, upstream: &'static str, access: Access) -> Mount {
    Mount {
        prefix,
        upstream,
        access,
        cached: false,
    }
}

const fn cached(mount: Mount) -> Mount {
    Mount {
        cached: true,
        ..mount
    }
}

const fn backend(
    name: &'static str,
    default_port: Option<u16>,
    honours_idempotency_keys: bool,
    mounts: &'static [Mount],
) -> Backend {
    Backend {
        name,
        default_port,
        honours_idempotency_keys,
        mounts,
    }
}

/// The services behind the gateway, and their public routes.
pub const BACKENDS: &[Backend] = &[
    backend(
        "users",
        Some(8081),
        true,
        &[
            // The sign-in routes one by one: the rest of users stays behind its own prefixes.
            mount("/api/v1/auth/register", "/register", Access::Public),
            mount("/api/v1/auth/login", "/login", Access::Public),
            mount(
                "/api/v1/auth/token/refresh",
                "/token/refresh",
                Access::Public,
            ),
            mount("/api/v1/auth/logout", "/logout", Access::Public),
            mount(
                "/api/v1/auth/email/confirm",
                "/email/confirm",
                Access::Public,
            ),
            mount(
                "/api/v1/auth/.well-known/jwks.json",
                "/.well-known/jwks.json",
                Access::Public,
            ),
            mount("/api/v1/me", "/me", Access::SignedIn),
            mount("/api/v1/admin/users", "/users", Access::SignedIn),
            mount("/api/v1/admin/keys", "/admin/keys", Access::SignedIn),
        ],
    ),
    backend(
        "catalog",
        Some(8082),
        true,
        &[
            cached(mount("/api/v1/products", "/products", Access::Open)),
            cached(mount("/api/v1/categories", "/categories", Access::Open)),
            // Not under the cached products: a view is not a write to them.
            mount("/api/v1/product-views", "/product-views", Access::Open),
        ],
    ),
    backend(
        "carts",
        Some(8083),
        false,
        &[mount("/api/v1/cart", "/cart", Access::SignedIn)],
    ),
    backend(
        "orders",
        Some(8084),
        true,
        &[
            mount("/api/v1/orders", "/orders", Access::SignedIn),
            mount("/api/v1/checkout", "/checkout", Access::SignedIn),
            mount("/api/v1/admin/orders", "/admin/orders", Access::SignedIn),
        ],
    ),
    backend(
        "inventory",
        Some(8085),
        true,
        &[
            mount("/api/v1/stock", "/stock", Access::Open),
            mount("/api/v1/admin/stock", "/admin/stock", Access::SignedIn),
        ],
    ),
    // No public route: the ops console watches it (its health, its outbox and dead letters,
    // the breaker in front of it).
    backend("payments", Some(8086), true, &[]),
    backend(
        "shipping",
        Some(8087),
        true,
        &[mount("/api/v1/shipping/quote", "/quote", Access::Open)],
    ),
    backend(
        "notifications",
        Some(8088),
        true,
        &[
            mount("/api/v1/notifications", "/notifications", Access::SignedIn),
            mount(
                "/api/v1/admin/notifications",
                "/admin/notifications",
                Access::SignedIn,
            ),
        ],
    ),
    backend(
        "recommendations",
        Some(8089),
        false,
        &[mount(
            "/api/v1/recommendations",
            "/recommendations",
            Access::Open,
        )],
    ),
    backend(
        "analytics",
        Some(8090),
        true,
        &[mount(
            "/api/v1/admin/analytics",
            "/analytics",
            Access::SignedIn,
        )],
    ),
];

/// A route of the public API, as the gateway resolves requests by it: a [`Mount`] with its
/// service.
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
    /// Whether its `GET`s are answered from the gateway's shared response cache.
    pub cached: bool,
    /// Whether its service honours `Idempotency-Key` ([`Backend::honours_idempotency_keys`]).
    pub honours_idempotency_keys: bool,
}

/// Every route of [`BACKENDS`], the longest prefix first (so that the first match is the most
/// specific).
static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let mut routes: Vec<Route> = BACKENDS
        .iter()
        .flat_map(|backend| {
            backend.mounts.iter().map(|mount| Route {
                prefix: mount.prefix,
                service: backend.name,
                upstream: mount.upstream,
                access: mount.access,
                cached: mount.cached,
                honours_idempotency_keys: backend.honours_idempotency_keys,
            })
        })
        .collect();
    routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
    routes
});

/// Every route of the public API, the most specific first.
#[must_use]
pub fn routes() -> &'static [Route] {
    &ROUTES
}

/// The public path of `location`, a path on `service` (a `Location` it answered): the mount of
/// the service that serves it, the longest first (`/orders/7` of orders is
/// `/api/v1/orders/7`). `None` for an absolute URL, or a path none of its mounts serves.
#[must_use]
pub fn public_location(service: &str, location: &str) -> Option<String> {
    if !location.starts_with('/') || location.starts_with("//") {
        return None;
    }
    ROUTES
        .iter()
        .filter(|route| route.service == service)
        .filter(|route| {
            location.strip_prefix(route.upstream).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
            })
        })
        .max_by_key(|route| route.upstream.len())
        .map(|route| format!("{}{}", route.prefix, &location[route.upstream.len()..]))
}

/// Whether `path` has a `.` or `..` segment, plain or percent-encoded, a `\\` plain or
/// encoded, or an encoded `/` or NUL: a proxy that forwards one lets a server that normalises
/// or decodes paths reach what the route table did not allow.
fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither a dot, an escape nor a backslash: one scan, no allocation.
    if !path.bytes().any(|b| b == b'.' || b == b'%' || b == b'\\') {
        return false;
    }
    // A raw backslash is a separator to some servers, as its escape is.
    if path.contains('\\') {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%00"]
        .iter()
        .any(|escape| lower.contains(escape))
    {
        return true;
    }
    path.split('/').any(|segment| {
        matches!(segment.len(), 1..=6)
            && matches!(
                segment.to_ascii_lowercase().replace("%2e", ".").as_str(),
                "." | ".."
            )
    })
}

/// The route whose prefix `path` starts with (on a segment boundary), and the rest of the path.
fn route_for(path: &str) -> Option<(&'static Route, &str)> {
    ROUTES.iter().find_map(|route| {
        let rest = path.strip_prefix(route.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some((route, rest))
    })
}

/// The route for `path`, and the upstream path (query not included). A path with a `.` or
/// `..` segment has none. (The table alone: [`RouteLayer`] also holds the path to the API
/// document.)
#[must_use]
pub fn resolve(path: &str) -> Option<(&'static Route, String)> {
    if has_dot_segment(path) {
        return None;
    }
    let (route, rest) = route_for(path)?;
    let mut upstream = format!("{}{rest}", route.upstream);
    if upstream.is_empty() {
        upstream.push('/');
    }
    Some((route, upstream))
}

/// A request's route, as [`RouteLayer`] resolved it: in the request's extensions for the
/// layers below.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route.
    pub route: &'static Route,
    /// The upstream path and query.
    pub target: PathAndQuery,
}

/// Why a request has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// The document does not describe the path, or no route serves it (404).
    NotFound,
    /// The document describes the path but not the method (405 with `Allow`).
    MethodNotAllowed(&'static [Method]),
    /// The upstream target would not be a valid request target (400).
    BadTarget,
    /// The document describes the path, and the gateway answers it itself (`/api/v1/home`,
    /// the document): not proxied.
    Gateway,
}

/// One path of the document: its text, its segments (`None` for a `{parameter}`), its
/// methods and the route that serves it.
struct Template {
    path: String,
    segments: Vec<Option<String>>,
    literals: usize,
    methods: Vec<Method>,
    route: Option<&'static Route>,
}

/// The document's paths, read once.
static TEMPLATES: LazyLock<Vec<Template>> = LazyLock::new(|| {
    let document = ApiDoc::openapi();
    document
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let segments: Vec<Option<String>> = path
                .split('/')
                .map(|segment| {
                    (!(segment.starts_with('{') && segment.ends_with('}')))
                        .then(|| segment.to_owned())
                })
                .collect();
            let operations = [
                (Method::GET, item.get.is_some()),
                (Method::HEAD, item.get.is_some() || item.head.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::PATCH, item.patch.is_some()),
                (Method::DELETE, item.delete.is_some()),
            ];
            Template {
                path: path.clone(),
                literals: segments.iter().filter(|s| s.is_some()).count(),
                segments,
                methods: operations
                    .into_iter()
                    .filter_map(|(method, documented)| documented.then_some(method))
                    .collect(),
                route: route_for(path).map(|(route, _)| route),
            }
        })
        .collect()
});

/// The document's template for `path`: a literal segment is preferred to a parameter
/// (`/products/search` over `/products/{id}`).
fn template_for(path: &str) -> Option<&'static Template> {
    // The path's segments, split once (no template is deeper than this).
    const DEEPEST: usize = 16;
    let mut segments = [""; DEEPEST];
    let mut count = 0;
    for segment in path.split('/') {
        *segments.get_mut(count)? = segment;
        count += 1;
    }
    let segments = &segments[..count];
    TEMPLATES
        .iter()
        .filter(|template| {
            template.segments.len() == count
                && template
                    .segments
                    .iter()
                    .zip(segments)
                    .all(|(expected, actual)| match expected {
                        Some(literal) => literal == actual,
                        None => !actual.is_empty(),
                    })
        })
        .max_by_key(|template| template.literals)
}

/// Resolves a request: its route and upstream target, or why it has none; and the document's
/// template for it (a bounded label for metrics), when the document describes it.
pub fn resolve_request(
    method: &Method,
    uri: &Uri,
) -> (Result<Resolved, Unrouted>, Option<&'static str>) {
    let path = uri.path();
    if has_dot_segment(path) {
        return (Err(Unrouted::NotFound), None);
    }
    let Some(template) = template_for(path) else {
        return (Err(Unrouted::NotFound), None);
    };
    let label = Some(template.path.as_str());
    let Some(route) = template.route else {
        return (Err(Unrouted::Gateway), label);
    };
    if !template.methods.contains(method) {
        return (Err(Unrouted::MethodNotAllowed(&template.methods)), label);
    }
    let rest = &path[route.prefix.len()..];
    let mut target = String::with_capacity(route.upstream.len() + rest.len() + 64);
    target.push_str(route.upstream);
    target.push_str(rest);
    if target.is_empty() {
        target.push('/');
    }
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let resolved = PathAndQuery::from_maybe_shared(bytes::Bytes::from(target))
        .map(|target| Resolved { route, target })
        .map_err(|_| Unrouted::BadTarget);
    (resolved, label)
}

/// The prefix of the proxied API: what is not under it goes to the gateway's own routes.
const API_PREFIX: &str = "/api/v1/";

/// Resolves each request once, first of all ([`resolve_request`]), and sends it one of two
/// ways: a request under `/api/v1/` that the gateway does not answer itself goes down the proxy
/// stack with its [`Resolved`] route (or, without one, with why: [`Unrouted`], answered with a
/// problem at the bottom of that stack, inside its metrics and spans) and the document's
/// template as its [`RouteTemplate`] (so that the server's and the client's metrics and spans
/// are labelled by the document); anything else (the gateway's own pages, the document, probes
/// and metrics) goes to `local`, a router with its own server stack.
#[derive(Debug, Clone)]
pub struct RouteLayer<L> {
    local: L,
}

impl<L> RouteLayer<L> {
    /// Proxied requests to the layered service, the rest to `local`.
    pub fn new(local: L) -> Self {
        Self { local }
    }
}

impl<S, L: Clone> Layer<S> for RouteLayer<L> {
    type Service = Routed<S, L>;

    fn layer(&self, proxied: S) -> Self::Service {
        Routed {
            proxied,
            local: self.local.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct Routed<S, L> {
    proxied: S,
    local: L,
}

impl<S, L> Service<Request<Body>> for Routed<S, L>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
    L: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Oneshot<S, Request<Body>>, Oneshot<L, Request<Body>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each request is sent one way only, and made ready there (a stack below may reserve
        // capacity when polled ready: only the way taken may).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with(API_PREFIX) || path == crate::openapi::DOCUMENT {
            return Either::Right(self.local.clone().oneshot(request));
        }
        let (resolved, template) = resolve_request(request.method(), request.uri());
        let extensions = request.extensions_mut();
        match resolved {
            Ok(resolved) => {
                extensions.insert(resolved);
            }
            Err(Unrouted::Gateway) => return Either::Right(self.local.clone().oneshot(request)),
            Err(unrouted) => {
                extensions.insert(unrouted);
            }
        }
        if let Some(template) = template {
            extensions.insert(RouteTemplate(Cow::Borrowed(template)));
        }
        Either::Left(self.proxied.clone().oneshot(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_locations_become_public_paths() {
        let public = |service, location| public_location(service, location);
        assert_eq!(
            public("orders", "/orders/7").as_deref(),
            Some("/api/v1/orders/7")
        );
        assert_eq!(
            public("orders", "/checkout?x=1").as_deref(),
            Some("/api/v1/checkout?x=1")
        );
        // Another service's path, a path no mount serves, a prefix mid-segment, absolute URLs.
        assert_eq!(public("catalog", "/orders/7"), None);
        assert_eq!(public("orders", "/ordersx/7"), None);
        assert_eq!(public("orders", "/elsewhere"), None);
        assert_eq!(public("orders", "https://example.com/orders/7"), None);
        assert_eq!(public("orders", "//example.com/orders/7"), None);
    }

    fn resolved(method: &Method, uri: &str) -> Result<(&'static str, String), Unrouted> {
        resolve_request(method, &uri.parse().unwrap())
            .0
            .map(|r| (r.route.service, r.target.to_string()))
    }

    #[test]
    fn a_request_is_resolved_once_into_route_target_and_template() {
        assert_eq!(
            resolved(&Method::GET, "/api/v1/products/kettle?fields=name"),
            Ok(("catalog", "/products/kettle?fields=name".to_owned()))
        );
        let (_, template) =
            resolve_request(&Method::GET, &"/api/v1/products/kettle".parse().unwrap());
        assert_eq!(template, Some("/api/v1/products/{id}"));
        assert_eq!(
            resolved(&Method::GET, "/api/v1/products/search?q=tea"),
            Ok(("catalog", "/products/search?q=tea".to_owned()))
        );
        assert!(matches!(
            resolved(&Method::TRACE, "/api/v1/me"),
            Err(Unrouted::MethodNotAllowed(methods)) if methods.contains(&Method::GET)
        ));
        assert_eq!(
            resolved(&Method::GET, "/api/v1/me/"),
            Err(Unrouted::NotFound)
        );
        assert_eq!(
            resolved(&Method::GET, "/api/v1/products/%2e%2e"),
            Err(Unrouted::NotFound)
        );
        // Encoded separators and NUL inside a parameter would be decoded upstream.
        for path in [
            "/api/v1/products/a%2F..%2F..%2Fadmin%2Fkeys",
            "/api/v1/products/a%5cb",
            "/api/v1/products/a%00",
            "/api/v1/products/..\\..\\admin\\keys",
            "/api/v1/products/a\\b",
        ] {
            assert_eq!(
                resolved(&Method::GET, path),
                Err(Unrouted::NotFound),
                "{path}"
            );
        }
        assert!(resolved(&Method::GET, "/api/v1/products/tea%20pot").is_ok());
        // Described by the document, but the gateway's own (not proxied).
        assert_eq!(
            resolved(&Method::GET, "/api/v1/home"),
            Err(Unrouted::Gateway)
        );
    }

    #[test]
    fn each_service_and_prefix_is_named_once_and_each_prefix_reaches_its_own_service() {
        let mut names: Vec<&str> = BACKENDS.iter().map(|backend| backend.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BACKENDS.len(), "a service named twice");
        let mut prefixes: Vec<&str> = routes().iter().map(|route| route.prefix).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), routes().len(), "a prefix mounted twice");
        for backend in BACKENDS {
            for mount in backend.mounts {
                let (route, upstream) = resolve(mount.prefix).unwrap();
                assert_eq!(
                    (route.service, upstream.as_str()),
                    (backend.name, mount.upstream),
                    "{}",
                    mount.prefix
                );
                assert_eq!(
                    route.honours_idempotency_keys,
                    backend.honours_idempotency_keys
                );
            }
        }
        // The longer prefix wins, whatever the table's order.
        assert!(
            routes()
                .windows(2)
                .all(|pair| pair[0].prefix.len() >= pair[1].prefix.len())
        );
        assert_eq!(
            resolve("/api/v1/admin/keys/rotate").unwrap().0.service,
            "users"
        );
        assert_eq!(
            resolve("/api/v1/auth/login").unwrap().1,
            "/login",
            "not under a shorter prefix"
        );
    }

    #[test]
    fn every_documented_path_but_the_gateways_own_has_a_route() {
        for template in TEMPLATES.iter() {
            assert_eq!(
                template.route.is_some(),
                !["/api/v1/home", "/api/v1/openapi.json"].contains(&template.path.as_str()),
                "{}",
                template.path
            );
        }
    }
}
