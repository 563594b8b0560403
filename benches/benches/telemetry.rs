//! Per-request cost of the telemetry server layer, beside a bare axum handler and
//! tower-http's `TraceLayer`, in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench telemetry
//! ```
//!
//! The process has the subscriber a service runs with: an `info` filter, the OpenTelemetry
//! layer (trace ids, no exporter, the services' sampler: `parentbased_traceidratio` at 0.1)
//! and JSON logs, written to a sink instead of stdout.
//!
//! Two request shapes: with a sampled `traceparent` (every request traced, the caller decided)
//! and without one (a new trace each time, a tenth of them sampled, as at the gateway).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::Criterion;
use http::Request;
use mainstay_telemetry::sampling::Sampling;
use mainstay_telemetry::{Metrics, ServerLayer};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::{Service, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

/// The subscriber of a service: `info` filter, OpenTelemetry layer without an exporter, and
/// (unless `logs` is false) JSON logs written to a sink.
fn subscriber(provider: &SdkTracerProvider, logs: bool) -> tracing::Dispatch {
    let json = logs.then(|| mainstay_telemetry::json_logs(std::io::sink));
    tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
            .with(json),
    )
}

fn routes() -> Router {
    Router::new().route("/products/{id}", get(|| async { "a product" }))
}

/// The peer's RED metrics: what a service adds beside tower-http's `TraceLayer` to count and
/// time requests by method, route and status with prometheus-client.
#[derive(Clone)]
struct Red<S> {
    inner: S,
    requests: Family<RedLabels, Counter>,
    duration: Family<RedLabels, Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedLabels {
    method: String,
    route: String,
    status: u16,
}

impl<S> Red<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
        }
    }
}

impl<S, B> Service<Request<B>> for Red<S>
where
    S: Service<Request<B>, Response = axum::response::Response> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method().to_string();
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(String::new, |p| p.as_str().to_owned());
        let started = tokio::time::Instant::now();
        let future = self.inner.call(request);
        let (requests, duration) = (self.requests.clone(), self.duration.clone());
        Box::pin(async move {
            let response = future.await?;
            let labels = RedLabels {
                method,
                route,
                status: response.status().as_u16(),
            };
            requests.get_or_create(&labels).inc();
            duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

fn bench_router(c: &mut Criterion, name: &str, dispatch: &tracing::Dispatch, router: Router) {
    bench_requests(c, name, dispatch, router, true);
}

/// Requests with a sampled `traceparent` (`with_parent`) or none (a new trace each).
fn bench_requests(
    c: &mut Criterion,
    name: &str,
    dispatch: &tracing::Dispatch,
    router: Router,
    with_parent: bool,
) {
    let _default = tracing::dispatcher::set_default(dispatch);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut service = router.into_service::<Body>();
    c.bench_function(name, |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut request = Request::get("/products/42");
                if with_parent {
                    request = request.header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    );
                }
                let request = request.body(Body::empty()).expect("request");
                let service = ServiceExt::<Request<Body>>::ready(&mut service)
                    .await
                    .map_err(|e: Infallible| e)
                    .expect("ready");
                black_box(service.call(request).await.expect("response"))
            })
        });
    });
}

fn main() {
    let sampling = Sampling::parent_based_ratio(0.1);
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampling.sdk_sampler())
        .build();
    let with_logs = subscriber(&provider, true);
    let without_logs = subscriber(&provider, false);
    let mut criterion = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let metrics = Metrics::new();
    let logs = &with_logs;
    bench_router(&mut criterion, "server/bare axum handler", logs, routes());
    bench_router(
        &mut criterion,
        "server/tower-http TraceLayer (default: DEBUG spans, off at INFO)",
        logs,
        routes().layer(TraceLayer::new_for_http()),
    );
    bench_router(
        &mut criterion,
        "server/tower-http TraceLayer, INFO spans",
        logs,
        routes().layer(
            TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().level(Level::INFO)),
        ),
    );
    bench_router(
        &mut criterion,
        "server/mainstay ServerLayer (request id + span + metrics)",
        logs,
        routes().layer(ServerLayer::new(&metrics)),
    );
    bench_router(
        &mut criterion,
        "server/mainstay ServerLayer, no metrics",
        logs,
        routes().layer(ServerLayer::without_metrics()),
    );
    bench_router(
        &mut criterion,
        "server/mainstay ServerLayer, no JSON log layer",
        &without_logs,
        routes().layer(ServerLayer::new(&metrics)),
    );
    // New traces, a tenth sampled: the gateway's case, and any service called by clients that
    // send no `traceparent`.
    bench_requests(
        &mut criterion,
        "server/new traces/bare axum handler",
        logs,
        routes(),
        false,
    );
    bench_requests(
        &mut criterion,
        "server/new traces/tower-http TraceLayer (default) + prometheus-client RED",
        logs,
        routes()
            .layer(tower::layer::layer_fn(Red::new))
            .layer(TraceLayer::new_for_http()),
        false,
    );
    bench_requests(
        &mut criterion,
        "server/new traces/mainstay ServerLayer, 10 % sampled (request id + span + metrics)",
        logs,
        routes().layer(ServerLayer::new(&metrics).sampling(sampling)),
        false,
    );
    criterion.final_summary();
}
