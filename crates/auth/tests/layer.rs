//! The layers over HTTP: statuses, challenges, problem bodies, optional mode, scopes, roles.

mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{
    JwtLayer, KeySet, Principal, RequireRoleLayer, RequireScopeLayer, SigningKey, Validator,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use common::*;

fn app(key: &SigningKey) -> Router {
    let validator = Validator::builder()
        .issuer(ISS)
        .audience(AUD)
        .keys(KeySet::new().with(key.verifying_key()))
        .build()
        .unwrap();
    let public = Router::new()
        .route(
            "/home",
            get(|p: Option<Principal>| async move {
                p.map_or("hello, guest".to_owned(), |p| {
                    format!("hello, {}", p.subject())
                })
            }),
        )
        .layer(JwtLayer::new(validator.clone()).optional());
    let admin = Router::new()
        .route("/admin", get(|| async { "admin" }))
        .layer(RequireRoleLayer::new("admin"));
    let writes = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(RequireScopeLayer::new("orders:write"));
    Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.subject().to_owned() }),
        )
        .merge(admin)
        .merge(writes)
        .layer(JwtLayer::new(validator))
        .merge(public)
}

async fn get_with(
    app: &Router,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/problem+json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if is_problem {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8(bytes.to_vec()).unwrap())
    };
    (status, challenge, body)
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    let bearer = format!("Bearer {}", sign(&key, &claims()));
    assert_eq!(
        get_with(&app, "/me", Some(&bearer)).await,
        (StatusCode::OK, None, json!("user-1"))
    );
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let lower = bearer.replacen("Bearer", "bearer", 1);
    assert_eq!(get_with(&app, "/me", Some(&lower)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn no_token_is_401_with_a_bare_challenge() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    for authorization in [None, Some("Basic dXNlcjpwYXNz")] {
        let (status, challenge, body) = get_with(&app, "/me", authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert_eq!(body["status"], 401);
        assert_eq!(body["detail"], "the request has no bearer token");
    }
}

#[tokio::test]
async fn a_bad_token_is_401_invalid_token_and_the_body_never_echoes_it() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let token = sign(&key, &expired);
    let (status, challenge, body) = get_with(&app, "/me", Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"the token has expired\"")
    );
    assert_eq!(body["title"], "Unauthorized");
    assert!(!body.to_string().contains(&token));
}

#[tokio::test]
async fn missing_scope_or_role_is_403_insufficient_scope() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    let customer = format!("Bearer {}", sign(&key, &claims()));
    let (status, challenge, body) = get_with(&app, "/orders", Some(&customer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"orders:write\"")
    );
    assert_eq!(body["detail"], "the token lacks the scope `orders:write`");
    assert_eq!(
        get_with(&app, "/admin", Some(&customer)).await.0,
        StatusCode::FORBIDDEN
    );

    let mut admin = claims();
    admin["roles"] = json!(["admin"]);
    admin["scope"] = json!("orders:read orders:write");
    let admin = format!("Bearer {}", sign(&key, &admin));
    assert_eq!(
        get_with(&app, "/admin", Some(&admin)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&app, "/orders", Some(&admin)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn optional_mode_admits_guests_but_not_bad_tokens() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    assert_eq!(get_with(&app, "/home", None).await.2, json!("hello, guest"));
    let bearer = format!("Bearer {}", sign(&key, &claims()));
    assert_eq!(
        get_with(&app, "/home", Some(&bearer)).await.2,
        json!("hello, user-1")
    );
    assert_eq!(
        get_with(&app, "/home", Some("Bearer nope")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let app = app(&key);
    let bearer = format!("Bearer {}", sign(&key, &claims()));
    let request = Request::get("/me")
        .header(header::AUTHORIZATION, &bearer)
        .header(header::AUTHORIZATION, &bearer)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
