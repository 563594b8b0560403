//! What the gateway believes of a client's trace context: nothing, unless the client is a
//! trusted proxy.
//!
//! `traceparent` chooses the trace a request joins and whether it is sampled; `tracestate` and
//! `baggage` travel with it to every service behind. From anyone on the internet, that would let
//! a client force every one of its requests to be sampled (a sampled request costs several
//! times an unsampled one, in the gateway and in each service it reaches), pick trace ids that
//! collide with others', and push baggage into every service. [`TraceTrustLayer`] removes the
//! three headers from requests whose peer is not in `TRUSTED_PROXIES`, before the server layer
//! reads them: the gateway's own sampling then decides, and a trace starts at the gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use http::header::HeaderName;
use http::{HeaderMap, Request};
use tower::{Layer, Service};

/// The trace context headers (W3C Trace Context and Baggage).
static TRACE_CONTEXT: [HeaderName; 3] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
];

/// Removes the trace context headers, in place.
fn remove_trace_context(headers: &mut HeaderMap) {
    // Most clients send none: one pass comparing names first.
    if headers.keys().any(|name| TRACE_CONTEXT.contains(name)) {
        for name in &TRACE_CONTEXT {
            headers.remove(name);
        }
    }
}

/// Drops the trace context of requests from peers that are not trusted proxies; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct TraceTrustLayer {
    trusted: Arc<[IpAddr]>,
}

impl TraceTrustLayer {
    /// Trusts the trace context only of requests whose peer is in `trusted`.
    #[must_use]
    pub fn new(trusted: &[IpAddr]) -> Self {
        Self {
            trusted: trusted.into(),
        }
    }
}

impl<S> Layer<S> for TraceTrustLayer {
    type Service = TraceTrust<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceTrust {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

/// The service of [`TraceTrustLayer`].
#[derive(Debug, Clone)]
pub struct TraceTrust<S> {
    inner: S,
    trusted: Arc<[IpAddr]>,
}

impl<S, B> Service<Request<B>> for TraceTrust<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        if !self.trusted.contains(&peer) {
            remove_trace_context(request.headers_mut());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// The trace context headers the inner service saw.
    async fn seen(trusted: &[IpAddr], peer: &str) -> Vec<String> {
        let inner = tower::service_fn(|request: Request<()>| async move {
            Ok::<_, Infallible>(
                TRACE_CONTEXT
                    .iter()
                    .filter(|name| request.headers().contains_key(*name))
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        });
        let request = Request::get("/api/v1/me")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("tracestate", "a=b")
            .header("baggage", "user=alice")
            .extension(ConnectInfo(peer.parse::<SocketAddr>().unwrap()))
            .body(())
            .unwrap();
        TraceTrustLayer::new(trusted)
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_clients_trace_context_is_dropped_and_a_trusted_proxys_kept() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(seen(&[proxy], "203.0.113.9:4000").await.is_empty());
        assert!(seen(&[], "10.0.0.1:4000").await.is_empty());
        assert_eq!(
            seen(&[proxy], "10.0.0.1:4000").await,
            ["traceparent", "tracestate", "baggage"]
        );
    }
}
