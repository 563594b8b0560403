//! The server and client layers: spans, context propagation, request ids and RED metrics.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::trace::TraceId;
use pin_project_lite::pin_project;
use std::sync::Arc;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{
    Handles, HttpMetrics, RouteMetrics, STATUS_ERROR, method_label, route_of, status_class,
};
use crate::request_id::{self, RequestScope, X_REQUEST_ID};
use crate::sampling::{self, Sampled, Sampling};
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

/// One pass over the headers (a request has few; comparing names is cheaper than hashing
/// each sensitive one to look it up).
fn mark_sensitive(headers: &mut HeaderMap) {
    // A static, not the constant: a constant's custom names would be built and dropped per use.
    static SENSITIVE: [HeaderName; 5] = SENSITIVE_HEADERS;
    for (name, value) in headers.iter_mut() {
        if SENSITIVE.contains(name) {
            value.set_sensitive(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// The server side of telemetry: request id (kept when the client's is usable, generated
/// otherwise, echoed in the response) → sampling decision → span parented by the incoming
/// `traceparent` → RED metrics.
///
/// Whether the request is traced is decided first, from `traceparent` and the layer's
/// [`Sampling`] (see [`crate::sampling`]): an unsampled request gets no span at all, so neither
/// the OpenTelemetry layer nor a log formatter does any work for it; it still counts in the
/// metrics, still has its request id, and passes its trace id on to the services it calls
/// (through [`ClientLayer`]) marked "not sampled". The default samples every request that
/// does not arrive unsampled, as OpenTelemetry's default sampler does.
///
/// A sampled request's span is named by the route template (`GET /products/{id}`) and carries
/// `request_id` and `trace_id`, so every log line of the request can be joined with its trace.
/// The request ends with an event holding the status and the duration (with `request_id` and
/// `trace_id` when there is no span): `WARN` for a 5xx, `ERROR` when there is no response,
/// `DEBUG` otherwise (the metrics count every request; an access log line per request is a
/// `DEBUG` filter away). Request headers are logged at `DEBUG` with [`SENSITIVE_HEADERS`]
/// redacted.
///
/// A client's `x-request-id` is kept when it is at most [`MAX_REQUEST_ID_BYTES`] of visible
/// ASCII; otherwise the request gets a new id, so that no client can put arbitrary bytes into
/// every log line and upstream call.
///
/// With axum, add it with `Router::layer` after every route and `merge` (axum applies a layer
/// only to what the router holds at that point), so that `MatchedPath` is known and the
/// fallback is measured too.
#[derive(Debug, Clone)]
pub struct ServerLayer {
    metrics: Option<HttpMetrics>,
    sampling: Sampling,
}

/// The longest client-supplied `x-request-id` kept (longer ones are replaced).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

impl ServerLayer {
    /// Spans, request ids and metrics recorded into `metrics`.
    #[must_use]
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            metrics: Some(metrics.http.clone()),
            sampling: Sampling::default(),
        }
    }

    /// Spans and request ids only.
    #[must_use]
    pub fn without_metrics() -> Self {
        Self {
            metrics: None,
            sampling: Sampling::default(),
        }
    }

    /// Which requests are traced (default: OpenTelemetry's `parentbased_always_on`). Give the
    /// tracer provider the same setting ([`Sampling::sdk_sampler`]).
    #[must_use]
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry {
            inner,
            metrics: self.metrics.clone(),
            sampling: self.sampling,
        }
    }
}

/// The service of [`ServerLayer`].
#[derive(Debug, Clone)]
pub struct ServerTelemetry<S> {
    inner: S,
    metrics: Option<HttpMetrics>,
    sampling: Sampling,
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

/// The request's id: the client's when usable, a new one otherwise (then set on the request).
fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut given = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(id), None) = (given.next(), given.next())
        && !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return id.clone();
    }
    let id = request_id::generate();
    headers.insert(X_REQUEST_ID, id.clone());
    id
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
        let request_id = request_id(request.headers_mut());
        let method = method_label(request.method());
        let route = route_of(&request);
        let parent = propagation::extract_headers(request.headers());
        let parent_span = parent.span().span_context().clone();
        let (trace_id, sampled) = self.sampling.decide(&parent_span);
        let (span, unsampled) = if sampled {
            (
                sampled_span(&request, method, route, &request_id, &parent),
                None,
            )
        } else {
            // No span: nothing is built for a trace that will not be exported. The trace id and
            // the decision still travel on, so the callee drops its part of the trace too.
            (
                Span::none(),
                Some(sampling::unsampled_context(&parent, trace_id)),
            )
        };
        let in_flight = self.metrics.as_ref().map(|metrics| {
            let handles = metrics.server.get(metrics, None, method, route);
            if let Some(gauge) = &handles.in_flight {
                gauge.inc();
            }
            InFlight {
                handles,
                metrics: metrics.clone(),
            }
        });
        let scope = RequestScope {
            id: request_id.clone(),
            unsampled,
        };
        // The inner service's `call` runs in the request's scope too (what it logs, and any
        // client it calls synchronously, belong to this request).
        let inner = request_id::sync_scoped(scope.clone(), || {
            if span.is_none() {
                self.inner.call(request)
            } else {
                let _entered = span.enter();
                self.inner.call(request)
            }
        });
        ServerFuture {
            inner: request_id::scoped(scope, inner),
            span,
            request_id,
            trace_id,
            in_flight,
            started: Instant::now(),
        }
    }
}

/// The span of a sampled request, child of `parent` (or the root of a new trace).
fn sampled_span<B>(
    request: &Request<B>,
    method: &'static str,
    route: &str,
    request_id: &HeaderValue,
    parent: &opentelemetry::Context,
) -> Span {
    let parent_trace = parent.span().span_context().clone();
    let parent_trace = parent_trace.is_valid().then(|| parent_trace.trace_id());
    // Every field is given when the span is created: with JSON logs, recording a field later
    // re-serializes all of the span's fields.
    let span = tracing::info_span!(
        target: "mainstay_telemetry::server",
        "request",
        otel.name = %SpanName(method, route),
        otel.kind = "server",
        http.route = %route,
        request_id = request_id.to_str().ok(),
        trace_id = parent_trace.map(tracing::field::display),
    );
    if !span.is_disabled() {
        // OpenTelemetry-only attributes go straight to its span, not through log formatting.
        span.set_attribute("http.request.method", method);
        span.set_attribute("url.path", request.uri().path().to_owned());
        // Marked as decided, so the SDK's sampler (`Sampling::sdk_sampler`) does not apply its
        // ratio a second time to a trace that starts here.
        let _ = span.set_parent(parent.with_value(Sampled));
        if parent_trace.is_none()
            && let Some(trace_id) = propagation::trace_id(&span)
        {
            // A new trace: its id exists only now.
            span.record("trace_id", trace_id.as_str());
        }
        tracing::debug!(parent: &span, headers = ?request.headers(), "request received");
    }
    span
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
    handles: Arc<RouteMetrics>,
    metrics: HttpMetrics,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(gauge) = &self.handles.in_flight {
            gauge.dec();
        }
    }
}

pin_project! {
    /// Response future of [`ServerTelemetry`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestScope, F>,
        span: Span,
        request_id: HeaderValue,
        trace_id: TraceId,
        in_flight: Option<InFlight>,
        started: Instant,
    }
}

impl<F> fmt::Debug for ServerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFuture")
            .field("span", &self.span)
            .field("request_id", &self.request_id)
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
        let mut result = if span.is_none() {
            ready!(this.inner.poll(cx))
        } else {
            let _entered = span.enter();
            ready!(this.inner.poll(cx))
        };
        let elapsed = this.started.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1e3;
        // Without a span, the end-of-request line names the request itself.
        let ids = span
            .is_none()
            .then(|| (this.request_id.to_str().unwrap_or(""), *this.trace_id));
        let status = match &mut result {
            Ok(response) => {
                let status = response.status();
                response
                    .headers_mut()
                    .entry(X_REQUEST_ID)
                    .or_insert_with(|| this.request_id.clone());
                if !span.is_none() {
                    // Straight to the OpenTelemetry span: a `tracing` field would be formatted
                    // again.
                    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
                }
                let code = status.as_u16();
                match (status.is_server_error(), ids) {
                    (true, None) => {
                        span.set_status(opentelemetry::trace::Status::error(""));
                        tracing::warn!(parent: span, status = code, duration_ms, "request failed");
                    }
                    (true, Some((request_id, trace_id))) => tracing::warn!(
                        status = code,
                        duration_ms,
                        request_id,
                        %trace_id,
                        "request failed"
                    ),
                    (false, None) => tracing::debug!(
                        parent: span,
                        status = code,
                        duration_ms,
                        "request completed"
                    ),
                    (false, Some((request_id, trace_id))) => tracing::debug!(
                        status = code,
                        duration_ms,
                        request_id,
                        %trace_id,
                        "request completed"
                    ),
                }
                status_class(status)
            }
            Err(_) => {
                match ids {
                    None => {
                        span.set_status(opentelemetry::trace::Status::error("no response"));
                        tracing::error!(
                            parent: span,
                            duration_ms,
                            "request failed without a response"
                        );
                    }
                    Some((request_id, trace_id)) => tracing::error!(
                        duration_ms,
                        request_id,
                        %trace_id,
                        "request failed without a response"
                    ),
                }
                STATUS_ERROR
            }
        };
        if let Some(in_flight) = this.in_flight.take() {
            in_flight
                .handles
                .record(&in_flight.metrics, status, elapsed.as_secs_f64());
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
    handles: Handles,
}

impl ClientLayer {
    /// Calls to `peer` (a service name: a bounded label), recorded into `metrics`.
    #[must_use]
    pub fn new(peer: impl Into<Cow<'static, str>>, metrics: &Metrics) -> Self {
        Self {
            peer: peer.into(),
            metrics: Some(metrics.http.clone()),
            handles: Handles::default(),
        }
    }

    /// Spans, propagation and request ids only.
    #[must_use]
    pub fn without_metrics(peer: impl Into<Cow<'static, str>>) -> Self {
        Self {
            peer: peer.into(),
            metrics: None,
            handles: Handles::default(),
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
            handles: self.handles.clone(),
        }
    }
}

/// The service of [`ClientLayer`].
#[derive(Debug, Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    peer: Cow<'static, str>,
    metrics: Option<HttpMetrics>,
    handles: Handles,
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
        let handles = self.metrics.as_ref().map(|metrics| {
            let handles = self.handles.get(metrics, Some(&self.peer), method, route);
            (metrics.clone(), handles)
        });
        let unsampled = request_id::unsampled_context();
        let span = if unsampled.is_some() {
            // Serving an unsampled request: no span, and the callee told not to sample either.
            Span::none()
        } else {
            tracing::info_span!(
                target: "mainstay_telemetry::client",
                "outbound request",
                otel.name = %SpanName(method, route),
                otel.kind = "client",
                http.request.method = method,
                server.address = %self.peer,
                http.route = %route,
            )
        };
        if let Some(context) = unsampled {
            propagation::inject_headers(&context, request.headers_mut());
        } else if !span.is_disabled() {
            propagation::inject_headers(&span.context(), request.headers_mut());
        }
        if !request.headers().contains_key(X_REQUEST_ID)
            && let Some(id) = request_id::current()
        {
            request.headers_mut().insert(X_REQUEST_ID, id);
        }
        let inner = if span.is_none() {
            self.inner.call(request)
        } else {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ClientFuture {
            inner,
            span,
            handles,
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
        handles: Option<(HttpMetrics, Arc<RouteMetrics>)>,
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
        let result = if span.is_none() {
            ready!(this.inner.poll(cx))
        } else {
            let _entered = span.enter();
            ready!(this.inner.poll(cx))
        };
        let traced = !span.is_none();
        let status = match &result {
            Ok(response) => {
                let status = response.status();
                if traced {
                    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
                    if status.is_server_error() {
                        span.set_status(opentelemetry::trace::Status::error(""));
                    }
                }
                status_class(status)
            }
            Err(_) => {
                if traced {
                    span.set_status(opentelemetry::trace::Status::error("no response"));
                }
                STATUS_ERROR
            }
        };
        if let Some((metrics, handles)) = this.handles.take() {
            handles.record(&metrics, status, this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}
