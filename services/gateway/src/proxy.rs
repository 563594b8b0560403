//! The proxy service at the bottom of the gateway's stack: the body buffered, the upstream
//! request built once from the caller's, and the call through the service's client stack.
//!
//! The upstream request reuses the caller's method, headers and body: hop-by-hop headers
//! (RFC 9110 §7.6.1, and those `Connection` names) and `Host` are removed in one pass, and
//! `X-Forwarded-For` (the peer appended), `X-Forwarded-Host` and `X-Forwarded-Proto` are set.
//! A trusted proxy's `X-Forwarded-Proto` is kept; anyone else's is replaced by the scheme of
//! the gateway's own listener (plain HTTP). Its target is the one [`RouteLayer`] resolved; its
//! extensions are the caller's (among them the deadline and the route template, for the
//! client's metrics), with [`KeyHonoured`] added when the service answers a repeated
//! `Idempotency-Key` once (so that a keyed `POST` to it may be retried). Extensions never reach
//! the wire.
//!
//! [`RouteLayer`]: crate::routes::RouteLayer

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use http_body_util::Full;
use mainstay_resilience::http::KeyHonoured;
use tower::{Service, ServiceExt};

use crate::admission::Caller;
use crate::problems;
use crate::routes::{Resolved, Unrouted};
use shop_common::client::{Upstream, UpstreamRequest};

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded. A static, not a constant: its
/// custom name would be built and dropped on each use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes the hop-by-hop headers, and those `Connection` names, in place.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass comparing names, rather than a hashed removal of each.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::try_from(name.trim()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends `ip` as `Display` writes it; an IPv4 address without the formatting machinery
/// (every proxied request writes one: `write!` cost ~2k instructions).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The upstream request for the caller's `parts` and buffered `body`, to `resolved`'s target.
fn upstream_request(
    mut parts: http::request::Parts,
    resolved: Resolved,
    body: Bytes,
) -> UpstreamRequest {
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST);
    let caller = parts.extensions.get::<Caller>().copied();
    if let Some(caller) = caller {
        // Every line of the list (a proxy may add its own line rather than append), then the
        // peer: the one value forwarded.
        let mut list = String::new();
        for line in headers.get_all(X_FORWARDED_FOR) {
            if let Ok(line) = line.to_str() {
                list.push_str(line);
                list.push_str(", ");
            }
        }
        push_ip(&mut list, caller.peer);
        if let Ok(value) = HeaderValue::try_from(list) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    // A trusted proxy's word for the scheme is its own line, the last one; anyone else's, and
    // anything but `http` or `https`, is replaced by the gateway's listener's (plain HTTP: TLS
    // ends in front of it, at a trusted proxy).
    let proto = caller
        .filter(|caller| caller.trusted_peer)
        .and_then(|_| {
            headers
                .get_all(X_FORWARDED_PROTO)
                .iter()
                .next_back()
                .cloned()
        })
        .filter(|proto| proto == "https" || proto == "http")
        .unwrap_or(HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_PROTO, proto);
    let idempotent = parts.method.is_idempotent();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.uri_mut() = Uri::from(resolved.target);
    *request.headers_mut() = headers;
    // The caller's extensions move over whole (they never reach the wire): the deadline and
    // the route template the client stack reads are already there, and no second map is built.
    *request.extensions_mut() = parts.extensions;
    // Only a method that is not idempotent needs the key to be replayed.
    if !idempotent && resolved.route.honours_idempotency_keys {
        request.extensions_mut().insert(KeyHonoured);
    }
    request
}

/// Each service's clients: every service's, and for the services with cached routes, one
/// through the shared response cache. A handful of services: a scan of their names is cheaper
/// than hashing one.
#[derive(Clone, Default)]
pub(crate) struct Upstreams(Vec<Clients>);

/// One service's clients.
#[derive(Clone)]
struct Clients {
    service: &'static str,
    plain: Upstream,
    cached: Option<Upstream>,
}

impl Upstreams {
    /// Adds `service`'s client, and its client through the response cache if it has one.
    pub(crate) fn insert(
        &mut self,
        service: &'static str,
        plain: Upstream,
        cached: Option<Upstream>,
    ) {
        self.0.push(Clients {
            service,
            plain,
            cached,
        });
    }

    /// The services with a client.
    pub(crate) fn services(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|clients| clients.service)
    }

    /// The client of `service`: through its response cache when `cached` and it has one.
    pub(crate) fn client(&self, service: &str, cached: bool) -> Option<Upstream> {
        let clients = self.0.iter().find(|clients| clients.service == service)?;
        let through_cache = clients.cached.as_ref().filter(|_| cached);
        Some(through_cache.unwrap_or(&clients.plain).clone())
    }
}

/// The service under the gateway's layers: buffers the body (413 beyond the limit, so that the
/// request can be retried), builds the upstream request and calls the route's service; its
/// failures become problems (502, 503, 504), never a hang.
#[derive(Clone)]
pub struct Proxy {
    upstreams: Arc<Upstreams>,
    body_limit: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub(crate) fn new(upstreams: Arc<Upstreams>, body_limit: usize) -> Self {
        Self {
            upstreams,
            body_limit,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request<Body>> for Proxy {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let resolved = parts.extensions.remove::<Resolved>();
        let client = resolved.as_ref().and_then(|resolved| {
            Some((
                self.upstreams
                    .client(resolved.route.service, resolved.route.cached)?,
                resolved.route,
            ))
        });
        let (Some(resolved), Some((client, route))) = (resolved, client) else {
            // Why the route layer found no route; none at all without a route layer above.
            let unrouted = parts
                .extensions
                .get::<Unrouted>()
                .copied()
                .unwrap_or(Unrouted::NotFound);
            let problem = problems::unrouted(unrouted, &parts.method, parts.uri.path());
            return Box::pin(std::future::ready(Ok(problem)));
        };
        let body_limit = self.body_limit;
        Box::pin(async move {
            let Ok(body) = axum::body::to_bytes(body, body_limit).await else {
                return Ok(problems::too_large(body_limit));
            };
            let request = upstream_request(parts, resolved, body);
            Ok(match client.oneshot(request).await {
                Ok(mut response) => {
                    // Room for what the layers above add (request id, rate limit, security
                    // headers) at once, rather than growing the map as they do.
                    response.headers_mut().reserve(8);
                    strip_hop_by_hop(response.headers_mut());
                    // The caller gets its own request's id (the server layer sets it), never one
                    // the upstream echoed, which a cached response would replay to others.
                    response.headers_mut().remove(X_REQUEST_ID);
                    // A service's own path in `Location` (`/orders/7`) is its public one here.
                    let public = response
                        .headers()
                        .get(header::LOCATION)
                        .and_then(|location| location.to_str().ok())
                        .and_then(|location| {
                            crate::routes::public_location(route.service, location)
                        })
                        .and_then(|location| HeaderValue::from_str(&location).ok());
                    if let Some(location) = public {
                        response.headers_mut().insert(header::LOCATION, location);
                    }
                    response
                }
                Err(error) => problems::upstream(route.service, &error),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.0.0.7",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("a, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("a, {ip}"));
        }
    }
}
