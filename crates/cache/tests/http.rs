//! `ResponseCacheLayer` in front of an axum app: storing, 304s, `no-store`, expiry and
//! stale-while-revalidate under paused time, `Vary`, and what is never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use mainstay_cache::http::ResponseCacheLayer;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Origin(Arc<AtomicUsize>);

impl Origin {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn product(
    State(origin): State<Origin>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    let n = origin.0.fetch_add(1, Ordering::SeqCst) + 1;
    let language = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("en")
        .to_owned();
    (
        [
            (
                header::CACHE_CONTROL,
                "public, max-age=10, stale-while-revalidate=5".to_owned(),
            ),
            (header::ETAG, format!("\"v{n}\"")),
            (header::VARY, "accept-language".to_owned()),
        ],
        format!("product v{n} ({language})"),
    )
}

fn app(origin: &Origin) -> Router {
    app_with(origin, ResponseCacheLayer::new(1 << 20))
}

fn app_with(origin: &Origin, cache: ResponseCacheLayer) -> Router {
    Router::new()
        .route("/products/1", get(product).post(product))
        .route(
            "/cart",
            get(|State(o): State<Origin>| async move {
                o.0.fetch_add(1, Ordering::SeqCst);
                ([(header::CACHE_CONTROL, "no-store")], "your cart")
            }),
        )
        .route(
            "/me",
            get(|State(o): State<Origin>| async move {
                o.0.fetch_add(1, Ordering::SeqCst);
                ([(header::CACHE_CONTROL, "private, max-age=60")], "you")
            }),
        )
        .route(
            "/feed",
            get(|State(o): State<Origin>| async move {
                o.0.fetch_add(1, Ordering::SeqCst);
                ([(header::CACHE_CONTROL, "max-age=60")], "feed")
            }),
        )
        .layer(cache)
        .with_state(origin.clone())
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_cacheable_response_is_served_from_the_cache_until_it_expires() {
    let origin = Origin::default();
    let app = app(&origin);
    let (status, _, body) = send(&app, get_req("/products/1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "product v1 (en)"));
    tokio::time::advance(Duration::from_secs(3)).await;
    let (_, headers, body) = send(&app, get_req("/products/1")).await;
    assert_eq!(body, "product v1 (en)");
    assert_eq!(headers[header::AGE], "3");
    assert_eq!(headers[header::ETAG], "\"v1\"");
    assert_eq!(origin.calls(), 1);

    // HEAD is answered from the same entry, without a body.
    let head = Request::head("/products/1").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&app, head).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers[header::CONTENT_LENGTH], "15");
    assert_eq!(origin.calls(), 1);

    // Past max-age and the grace: the origin is asked again.
    tokio::time::advance(Duration::from_secs(13)).await;
    assert_eq!(
        send(&app, get_req("/products/1")).await.2,
        "product v2 (en)"
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_is_answered_with_304_from_the_stored_etag() {
    let origin = Origin::default();
    let app = app(&origin);
    send(&app, get_req("/products/1")).await;
    let conditional = Request::get("/products/1")
        .header(header::IF_NONE_MATCH, "\"v1\"")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, conditional).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(body, "");
    assert_eq!(headers[header::ETAG], "\"v1\"");
    assert!(
        headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age=10")
    );
    let other = Request::get("/products/1")
        .header(header::IF_NONE_MATCH, "\"v0\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, other).await.0, StatusCode::OK);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn within_stale_while_revalidate_the_stale_copy_is_served_and_refreshed_once() {
    let origin = Origin::default();
    let app = app(&origin);
    send(&app, get_req("/products/1")).await;
    tokio::time::advance(Duration::from_secs(12)).await; // stale, inside the 5 s grace
    for _ in 0..5 {
        assert_eq!(
            send(&app, get_req("/products/1")).await.2,
            "product v1 (en)"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await; // the refresh lands
    assert_eq!(origin.calls(), 2, "one background refresh");
    assert_eq!(
        send(&app, get_req("/products/1")).await.2,
        "product v2 (en)"
    );
}

#[tokio::test(start_paused = true)]
async fn no_store_private_and_uncacheable_requests_always_reach_the_origin() {
    let origin = Origin::default();
    let app = app(&origin);
    for path in ["/cart", "/cart", "/me", "/me"] {
        send(&app, get_req(path)).await;
    }
    assert_eq!(origin.calls(), 4);

    // The client says no-store / no-cache: the cache is bypassed.
    send(&app, get_req("/feed")).await;
    for directive in ["no-store", "no-cache"] {
        let bypass = Request::get("/feed")
            .header(header::CACHE_CONTROL, directive)
            .body(Body::empty())
            .unwrap();
        send(&app, bypass).await;
    }
    send(&app, get_req("/feed")).await;
    assert_eq!(origin.calls(), 7);

    // Not GET or HEAD.
    for _ in 0..2 {
        send(
            &app,
            Request::post("/products/1").body(Body::empty()).unwrap(),
        )
        .await;
    }
    assert_eq!(origin.calls(), 9);

    // With credentials, a response that is not explicitly public is not shared.
    let authorized = || {
        Request::get("/feed?u=1")
            .header(header::AUTHORIZATION, "Bearer x")
            .body(Body::empty())
            .unwrap()
    };
    send(&app, authorized()).await;
    send(&app, authorized()).await;
    assert_eq!(origin.calls(), 11);
}

#[tokio::test(start_paused = true)]
async fn a_varying_response_is_served_only_to_matching_requests() {
    let origin = Origin::default();
    let app = app(&origin);
    let in_language = |language: &str| {
        Request::get("/products/1")
            .header(header::ACCEPT_LANGUAGE, language)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, in_language("fr")).await.2, "product v1 (fr)");
    assert_eq!(send(&app, in_language("fr")).await.2, "product v1 (fr)");
    assert_eq!(send(&app, in_language("de")).await.2, "product v2 (de)");
    assert_eq!(origin.calls(), 2);
}

/// An origin that takes 50 ms per answer: `/slow` is cacheable (and a `POST` to it answers at
/// once), `/slow-cart` is not.
fn slow_app(origin: &Origin) -> Router {
    slow_app_with(origin, ResponseCacheLayer::new(1 << 20))
}

fn slow_app_with(origin: &Origin, cache: ResponseCacheLayer) -> Router {
    async fn answer(
        origin: Origin,
        cache_control: &'static str,
    ) -> impl axum::response::IntoResponse {
        let n = origin.0.fetch_add(1, Ordering::SeqCst) + 1;
        // The first answer is the slowest: a load that began first may end last.
        let delay = if n == 1 { 200 } else { 50 };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        (
            [(header::CACHE_CONTROL, cache_control)],
            format!("answer {n}"),
        )
    }
    Router::new()
        .route(
            "/slow",
            get(|State(o): State<Origin>| answer(o, "public, max-age=60")).post(
                |State(o): State<Origin>| async move {
                    o.0.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/slow-cart",
            get(|State(o): State<Origin>| answer(o, "no-store")),
        )
        .layer(cache)
        .with_state(origin.clone())
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::default();
    let app = slow_app(&origin);
    let crowd = (0..20).map(|_| send(&app, get_req("/slow")));
    for (status, _, body) in futures_util::future::join_all(crowd).await {
        assert_eq!((status, body.as_str()), (StatusCode::OK, "answer 1"));
    }
    assert_eq!(origin.calls(), 1);

    // What cannot be stored is not shared: each waiter asks for itself.
    let crowd = (0..5).map(|_| send(&app, get_req("/slow-cart")));
    let bodies: std::collections::BTreeSet<String> = futures_util::future::join_all(crowd)
        .await
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    assert_eq!(bodies.len(), 5, "{bodies:?}");
    assert_eq!(origin.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_hands_its_load_to_a_waiter() {
    let origin = Origin::default();
    let app = slow_app(&origin);
    let leader = tokio::spawn({
        let app = app.clone();
        async move { send(&app, get_req("/slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, get_req("/slow")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    for waiter in waiters {
        let (status, _, body) = waiter.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "answer 2"));
    }
    assert_eq!(origin.calls(), 2, "one waiter took over the load, alone");
}

#[tokio::test(start_paused = true)]
async fn a_head_miss_stores_nothing_a_get_would_receive() {
    let origin = Origin::default();
    let app = app(&origin);
    let head = Request::head("/products/1").body(Body::empty()).unwrap();
    let (status, _, body) = send(&app, head).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let (status, _, body) = send(&app, get_req("/products/1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "product v2 (en)"));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_successful_write_through_the_cache_drops_what_it_stored() {
    let origin = Origin::default();
    let app = app(&origin);
    assert_eq!(
        send(&app, get_req("/products/1")).await.2,
        "product v1 (en)"
    );
    assert_eq!(
        send(&app, get_req("/products/1")).await.2,
        "product v1 (en)"
    );
    // A write of the same target (RFC 9111 §4.4): the next read goes to the origin.
    let write = Request::post("/products/1").body(Body::empty()).unwrap();
    assert_eq!(send(&app, write).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, get_req("/products/1")).await.2,
        "product v3 (en)"
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_read_that_raced_a_write_is_neither_kept_nor_joined() {
    let origin = Origin::default();
    let app = slow_app(&origin);
    let before = tokio::spawn({
        let app = app.clone();
        async move { send(&app, get_req("/slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // A write lands while the read is at the origin: the read may have seen the old state.
    let write = Request::post("/slow").body(Body::empty()).unwrap();
    assert_eq!(send(&app, write).await.0, StatusCode::NO_CONTENT);
    // A read after the write does not join the load that began before it, and ends first.
    let after = send(&app, get_req("/slow")).await;
    assert_eq!(after.2, "answer 3");
    assert!(!before.is_finished());
    // The read that began before the write gets its answer last, which is not kept over the
    // newer one.
    assert_eq!(before.await.unwrap().2, "answer 1");
    assert_eq!(send(&app, get_req("/slow")).await.2, "answer 3");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn invalidation_from_outside_drops_one_key_or_all_of_them() {
    let origin = Origin::default();
    let cache = ResponseCacheLayer::new(1 << 20);
    let app = app_with(&origin, cache.clone());
    let product = || async { send(&app, get_req("/products/1")).await.2 };
    let feed = || async { send(&app, get_req("/feed")).await.2 };
    assert_eq!(product().await, "product v1 (en)");
    assert_eq!(feed().await, "feed");
    assert_eq!(
        (product().await, feed().await, origin.calls()),
        ("product v1 (en)".to_owned(), "feed".to_owned(), 2)
    );

    // One key: the next read of it goes to the origin, the others are still served.
    cache.invalidate("/products/1").await;
    assert_eq!(product().await, "product v3 (en)");
    assert_eq!(feed().await, "feed");
    assert_eq!(origin.calls(), 3);

    // Every key.
    cache.invalidate_all();
    assert_eq!(product().await, "product v4 (en)");
    assert_eq!(feed().await, "feed");
    assert_eq!(origin.calls(), 5);
    // And stored again.
    assert_eq!(
        (product().await, origin.calls()),
        ("product v4 (en)".to_owned(), 5)
    );
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_when_all_is_invalidated_is_neither_kept_nor_joined() {
    let origin = Origin::default();
    let cache = ResponseCacheLayer::new(1 << 20);
    let app = slow_app_with(&origin, cache.clone());
    let before = tokio::spawn({
        let app = app.clone();
        async move { send(&app, get_req("/slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    cache.invalidate_all();
    let after = send(&app, get_req("/slow")).await;
    assert_eq!(after.2, "answer 2");
    assert!(!before.is_finished());
    assert_eq!(before.await.unwrap().2, "answer 1");
    assert_eq!(send(&app, get_req("/slow")).await.2, "answer 2");
    assert_eq!(origin.calls(), 2);
}
