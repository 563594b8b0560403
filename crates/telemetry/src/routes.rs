//! `/metrics`, `/health/live` and `/health/ready` as an axum router.

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, accepts_openmetrics};
use crate::{Health, Metrics};

/// The operational endpoints of a service:
///
/// * `GET /metrics`: every metric of `metrics`, in the OpenMetrics text format when the
///   scraper accepts it (Prometheus does), in the Prometheus text format 0.0.4 otherwise;
/// * `GET /health/live`: `200 {"status":"up"}` while the process can answer;
/// * `GET /health/ready`: runs the checks of `health`; 200 when all pass, 503 otherwise, with a
///   JSON body naming each check.
///
/// Merge it into the service's router *after* the layers for timeouts and load shedding, so
/// that probes are answered even when the service is saturated, and before the
/// [`ServerLayer`](crate::ServerLayer), so that it is measured.
///
/// ```
/// use mainstay_telemetry::{Health, Metrics, routes};
///
/// let app: axum::Router = axum::Router::new().merge(routes(&Metrics::new(), &Health::new()));
/// # let _ = app;
/// ```
pub fn routes<S: Clone + Send + Sync + 'static>(metrics: &Metrics, health: &Health) -> Router<S> {
    let metrics = metrics.clone();
    let health = health.clone();
    Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let metrics = metrics.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if accepts_openmetrics(accept) {
                        ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], metrics.encode())
                    } else {
                        (
                            [(CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                            metrics.encode_prometheus(),
                        )
                    }
                }
            }),
        )
        .route(
            "/health/live",
            get(|| async { json_response(StatusCode::OK, &serde_json::json!({"status": "up"})) }),
        )
        .route(
            "/health/ready",
            get(move || {
                let health = health.clone();
                async move {
                    let report = health.readiness().await;
                    let status = StatusCode::from_u16(report.status_code())
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    json_response(status, &report.to_json())
                }
            }),
        )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
