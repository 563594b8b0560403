//! mainstay-auth's `JwtLayer` in another service, against a real users service over HTTP:
//! issue, validate through the JWKS URL, rotate keys, refresh.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mainstay_auth::{Jwks, JwtLayer, Principal, RequireScopeLayer, Validator};
use serde_json::{Value, json};
use shop_common::Kit;
use shop_common::store::Database;
use shop_users::{Users, router};
use tokio::net::TcpListener;

use common::config;

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_service_validates_what_users_issues() {
    // The users service, on the embedded default, over TCP.
    let database = Database::connect("sqlite::memory:").await.unwrap();
    let config = config("sqlite::memory:", &[]);
    let kit = Kit::new(config.service.clone())
        .with_idempotency(&database)
        .await
        .unwrap();
    let users = Users::start(config, &database).await.unwrap();
    let (listener, users_url) = listen().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let app = kit.stack(router(users));
        async move {
            shop_common::serve_until(listener, app, &kit, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    // An orders-like service that trusts the users service's JWKS.
    let jwks = Jwks::builder()
        .min_refresh_interval(Duration::ZERO)
        .build_url(format!("{users_url}/.well-known/jwks.json"))
        .unwrap();
    let validator = Validator::builder()
        .issuer("shop-users")
        .audience("shop")
        .jwks(jwks)
        .build()
        .unwrap();
    let orders = Router::new()
        .route(
            "/orders",
            get(|p: Principal| async move { p.subject().to_owned() }),
        )
        .layer(RequireScopeLayer::new("orders:read"))
        .layer(JwtLayer::new(validator));
    let (listener, orders_url) = listen().await;
    tokio::spawn(async move { axum::serve(listener, orders).await.unwrap() });

    let http = reqwest::Client::new();
    let login = |email: &'static str, password: &'static str| {
        let http = http.clone();
        let url = format!("{users_url}/login");
        async move {
            let reply: Value = http
                .post(url)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            reply
        }
    };
    let orders_with = |token: String| {
        let http = http.clone();
        let url = format!("{orders_url}/orders");
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };

    // Issue and validate.
    let alice = login("alice@example.com", "alice-in-wonderland").await;
    let first_access = alice["access_token"].as_str().unwrap().to_owned();
    let answer = orders_with(first_access.clone()).await;
    assert_eq!(answer.status(), 200);
    let subject = answer.text().await.unwrap();
    let me: Value = http
        .get(format!("{users_url}/me"))
        .bearer_auth(&first_access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], subject.as_str());

    // A forged token is refused by the other service.
    let mut forged = first_access.clone();
    forged.pop();
    forged.push(if first_access.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let refused = orders_with(forged).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // Rotate: the other service learns the new key on its own, and keeps the old one.
    let admin = login("admin@example.com", "admin-change-me-now").await;
    let rotated = http
        .post(format!("{users_url}/admin/keys/rotate"))
        .bearer_auth(admin["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let second = login("alice@example.com", "alice-in-wonderland").await;
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(
        mainstay_auth::jsonwebtoken::decode_header(&second_access)
            .unwrap()
            .kid,
        mainstay_auth::jsonwebtoken::decode_header(&first_access)
            .unwrap()
            .kid
    );
    assert_eq!(orders_with(second_access).await.status(), 200);
    assert_eq!(orders_with(first_access).await.status(), 200);

    // Refresh: the new access token is accepted too.
    let refreshed: Value = http
        .post(format!("{users_url}/token/refresh"))
        .json(&json!({"refresh_token": alice["refresh_token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let third = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(orders_with(third).await.status(), 200);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn bad_configuration_ends_the_process_with_ex_config_naming_the_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop-users"))
        .env("PORT", "eighty")
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .unwrap();
    // sysexits.h: EX_CONFIG is 78 (64 is EX_USAGE, a bad command line).
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT"), "{stderr}");
}
