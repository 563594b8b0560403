//! The admin routes every service mounts, and the dead-letter depth in its metrics: an admin
//! sees the dead letters and replays them over HTTP; nobody else can.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::admin::Admin;
use shop_messaging::{ConsumerConfig, MessagingMetrics, Transport};

use super::{Script, Step, consumer, effect_count, enqueue_committed, local, relay_all};

/// Waits (up to 10 s) until `done` holds: for what a running consumer does in its own time.
pub(super) async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_and_replays_dead_letters_over_http_and_the_depth_is_a_metric() {
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let transport = local(&database).await;
    enqueue_committed(&database, &["a", "b"]).await;
    relay_all(&database, &transport).await;
    let metrics = MessagingMetrics::new();
    let search = consumer(
        &database,
        &transport,
        ConsumerConfig::new("search", &["catalog.events"]),
        Script::with(&[Step::Reject, Step::Reject]),
    )
    .metrics(metrics.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(search.run(stop.clone().cancelled_owned()));
    eventually(
        "both messages are dead letters, and the gauge says so",
        async || metrics.dead_letter_depth("search") == 2,
    )
    .await;

    let (issuer, validator) = shop_common::testing::users_tokens();
    let token = |role: &str| {
        issuer
            .issue(&AccessClaims::new(format!("{role}-1")).role(role))
            .unwrap()
            .token
    };
    let (admin, customer) = (token("admin"), token("customer"));
    let transport_dyn: std::sync::Arc<dyn Transport> = transport.clone();
    let app = Admin::new(transport_dyn, database.clone(), vec!["search".to_owned()])
        .metrics(metrics.clone())
        .router(validator);
    let get = async |path: &str, token: Option<&str>| {
        call(&app, Method::GET, path, token, None, None).await
    };
    let post = async |path: &str| call(&app, Method::POST, path, Some(&admin), None, None).await;

    // Only an admin.
    assert_eq!(
        get("/admin/messaging", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/admin/messaging", Some(&customer)).await.status,
        StatusCode::FORBIDDEN
    );
    let summary = get("/admin/messaging", Some(&admin)).await;
    assert_eq!(summary.status, StatusCode::OK);
    assert_eq!(summary.body["outbox"]["pending"], 0);
    assert_eq!(
        summary.body["consumers"],
        serde_json::json!([{"name": "search", "dead_letters": 2}])
    );

    // The listing, bounded, for the service's own consumers.
    let listed = get(
        "/admin/messaging/dead-letters/search?limit=10",
        Some(&admin),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    let letters = listed.body["dead_letters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l["reason"] == "unknown product"));
    for (path, status) in [
        (
            "/admin/messaging/dead-letters/search?limit=0",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/admin/messaging/dead-letters/search?limit=501",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/admin/messaging/dead-letters/search?limit=x",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/admin/messaging/dead-letters/search?other=1",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/admin/messaging/dead-letters/mailer",
            StatusCode::NOT_FOUND,
        ),
        // Not UTF-8 once decoded.
        (
            "/admin/messaging/dead-letters/%FF%FE",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let reply = get(path, Some(&admin)).await;
        assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{path}"
        );
    }

    // Replay one: delivered again, handled (the script now acknowledges), the depth down at once.
    let first = letters[0]["seq"].as_i64().unwrap();
    let missing = post("/admin/messaging/dead-letters/search/replay?seq=999999").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        post("/admin/messaging/dead-letters/search/replay?seq=0")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let replayed = post(&format!(
        "/admin/messaging/dead-letters/search/replay?seq={first}"
    ))
    .await;
    assert_eq!(replayed.status, StatusCode::OK, "{:?}", replayed.body);
    assert_eq!(replayed.body["replayed"], 1);
    assert_eq!(replayed.body["remaining"], 1);
    assert_eq!(metrics.dead_letter_depth("search"), 1);
    eventually("the replayed message is handled", async || {
        effect_count(&database).await == 1
    })
    .await;
    // And the rest.
    let rest = post("/admin/messaging/dead-letters/search/replay").await;
    assert_eq!(rest.body["replayed"], 1);
    assert_eq!(rest.body["remaining"], 0);
    eventually("the other is handled too", async || {
        effect_count(&database).await == 2
    })
    .await;
    assert_eq!(metrics.dead_letter_depth("search"), 0);
    stop.cancel();
    running.await.unwrap().unwrap();
}
