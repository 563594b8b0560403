//! The `/metrics` and `/health/*` endpoints, read back the way Prometheus and probes read them.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mainstay_telemetry::{ClientLayer, Health, Metrics, RouteTemplate, ServerLayer, routes};
use prometheus_client::metrics::gauge::Gauge;
use tower::{Service, ServiceBuilder, ServiceExt};

async fn get_text(app: &Router, path: &str, accept: &str) -> (StatusCode, String, String) {
    let response = app
        .clone()
        .oneshot(
            Request::get(path)
                .header("accept", accept)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            (key.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

fn app(metrics: &Metrics, health: &Health) -> Router {
    Router::new()
        .route("/products/{id}", get(|| async { "product" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .merge(routes(metrics, health))
        // Last, so that it also wraps the fallback: unknown paths are counted as `unmatched`.
        .layer(ServerLayer::new(metrics))
}

#[tokio::test]
async fn metrics_are_served_in_both_formats_and_pass_promtool() {
    let metrics = Metrics::new();
    let health = Health::new();
    let app = app(&metrics, &health);
    for path in [
        "/products/1",
        "/products/2",
        "/products/3",
        "/fail",
        "/missing",
    ] {
        let _ = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
    }
    let mut client = ServiceBuilder::new()
        .layer(ClientLayer::new("catalog", &metrics))
        .service(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .body(Body::empty())
                    .unwrap(),
            )
        }));
    let mut request = Request::get("http://catalog/products/9")
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(RouteTemplate::new("/products/{id}"));
    client.ready().await.unwrap().call(request).await.unwrap();
    // Another crate's metric in the same registry.
    let pool = Gauge::<i64>::default();
    metrics.register(
        "db_pool_connections",
        "Open database connections",
        pool.clone(),
    );
    pool.set(4);
    // The resilience layers' state, in every family, through the same registry.
    let resilience = mainstay_resilience::metrics::ResilienceCollector::new();
    metrics.register_collector(Box::new(resilience.clone()));
    let breaker = mainstay_resilience::circuit_breaker::Breaker::builder()
        .build()
        .unwrap();
    breaker.trip();
    resilience.breaker("catalog", "10.0.0.7:8080", &breaker);
    resilience.bulkhead(
        "catalog",
        &mainstay_resilience::bulkhead::BulkheadLayer::new(8),
    );
    let budget = mainstay_resilience::retry::RetryBudget::new(Duration::from_secs(1), 0, 0.0);
    assert!(!budget.withdraw());
    resilience.retry_budget("catalog", &budget);
    resilience.adaptive_limit(
        "catalog",
        &mainstay_resilience::adaptive::AdaptiveLimitLayer::new(
            mainstay_resilience::adaptive::Aimd::default(),
        ),
    );
    let per_client = mainstay_resilience::rate_limit::KeyedRateLimitLayer::<(), String>::new(
        1,
        Duration::from_secs(60),
        (),
    )
    .unwrap();
    let _ = per_client.check(&"a".to_owned());
    assert!(per_client.check(&"a".to_owned()).is_err());
    resilience.keyed_rate_limit("per_client", &per_client);

    let (status, content_type, open) = get_text(
        &app,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(open.ends_with("# EOF\n"));
    let values = samples(&open);
    let value = |key: &str| {
        *values
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{open}"))
    };
    assert_eq!(
        value(r#"http_server_requests_total{method="GET",route="/products/{id}",status="2xx"}"#),
        3.0
    );
    assert_eq!(
        value(r#"http_server_requests_total{method="GET",route="/fail",status="5xx"}"#),
        1.0
    );
    assert_eq!(
        value(r#"http_server_requests_total{method="GET",route="unmatched",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"http_server_request_duration_seconds_count{method="GET",route="/products/{id}",status="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            r#"http_server_request_duration_seconds_bucket{le="+Inf",method="GET",route="/products/{id}",status="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            r#"http_client_requests_total{peer="catalog",method="GET",route="/products/{id}",status="5xx"}"#
        ),
        1.0
    );
    assert_eq!(value("db_pool_connections"), 4.0);
    assert_eq!(
        value(
            r#"resilience_circuit_breaker_state{service="catalog",endpoint="10.0.0.7:8080",state="open"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"resilience_retry_budget_exhausted_total{service="catalog"}"#),
        1.0
    );
    assert_eq!(
        value(r#"resilience_rate_limit_refused_calls_total{limiter="per_client"}"#),
        1.0
    );
    assert!(
        values.keys().all(|k| !k.contains("route=\"/products/1\"")),
        "raw paths never become labels"
    );

    let (_, content_type, text) = get_text(&app, "/metrics", "text/plain").await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    // The first scrape has been counted since; the rest is identical.
    let without_scrapes = |samples: HashMap<String, f64>| -> HashMap<String, f64> {
        samples
            .into_iter()
            .filter(|(key, _)| !key.contains(r#"route="/metrics""#))
            .collect()
    };
    assert_eq!(
        without_scrapes(samples(&text)),
        without_scrapes(values.clone()),
        "the same samples in both formats"
    );
    assert!(text.contains("# TYPE http_server_requests_total counter"));
    mainstay_test_support::promtool::check_metrics(&text);
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_to_503_when_a_check_fails_or_times_out() {
    let metrics = Metrics::new();
    let health = Health::new().timeout(Duration::from_secs(1));
    let database_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = database_up.clone();
    health.add_check("database", move || {
        let up = up.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err("connection refused")
            }
        }
    });
    let app = app(&metrics, &health);

    let (status, content_type, body) = get_text(&app, "/health/ready", "*/*").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "up");
    assert_eq!(json["checks"]["database"]["status"], "up");

    database_up.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, _, body) = get_text(&app, "/health/ready", "*/*").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "down");
    assert_eq!(json["checks"]["database"]["error"], "connection refused");

    database_up.store(true, std::sync::atomic::Ordering::SeqCst);
    health.add_check("broker", || async {
        std::future::pending::<()>().await;
        Ok::<_, String>(())
    });
    let (status, _, body) = get_text(&app, "/health/ready", "*/*").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["checks"]["database"]["status"], "up");
    assert_eq!(json["checks"]["broker"]["error"], "timed out after 1000 ms");

    let (status, _, body) = get_text(&app, "/health/live", "*/*").await;
    assert_eq!(status, StatusCode::OK, "liveness does not run checks");
    assert_eq!(body, r#"{"status":"up"}"#);
}

#[tokio::test]
async fn a_draining_service_is_not_ready() {
    let health = Health::new();
    assert!(health.readiness().await.is_ready(), "no checks: ready");
    health.set_draining();
    let report = health.readiness().await;
    assert!(!report.is_ready());
    assert_eq!(report.to_json()["status"], "draining");
}
