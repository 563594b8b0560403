//! The standard server stack, driven the way clients drive a service.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use shop_common::config::ServiceConfig;
use shop_common::{Json, Kit, PROBLEM_JSON, Problem, serve_until};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

#[derive(Debug, Deserialize, serde::Serialize)]
struct NewProduct {
    name: String,
    price_minor: u64,
}

fn kit() -> Kit {
    let mut config =
        ServiceConfig::from_vars("test", 0, &shop_common::config::Vars(|_: &str| None)).unwrap();
    config.request_timeout = Duration::from_secs(2);
    config.body_limit = 64;
    Kit::new(config)
}

fn app(kit: &Kit) -> Router {
    kit.stack(
        Router::new()
            .route(
                "/products",
                post(|Json(product): Json<NewProduct>| async move {
                    (StatusCode::CREATED, Json(product))
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/missing",
                get(|| async { Problem::not_found("no product 7").with("product_id", 7) }),
            ),
    )
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn post_json(body: &str, content_type: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/products");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn bad_bodies_are_client_errors_with_problem_details() {
    let kit = kit();
    let app = app(&kit);
    let json = Some("application/json");
    let cases = [
        (
            post_json(r#"{"name":"tea","price_minor":450}"#, json),
            StatusCode::CREATED,
        ),
        (
            post_json(r#"{"name":"tea","#, json),
            StatusCode::BAD_REQUEST,
        ),
        (
            post_json(r#"{"name":"tea","price_minor":450}"#, Some("text/plain")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post_json(r#"{"name":"tea","price_minor":450}"#, None),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            post_json(r#"{"name":"tea","price_minor":-1}"#, json),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            post_json(r#"{"name":"tea"}"#, json),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            post_json(
                &format!(r#"{{"name":"{}","price_minor":1}}"#, "x".repeat(100)),
                json,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (request, expected) in cases {
        let (status, content_type, body) = send(&app, request).await;
        assert_eq!(status, expected, "{body}");
        if status.is_client_error() {
            assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["status"], status.as_u16());
            assert_eq!(problem["type"], "about:blank");
            assert!(
                problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}"
            );
        }
    }
    let (status, content_type, body) =
        send(&app, Request::get("/missing").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["detail"], "no product 7");
    assert_eq!(
        problem["product_id"], 7,
        "extension members sit beside the standard ones"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_is_a_504_problem() {
    let kit = kit();
    let app = app(&kit);
    let (status, content_type, _) =
        send(&app, Request::get("/slow").body(Body::empty()).unwrap()).await;
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "REQUEST_TIMEOUT_MS is 2 s"
    );
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));

    // The caller's shorter deadline wins.
    let started = tokio::time::Instant::now();
    let request = Request::get("/slow")
        .header("x-request-deadline", "100")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test]
async fn probes_and_metrics_are_served_by_the_stack() {
    let kit = kit();
    kit.health
        .add_check("database", || async { Err::<(), _>("down") });
    let app = app(&kit);
    let (status, _, _) = send(
        &app,
        Request::get("/health/live").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(
        &app,
        Request::get("/health/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _, body) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"route="/health/ready",status="5xx"} 1"#),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_then_stops_the_tasks() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut kit = kit();
    kit.config.shutdown_grace = Duration::from_secs(30);
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let answered = Arc::new(AtomicBool::new(false));
    let (in_handler, go, done) = (started.clone(), release.clone(), answered.clone());
    let app = kit.stack(Router::new().route(
        "/work",
        get(move || {
            let (in_handler, go, done) = (in_handler.clone(), go.clone(), done.clone());
            async move {
                in_handler.notify_one();
                go.notified().await;
                done.store(true, Ordering::SeqCst);
                "done"
            }
        }),
    ));
    // A relay: stopped only once no request can enqueue any more.
    let stopped_after_the_request = Arc::new(std::sync::Mutex::new(None));
    {
        let (seen, answered) = (stopped_after_the_request.clone(), answered.clone());
        kit.tasks.spawn(
            "relay",
            shop_common::tasks::Stage::Relay,
            move |stop| async move {
                stop.cancelled().await;
                *seen.lock().unwrap() = Some(answered.load(Ordering::SeqCst));
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let kit = kit.clone();
        async move {
            serve_until(listener, app, &kit, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    started.notified().await;
    stop.send(()).unwrap();
    // Shutdown has begun while the request is in flight.
    while !kit.health.is_draining() {
        tokio::task::yield_now().await;
    }
    assert!(!server.is_finished(), "the server waits for the request");
    release.notify_one();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    server.await.unwrap().unwrap();
    assert!(!kit.health.readiness().await.is_ready());
    assert_eq!(
        *stopped_after_the_request.lock().unwrap(),
        Some(true),
        "the task was stopped, after the request was answered"
    );
}

#[tokio::test]
async fn readiness_turns_503_while_the_listener_still_accepts_for_the_drain_delay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kit = kit();
    // Long enough that the requests below land inside it, whatever the machine's speed.
    kit.config.drain_delay = Duration::from_secs(30);
    let app = kit.stack(Router::new().route("/work", get(|| async { "done" })));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let kit = kit.clone();
        async move {
            serve_until(listener, app, &kit, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    assert!(get("/health/ready").await.starts_with("HTTP/1.1 200"));
    stop.send(()).unwrap();
    while !kit.health.is_draining() {
        tokio::task::yield_now().await;
    }
    // A balancer polling readiness learns to stop sending, and what it sends meanwhile, on
    // new connections, is still served.
    assert!(get("/health/ready").await.starts_with("HTTP/1.1 503"));
    let served = get("/work").await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(!server.is_finished());
    server.abort();
}

/// A kit that keeps idempotent answers in an in-memory SQLite database, over routes that count
/// their calls: `/orders` answers 201 with the call's number, `/flaky` 503 on its first call,
/// `/held` waits for `release`, `/guarded` 401 on its first call.
async fn keyed_app(release: Arc<Notify>) -> (Router, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let database = shop_common::store::Database::connect("sqlite::memory:")
        .await
        .unwrap();
    let kit = kit().with_idempotency(&database).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (orders, flaky, held, guarded) =
        (calls.clone(), calls.clone(), calls.clone(), calls.clone());
    let app = kit.stack(
        Router::new()
            .route(
                "/orders",
                post(move |body: String| async move {
                    let n = orders.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        StatusCode::CREATED,
                        [("location", format!("/orders/{n}"))],
                        format!("order {n} for {body}"),
                    )
                }),
            )
            .route(
                "/flaky",
                post(move || async move {
                    if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::CREATED
                    }
                }),
            )
            .route(
                "/held",
                post(move || async move {
                    held.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    StatusCode::CREATED
                }),
            )
            .route(
                "/guarded",
                post(move || async move {
                    if guarded.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::CREATED
                    }
                }),
            ),
    );
    (app, calls)
}

fn keyed(path: &str, key: &str, body: &str, authorization: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path).header("idempotency-key", key);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_keyed_post_runs_once_and_its_answer_is_given_again() {
    use std::sync::atomic::Ordering;
    let (app, calls) = keyed_app(Arc::new(Notify::new())).await;
    let first = app
        .clone()
        .oneshot(keyed("/orders", "order-1", "a kettle", None))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let again = app
        .clone()
        .oneshot(keyed("/orders", "order-1", "a kettle", None))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], "/orders/1");
    let body = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "order 1 for a kettle");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The same key with another body is the client's mistake.
    let (status, content_type, _) = send(&app, keyed("/orders", "order-1", "a teapot", None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
    // Another caller's key is another key, even if it is spelled the same.
    let (status, _, body) = send(
        &app,
        keyed("/orders", "order-1", "a kettle", Some("Bearer other")),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::CREATED, "order 2 for a kettle")
    );
    // No key: every request runs; a bad key is refused before anything runs.
    for _ in 0..2 {
        let request = Request::post("/orders").body(Body::from("a cup")).unwrap();
        assert_eq!(send(&app, request).await.0, StatusCode::CREATED);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let (status, _, _) = send(&app, keyed("/orders", &"k".repeat(256), "a cup", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_answer_that_is_not_final_is_not_kept() {
    let (app, _) = keyed_app(Arc::new(Notify::new())).await;
    let (status, _, _) = send(&app, keyed("/flaky", "try-1", "", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = send(&app, keyed("/flaky", "try-1", "", None)).await;
    assert_eq!(status, StatusCode::CREATED, "the retry ran");
}

#[tokio::test]
async fn the_same_key_while_its_request_runs_is_a_conflict() {
    use std::sync::atomic::Ordering;
    let release = Arc::new(Notify::new());
    let (app, calls) = keyed_app(release.clone()).await;
    let running = tokio::spawn({
        let app = app.clone();
        async move { send(&app, keyed("/held", "held-1", "", None)).await }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let response = app
        .clone()
        .oneshot(keyed("/held", "held-1", "", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(response.headers()["retry-after"], "1");
    release.notify_one();
    assert_eq!(running.await.unwrap().0, StatusCode::CREATED);
    let (status, _, _) = send(&app, keyed("/held", "held-1", "", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_keyed_request_dropped_midway_still_finishes_and_keeps_its_answer() {
    use std::sync::atomic::Ordering;
    let release = Arc::new(Notify::new());
    let (app, calls) = keyed_app(release.clone()).await;
    // The caller gives up (a gateway's attempt timeout, a closed connection) while the
    // handler runs: the request future is dropped.
    let abandoned = tokio::spawn({
        let app = app.clone();
        async move { send(&app, keyed("/held", "held-2", "", None)).await }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    release.notify_one();
    // The retry waits while the first request finishes, then gets its answer: the handler
    // ran once, and the key was never given up to run it twice.
    let replayed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let response = app
                .clone()
                .oneshot(keyed("/held", "held-2", "", None))
                .await
                .unwrap();
            if response.status() != StatusCode::CONFLICT {
                break response;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the abandoned request never finished: its key stays in progress");
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refusals_of_the_caller_are_not_kept_under_its_key() {
    let (app, _) = keyed_app(Arc::new(Notify::new())).await;
    // A 401 or 403 says who the caller was, not what the request did: once signed in, the
    // same key runs the request.
    let (status, _, _) = send(&app, keyed("/guarded", "g-1", "", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&app, keyed("/guarded", "g-1", "", None)).await;
    assert_eq!(status, StatusCode::CREATED, "the refusal was kept");
}

/// Keyed requests whose callers went away are bounded (`KEYED_MAX_RUNNING`), and shutdown
/// waits for them: the server's timeout and shedding stop at the caller, this does not.
#[tokio::test]
async fn keyed_requests_without_a_caller_are_bounded_and_awaited() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let database = shop_common::store::Database::connect("sqlite::memory:")
        .await
        .unwrap();
    let mut kit = kit();
    kit.config.keyed_max_running = 1;
    let kit = kit.with_idempotency(&database).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let app = kit.stack(Router::new().route(
        "/held",
        post({
            let (calls, release) = (calls.clone(), release.clone());
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                StatusCode::CREATED
            }
        }),
    ));
    let abandoned = tokio::spawn({
        let app = app.clone();
        async move { send(&app, keyed("/held", "first", "", None)).await }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());

    // The first request still runs, without its caller: a second is refused before anything
    // is claimed or run.
    let response = app
        .clone()
        .oneshot(keyed("/held", "second", "", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Shutdown would wait for it.
    let mut finished = std::pin::pin!(kit.keyed_requests_finished());
    assert!(
        futures_util::FutureExt::now_or_never(finished.as_mut()).is_none(),
        "shutdown did not wait for the keyed request"
    );
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(30), finished)
        .await
        .expect("the keyed request finished");

    // Its slot is free again, and the refused key was never claimed (a stored permit lets
    // the next handler through at once).
    release.notify_one();
    let (status, _, _) = send(&app, keyed("/held", "second", "", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
