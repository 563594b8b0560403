//! The service runtime: a service started from its configuration serves its routes with the
//! backbone's admin routes, relays what its handlers enqueue, runs its consumers, reports them
//! in readiness and metrics, and stops them.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::routing::post;
use mainstay_auth::AccessClaims;
use shop_common::config::{Secret, ServiceConfig, Vars};
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::config::TransportConfig;
use shop_messaging::service::Service;
use shop_messaging::{ConsumerConfig, Outbox};

use super::Script;
use super::admin::eventually;
use crate::price;

/// `POST /prices/{product}`: a state change and its event, in one transaction.
async fn change_price(State(database): State<Database>, Path(product): Path<String>) -> StatusCode {
    let mut tx = database.begin().await.unwrap();
    Outbox::enqueue(&mut tx, &price(&product, 100))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_from_its_configuration_relays_consumes_and_reports_its_backbone() {
    std::sync::LazyLock::force(&crate::SPANS);
    let vars = Vars(|var: &str| (var == "DATABASE_URL").then(|| "sqlite::memory:".to_owned()));
    let config = ServiceConfig::from_vars("pricing", 0, &vars).unwrap();
    let transport = TransportConfig::Local {
        database_url: Secret::new("sqlite::memory:"),
    };
    let mut service = Service::start_with(config, &transport).await.unwrap();
    let database = service.database.clone();
    shop_common::on_db!(&database, pool => sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL, product TEXT NOT NULL)")
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
    service.consume(
        ConsumerConfig::new("audit", &["catalog.events"]),
        Script::with(&[]),
    );
    let api = Router::new()
        .route("/prices/{product}", post(change_price))
        .with_state(database.clone());
    let (issuer, validator) = shop_common::testing::users_tokens();
    let admin = issuer
        .issue(&AccessClaims::new("admin-1").role("admin"))
        .unwrap()
        .token;
    let (kit, app) = service.launch(api, validator);

    // A change enqueued by a route is relayed (woken by its commit) and consumed, in the trace
    // of the request that made it.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let changed = call(
        &app,
        Method::POST,
        "/prices/a",
        None,
        None,
        Some(("traceparent", &traceparent)),
    )
    .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    let effects = async || -> Vec<String> {
        shop_common::on_db!(&database, pool => sqlx::query_scalar("SELECT product FROM effects")
            .fetch_all(pool)
            .await)
        .unwrap()
    };
    eventually("the change reaches the consumer", async || {
        effects().await == ["a"]
    })
    .await;
    eventually(
        "the consumer's span is in the request's trace",
        async || {
            crate::SPANS
                .get_finished_spans()
                .unwrap()
                .iter()
                .any(|span| {
                    span.name == "consume" && span.span_context.trace_id().to_string() == TRACE
                })
        },
    )
    .await;

    // Readiness names the database and the tasks; the metrics carry the backbone's.
    let ready = call(&app, Method::GET, "/health/ready", None, None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    let checks = ready.body.to_string();
    assert!(
        checks.contains("database") && checks.contains("tasks"),
        "{checks}"
    );
    let metrics = call(&app, Method::GET, "/metrics", None, None, None).await;
    let metrics = metrics.body.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(r#"messaging_published_total{subject="catalog.events"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"messaging_deliveries_total{consumer="audit",outcome="ack"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"messaging_dead_letters{consumer="audit"} 0"#),
        "{metrics}"
    );

    // The backbone's admin routes are mounted, for its own consumers.
    let summary = call(
        &app,
        Method::GET,
        "/admin/messaging",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(summary.status, StatusCode::OK);
    assert_eq!(
        summary.body["consumers"],
        serde_json::json!([{"name": "audit", "dead_letters": 0}])
    );
    assert_eq!(
        call(&app, Method::GET, "/admin/messaging", None, None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // And the tasks stop when told, within the grace.
    tokio::time::timeout(
        Duration::from_secs(10),
        kit.tasks.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("the backbone's tasks stop");
}
