//! The server and client layers: spans, context propagation, request ids and RED metrics.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{HeaderMap, Request, Response};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestId, SetRequestId};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{
    ClientLabels, HttpMetrics, InFlightLabels, STATUS_ERROR, ServerLabels, method_label, route_of,
    status_class,
};
use crate::request_id::{self, X_REQUEST_ID};
use crate::{Metrics, propagation};

/// Headers whose values never reach logs: they are marked sensitive, which `HeaderValue`'s
/// `Debug` (and tower-http's trace layer) print as `Sensitive`.
pub const SENSITIVE_HEADERS: [HeaderName; 5] = [
    AUTHORIZATION,
    PROXY_AUTHORIZATION,
    COOKIE,
    SET_COOKIE,
    HeaderName::from_static("x-consul-token"),
];

fn mark_sensitive(headers: &mut HeaderMap) {
    for name in &SENSITIVE_HEADERS {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// The server side of telemetry, outermost first: request id (set when absent, echoed in the
/// response) → span parented by the incoming `traceparent` → RED metrics.
///
/// The span is named by the route template (`GET /products/{id}`) and carries `request_id` and
/// `trace_id`, so every log line of the request can be joined with its trace. The request ends
/// with an event holding the status and the duration: `WARN` for a 5xx, `ERROR` when there is
/// no response, `DEBUG` otherwise (the metrics count every request; an access log line per
/// request is a `DEBUG` filter away). Request headers are logged at `DEBUG` with
/// [`SENSITIVE_HEADERS`] redacted.
///
/// With axum, add it with `Router::layer` after every route and `merge` (axum applies a layer
/// only to what the router holds at that point), so that `MatchedPath` is known and the
/// fallback is measured too.
#[derive(Debug, Clone)]
pub struct ServerLayer {
    metrics: Option<HttpMetrics>,
}

impl ServerLayer {
    /// Spans, request ids and metrics recorded into `metrics`.
    #[must_use]
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            metrics: Some(metrics.http.clone()),
        }
    }

    /// Spans and request ids only.
    #[must_use]
    pub fn without_metrics() -> Self {
        Self { metrics: None }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = SetRequestId<PropagateRequestId<ServerTelemetry<S>>, MakeRequestUuid>;

    fn layer(&self, inner: S) -> Self::Service {
        let service = ServerTelemetry {
            inner,
            metrics: self.metrics.clone(),
        };
        SetRequestId::x_request_id(PropagateRequestId::x_request_id(service), MakeRequestUuid)
    }
}

/// The span and metrics part of [`ServerLayer`].
#[derive(Debug, Clone)]
pub struct ServerTelemetry<S> {
    inner: S,
    metrics: Option<HttpMetrics>,
}

impl<S> ServerTelemetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer's service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for ServerTelemetry<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        mark_sensitive(request.headers_mut());
        let method = method_label(request.method());
        let route = route_of(&request);
        let request_id = request.headers().get(X_REQUEST_ID).cloned();
        // Every field is given when the span is created: with JSON logs, recording a field
        // later re-serializes all of the span's fields.
        let parent = propagation::extract_headers(request.headers());
        let parent_trace = parent.span().span_context().clone();
        let parent_trace = parent_trace.is_valid().then(|| parent_trace.trace_id());
        let span = tracing::info_span!(
            target: "mainstay_telemetry::server",
            "request",
            otel.name = %SpanName(method, &route),
            otel.kind = "server",
            http.route = %route,
            request_id = request_id.as_ref().and_then(|id| id.to_str().ok()),
            trace_id = parent_trace.map(tracing::field::display),
        );
        if !span.is_disabled() {
            // OpenTelemetry-only attributes go straight to its span, not through log formatting.
            span.set_attribute("http.request.method", method);
            span.set_attribute("url.path", request.uri().path().to_owned());
            if parent_trace.is_some() {
                let _ = span.set_parent(parent);
            } else if let Some(trace_id) = propagation::trace_id(&span) {
                // A new trace: its id exists only now.
                span.record("trace_id", trace_id.as_str());
            }
            tracing::debug!(parent: &span, headers = ?request.headers(), "request received");
        }
        let in_flight = self.metrics.as_ref().map(|metrics| {
            let labels = InFlightLabels {
                method,
                route: route.clone(),
            };
            metrics.server_in_flight.get_or_create(&labels).inc();
            InFlight {
                metrics: metrics.clone(),
                labels,
            }
        });
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let inner = request_id::scope(
            request_id.unwrap_or_else(|| http::HeaderValue::from_static("")),
            inner,
        );
        ServerFuture {
            inner,
            span,
            in_flight,
            started: Instant::now(),
        }
    }
}

/// `METHOD /route/template`, formatted only when the span is enabled.
struct SpanName<'a>(&'static str, &'a str);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Decrements the in-flight gauge when the request ends, however it ends.
#[derive(Debug)]
struct InFlight {
    metrics: HttpMetrics,
    labels: InFlightLabels,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics
            .server_in_flight
            .get_or_create(&self.labels)
            .dec();
    }
}

pin_project! {
    /// Response future of [`ServerTelemetry`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: TaskLocalFuture<http::HeaderValue, F>,
        span: Span,
        in_flight: Option<InFlight>,
        started: Instant,
    }
}

impl<F> fmt::Debug for ServerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span: &Span = this.span;
        let result = {
            let _entered = span.enter();
            ready!(this.inner.poll(cx))
        };
        let elapsed = this.started.elapsed();
        let status = match &result {
            Ok(response) => {
                let status = response.status();
                // Straight to the OpenTelemetry span: a `tracing` field would be formatted again.
                span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
                if status.is_server_error() {
                    span.set_status(opentelemetry::trace::Status::error(""));
                    tracing::warn!(
                        parent: span,
                        status = status.as_u16(),
                        duration_ms = elapsed.as_secs_f64() * 1e3,
                        "request failed"
                    );
                } else {
                    tracing::debug!(
                        parent: span,
                        status = status.as_u16(),
                        duration_ms = elapsed.as_secs_f64() * 1e3,
                        "request completed"
                    );
                }
                status_class(status)
            }
            Err(_) => {
                span.set_status(opentelemetry::trace::Status::error("no response"));
                tracing::error!(
                    parent: span,
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    "request failed without a response"
                );
                STATUS_ERROR
            }
        };
        if let Some(in_flight) = this.in_flight.take() {
            let labels = ServerLabels {
                method: in_flight.labels.method,
                route: in_flight.labels.route.clone(),
                status,
            };
            let metrics = &in_flight.metrics;
            metrics.server_requests.get_or_create(&labels).inc();
            metrics
                .server_duration
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
        }
        Poll::Ready(result)
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// The client side of telemetry: a client span (child of the current span) whose context is
/// injected into the outbound request as `traceparent`/`baggage`, the current request id copied
/// into `x-request-id`, and RED metrics labelled with the peer's name.
#[derive(Debug, Clone)]
pub struct ClientLayer {
    peer: Cow<'static, str>,
    metrics: Option<HttpMetrics>,
}

impl ClientLayer {
    /// Calls to `peer` (a service name: a bounded label), recorded into `metrics`.
    #[must_use]
    pub fn new(peer: impl Into<Cow<'static, str>>, metrics: &Metrics) -> Self {
        Self {
            peer: peer.into(),
            metrics: Some(metrics.http.clone()),
        }
    }

    /// Spans, propagation and request ids only.
    #[must_use]
    pub fn without_metrics(peer: impl Into<Cow<'static, str>>) -> Self {
        Self {
            peer: peer.into(),
            metrics: None,
        }
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTelemetry {
            inner,
            peer: self.peer.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ClientLayer`].
#[derive(Debug, Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    peer: Cow<'static, str>,
    metrics: Option<HttpMetrics>,
}

impl<S> ClientTelemetry<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer's service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for ClientTelemetry<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let route = route_of(&request);
        let span = tracing::info_span!(
            target: "mainstay_telemetry::client",
            "outbound request",
            otel.name = %SpanName(method, &route),
            otel.kind = "client",
            http.request.method = method,
            server.address = %self.peer,
            http.route = %route,
        );
        if !span.is_disabled() {
            propagation::inject_headers(&span.context(), request.headers_mut());
        }
        if !request.headers().contains_key(X_REQUEST_ID)
            && let Some(id) = request_id::current().filter(|id| !id.is_empty())
        {
            request.headers_mut().insert(X_REQUEST_ID, id);
        }
        let labels = self.metrics.as_ref().map(|metrics| {
            (
                metrics.clone(),
                ClientLabels {
                    peer: self.peer.clone(),
                    method,
                    route,
                    status: STATUS_ERROR,
                },
            )
        });
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ClientFuture {
            inner,
            span,
            labels,
            started: Instant::now(),
        }
    }
}

pin_project! {
    /// Response future of [`ClientTelemetry`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        labels: Option<(HttpMetrics, ClientLabels)>,
        started: Instant,
    }
}

impl<F> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span: &Span = this.span;
        let result = {
            let _entered = span.enter();
            ready!(this.inner.poll(cx))
        };
        let status = match &result {
            Ok(response) => {
                let status = response.status();
                span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
                if status.is_server_error() {
                    span.set_status(opentelemetry::trace::Status::error(""));
                }
                status_class(status)
            }
            Err(_) => {
                span.set_status(opentelemetry::trace::Status::error("no response"));
                STATUS_ERROR
            }
        };
        if let Some((metrics, mut labels)) = this.labels.take() {
            labels.status = status;
            metrics.client_requests.get_or_create(&labels).inc();
            metrics
                .client_duration
                .get_or_create(&labels)
                .observe(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}
