//! Per-request cost of the telemetry server layer, beside a bare axum handler and
//! tower-http's `TraceLayer`, in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench telemetry
//! ```
//!
//! The process has the subscriber a service runs with: an `info` filter, the OpenTelemetry
//! layer (trace ids, no exporter) and JSON logs, written to a sink instead of stdout.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::Criterion;
use http::Request;
use mainstay_telemetry::{Metrics, ServerLayer};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Service, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

/// The subscriber of a service: `info` filter, OpenTelemetry layer without an exporter, and
/// (unless `logs` is false) JSON logs written to a sink.
fn subscriber(provider: &SdkTracerProvider, logs: bool) -> tracing::Dispatch {
    let json = logs.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::sink)
    });
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

fn bench_router(c: &mut Criterion, name: &str, dispatch: &tracing::Dispatch, router: Router) {
    let _default = tracing::dispatcher::set_default(dispatch);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut service = router.into_service::<Body>();
    c.bench_function(name, |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::get("/products/42")
                    .header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    )
                    .body(Body::empty())
                    .expect("request");
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
    let provider = SdkTracerProvider::builder().build();
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
    criterion.final_summary();
}
