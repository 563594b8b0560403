//! One trace and one request id across two services: server → client → server.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mainstay_telemetry::propagation::{extract_message, inject_message, trace_id};
use mainstay_telemetry::sampling::Sampling;
use mainstay_telemetry::{ClientLayer, Metrics, RouteTemplate, ServerLayer};
use opentelemetry::trace::{SpanKind, TraceId};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Service B: reports what it received.
fn inventory(metrics: &Metrics) -> Router {
    inventory_sampled(metrics, Sampling::default())
}

fn inventory_sampled(metrics: &Metrics, sampling: Sampling) -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(|headers: HeaderMap| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                format!("{}|{}", header("x-request-id"), header("traceparent"))
            }),
        )
        .layer(ServerLayer::new(metrics).sampling(sampling))
}

#[derive(Clone)]
struct Orders {
    client: HttpClient,
    inventory: SocketAddr,
    metrics: Metrics,
}

/// Service A: calls B through the client layer and returns B's answer.
fn orders(state: Orders) -> Router {
    orders_sampled(state, Sampling::default())
}

fn orders_sampled(state: Orders, sampling: Sampling) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route(
            "/orders/{id}",
            get(|State(state): State<Orders>| async move {
                let mut client = ServiceBuilder::new()
                    .layer(ClientLayer::new("inventory", &state.metrics))
                    .service(state.client.clone());
                let mut request = Request::get(format!("http://{}/items/7", state.inventory))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                request
                    .extensions_mut()
                    .insert(RouteTemplate::new("/items/{id}"));
                let response: Response<Incoming> =
                    client.ready().await.unwrap().call(request).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }),
        )
        .with_state(state)
        .layer(ServerLayer::new(&metrics).sampling(sampling))
}

/// Orders in front of inventory, both sampling as `sampling` says.
async fn two_services(sampling: Sampling, metrics: &Metrics) -> (HttpClient, SocketAddr) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let inventory_addr = serve(inventory_sampled(metrics, sampling)).await;
    let orders_addr = serve(orders_sampled(
        Orders {
            client: client.clone(),
            inventory: inventory_addr,
            metrics: metrics.clone(),
        },
        sampling,
    ))
    .await;
    (client, orders_addr)
}

/// Calls orders with `traceparent` (if any); the `traceparent` inventory received.
async fn call_orders(client: &HttpClient, orders: SocketAddr, traceparent: Option<&str>) -> String {
    let mut request = Request::get(format!("http://{orders}/orders/42"));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    body.split_once('|').unwrap().1.to_owned()
}

#[tokio::test]
async fn an_unsampled_request_exports_no_span_but_counts_and_passes_its_trace_on() {
    let sampling = Sampling::parent_based_ratio(0.0);
    let spans = common::Spans::install_sampling(sampling);
    let metrics = Metrics::new();
    let (client, orders) = two_services(sampling, &metrics).await;

    // A new trace, not sampled at a ratio of 0: inventory is told so, with the trace's id.
    let seen = call_orders(&client, orders, None).await;
    let fields: Vec<&str> = seen.split('-').collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert!(
        TraceId::from_hex(fields[1]).is_ok_and(|id| id != TraceId::INVALID),
        "{seen}"
    );
    assert_eq!(
        fields[3], "00",
        "the callee is told the trace is not sampled: {seen}"
    );
    // A caller's unsampled trace is followed, and its id kept.
    let seen = call_orders(
        &client,
        orders,
        Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-00")),
    )
    .await;
    assert!(
        seen.starts_with(&format!("00-{TRACE_ID}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // A caller's sampled trace is followed too: its three spans are exported, and nothing else
    // ever was (the unsampled requests ended before this one started).
    let seen = call_orders(
        &client,
        orders,
        Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")),
    )
    .await;
    assert!(seen.ends_with("-01"), "{seen}");
    let exported = spans.wait_for(3).await;
    assert_eq!(exported.len(), 3, "{exported:#?}");
    assert!(
        exported
            .iter()
            .all(|span| span.parent_span_id.to_string() != "0000000000000000"),
        "no root span was exported for the unsampled requests: {exported:#?}"
    );

    // Every request counted, sampled or not.
    let text = metrics.encode();
    for line in [
        r#"http_server_requests_total{method="GET",route="/orders/{id}",status="2xx"} 3"#,
        r#"http_server_requests_total{method="GET",route="/items/{id}",status="2xx"} 3"#,
        r#"http_client_requests_total{peer="inventory",method="GET",route="/items/{id}",status="2xx"} 3"#,
        r#"http_server_requests_in_flight{method="GET",route="/orders/{id}"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn a_trace_the_layer_starts_is_sampled_once_not_twice() {
    // The layer samples every new trace; the SDK's own ratio is 0. Without the layer's mark
    // the SDK would drop the root, and the trace would have a client span with no parent.
    let spans = common::Spans::install_sampling(Sampling::parent_based_ratio(0.0));
    let metrics = Metrics::new();
    let (client, orders) = two_services(Sampling::parent_based_ratio(1.0), &metrics).await;
    let seen = call_orders(&client, orders, None).await;
    assert!(seen.ends_with("-01"), "{seen}");
    let exported = spans.wait_for(3).await;
    let root = exported
        .iter()
        .find(|s| s.span_kind == SpanKind::Server && s.name == "GET /orders/{id}")
        .unwrap_or_else(|| panic!("no root: {exported:#?}"));
    let trace = root.span_context.trace_id();
    assert!(seen.starts_with(&format!("00-{trace}-")), "{seen}");
    assert!(exported.iter().all(|s| s.span_context.trace_id() == trace));
}

#[tokio::test]
async fn one_trace_and_one_request_id_cross_two_services() {
    let spans = common::Spans::install();
    let metrics = Metrics::new();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let inventory_addr = serve(inventory(&metrics)).await;
    let orders_addr = serve(orders(Orders {
        client: client.clone(),
        inventory: inventory_addr,
        metrics: metrics.clone(),
    }))
    .await;

    let request = Request::get(format!("http://{orders_addr}/orders/42"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("x-request-id", "req-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-123", "echoed");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let (seen_id, seen_traceparent) = body.split_once('|').unwrap();
    assert_eq!(
        seen_id, "req-123",
        "the request id reached the second service"
    );
    assert!(
        seen_traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "the trace reached the second service: {seen_traceparent}"
    );

    let exported = spans.wait_for(3).await;
    let find = |name: &str, kind: SpanKind| {
        exported
            .iter()
            .find(|s| s.name == name && s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span {name}: {exported:#?}"))
    };
    let a_server = find("GET /orders/{id}", SpanKind::Server);
    let a_client = find("GET /items/{id}", SpanKind::Client);
    let b_server = find("GET /items/{id}", SpanKind::Server);
    let trace = TraceId::from_hex(TRACE_ID).unwrap();
    for span in [a_server, a_client, b_server] {
        assert_eq!(span.span_context.trace_id(), trace, "{}", span.name);
    }
    assert_eq!(a_server.parent_span_id.to_string(), CALLER_SPAN);
    assert_eq!(a_client.parent_span_id, a_server.span_context.span_id());
    assert_eq!(b_server.parent_span_id, a_client.span_context.span_id());
    assert!(seen_traceparent.contains(&a_client.span_context.span_id().to_string()));
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(a_server, "request_id").as_deref(),
        Some("req-123")
    );
    assert_eq!(
        attribute(b_server, "request_id").as_deref(),
        Some("req-123")
    );
    assert_eq!(
        attribute(a_server, "http.route").as_deref(),
        Some("/orders/{id}")
    );
    assert_eq!(attribute(b_server, "url.path").as_deref(), Some("/items/7"));
    assert_eq!(
        attribute(b_server, "http.response.status_code").as_deref(),
        Some("200")
    );

    let text = metrics.encode();
    for line in [
        r#"http_server_requests_total{method="GET",route="/orders/{id}",status="2xx"} 1"#,
        r#"http_server_requests_total{method="GET",route="/items/{id}",status="2xx"} 1"#,
        r#"http_client_requests_total{peer="inventory",method="GET",route="/items/{id}",status="2xx"} 1"#,
        r#"http_server_request_duration_seconds_count{method="GET",route="/orders/{id}",status="2xx"} 1"#,
        r#"http_server_requests_in_flight{method="GET",route="/orders/{id}"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn a_request_without_an_id_gets_one_and_unknown_routes_fold_into_one_label() {
    let _spans = common::Spans::install();
    let metrics = Metrics::new();
    let app = inventory(&metrics);
    let response = app
        .clone()
        .oneshot(
            Request::get("/items/1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    for path in ["/nope/1", "/nope/2", "/other"] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"http_server_requests_total{method="GET",route="unmatched",status="4xx"} 3"#
        ),
        "{text}"
    );
    assert!(!text.contains("/nope"), "raw paths never become labels");
}

#[tokio::test]
async fn traceparent_round_trips_through_message_headers() {
    let spans = common::Spans::install();
    let producer = tracing::info_span!("publish");
    let mut headers = std::collections::HashMap::new();
    inject_message(&producer, &mut headers);
    let sent = trace_id(&producer).expect("the producer has a trace");
    assert!(headers["traceparent"].contains(&sent));

    let consumer = tracing::info_span!("consume");
    assert!(extract_message(&consumer, &headers));
    assert_eq!(trace_id(&consumer).as_deref(), Some(sent.as_str()));
    drop(consumer);
    drop(producer);
    let exported = spans.wait_for(2).await;
    let publish = exported.iter().find(|s| s.name == "publish").unwrap();
    let consume = exported.iter().find(|s| s.name == "consume").unwrap();
    assert_eq!(consume.parent_span_id, publish.span_context.span_id());

    let orphan = tracing::info_span!("orphan");
    assert!(
        !extract_message(&orphan, &std::collections::HashMap::<String, String>::new()),
        "no headers: no parent"
    );
}

#[tokio::test]
async fn sensitive_headers_are_marked_before_anything_logs_them() {
    let _spans = common::Spans::install();
    let app = Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move {
                let debug = format!("{headers:?}");
                assert!(headers["authorization"].is_sensitive());
                assert!(headers["x-consul-token"].is_sensitive());
                assert!(!headers["accept"].is_sensitive());
                assert!(!debug.contains("secret"), "{debug}");
                "ok"
            }),
        )
        .layer(ServerLayer::without_metrics());
    let response = app
        .oneshot(
            Request::get("/")
                .header("authorization", "Bearer secret")
                .header("x-consul-token", "secret")
                .header("accept", "text/plain")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .map_err(BoxError::from)
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Collects log lines.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_log_lines_carry_the_request_id_and_the_trace_id() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    let lines = Lines::default();
    let writer = lines.clone();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(mainstay_telemetry::json_logs(move || writer.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|| async {
                tracing::info!("reserving stock");
                StatusCode::BAD_GATEWAY
            }),
        )
        .layer(ServerLayer::without_metrics());
    let response = app
        .oneshot(
            Request::get("/orders/7")
                .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
                .header("x-request-id", "req-9")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let messages: Vec<&str> = logged
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert_eq!(messages, ["reserving stock", "request failed"], "{text}");
    for line in &logged {
        assert_eq!(line["span"]["request_id"], "req-9", "{line}");
        assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
        assert_eq!(line["span"]["http.route"], "/orders/{id}", "{line}");
    }
    assert_eq!(logged[1]["level"], "WARN");
    assert_eq!(logged[1]["status"], 502);
}

#[tokio::test]
async fn a_request_id_a_client_sends_is_kept_only_when_short_and_printable() {
    let _spans = common::Spans::install();
    let app = inventory(&Metrics::new());
    let echoed = |id: Vec<u8>| {
        let app = app.clone();
        async move {
            let request = Request::get("/items/1")
                .header("x-request-id", http::HeaderValue::from_bytes(&id).unwrap())
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let seen = String::from_utf8(body.to_vec()).unwrap();
            let (seen, _) = seen.split_once('|').unwrap();
            (seen.len(), seen.as_bytes() == id.as_slice())
        }
    };
    let longest = vec![b'a'; mainstay_telemetry::MAX_REQUEST_ID_BYTES];
    assert_eq!(echoed(longest).await, (128, true), "at the bound: kept");
    let too_long = vec![b'a'; mainstay_telemetry::MAX_REQUEST_ID_BYTES + 1];
    assert_eq!(echoed(too_long).await, (36, false), "beyond it: replaced");
    assert_eq!(echoed(b"two words".to_vec()).await, (36, false), "a space");
    assert_eq!(
        echoed(b"caf\xc3\xa9".to_vec()).await,
        (36, false),
        "not ASCII"
    );
}

#[tokio::test]
async fn an_unsampled_requests_log_lines_carry_its_ids_without_a_span() {
    use tracing_subscriber::layer::SubscriberExt;

    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(mainstay_telemetry::json_logs(move || writer.clone()));
    let _default = tracing::subscriber::set_default(subscriber);
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|| async {
                tracing::info!("reserving stock");
                StatusCode::BAD_GATEWAY
            }),
        )
        // Logs in `call`, before any future is polled (as a router or an admission layer does).
        .layer(tower::util::MapRequestLayer::new(
            |request: Request<axum::body::Body>| {
                tracing::info!("admitting");
                request
            },
        ))
        .layer(ServerLayer::without_metrics().sampling(Sampling::parent_based_ratio(0.0)));
    let response = app
        .oneshot(
            Request::get("/orders/7")
                .header("x-request-id", "req-10")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    tracing::info!("outside any request");

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let messages: Vec<&str> = logged
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "admitting",
            "reserving stock",
            "request failed",
            "outside any request"
        ],
        "{text}"
    );
    let trace_id = logged[0]["trace_id"].as_str().unwrap();
    assert!(TraceId::from_hex(trace_id).is_ok_and(|id| id != TraceId::INVALID));
    for line in &logged[..3] {
        assert_eq!(line["request_id"], "req-10", "{line}");
        assert_eq!(line["trace_id"], trace_id, "{line}");
        assert!(line.get("span").is_none(), "no span was built: {line}");
    }
    assert!(logged[3].get("request_id").is_none(), "{}", logged[3]);
    assert_eq!(logged[2]["level"], "WARN");
}
