//! `init` installs the process-wide subscriber, so these tests live in their own binary.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use mainstay_telemetry::{Config, InitError, LogFormat};

#[test]
fn a_bad_filter_is_a_clear_error_not_a_panic() {
    let error = Config::new("svc")
        .filter("info,[unclosed")
        .init()
        .expect_err("the filter does not parse");
    assert!(matches!(error, InitError::Filter { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(r#"invalid log filter "info,[unclosed""#),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_otlp_endpoint_and_flushed_on_shutdown() {
    let received: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((content_type, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let guard = Config::new("otlp-export-test")
        .format(LogFormat::Json)
        .otlp_endpoint(Some(format!("http://{addr}/")))
        .init()
        .expect("telemetry starts");
    {
        let span = tracing::info_span!("checkout", order_id = 42);
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    // The exporter blocks while it flushes; keep the runtime's workers free for the collector.
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .expect("the last export succeeded");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "the collector received the spans");
    let (content_type, body) = &received[0];
    assert_eq!(content_type, "application/x-protobuf");
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"checkout"), "the span's name is in the export");
    assert!(
        contains(b"otlp-export-test"),
        "the service name is in the resource"
    );

    let again = Config::new("svc")
        .init()
        .expect_err("one global subscriber");
    assert!(
        matches!(again, InitError::AlreadyInitialized(_)),
        "{again:?}"
    );
}
