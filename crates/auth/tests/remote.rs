//! `Jwks::from_url` against a JWKS served over HTTP by a local server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::jsonwebtoken::jwk::JwkSet;
use mainstay_auth::{AuthError, Jwks, SigningKey, Validator};

use common::*;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn keys_are_fetched_over_http_and_max_age_is_honoured() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let document = JwkSet {
        keys: vec![key.public_jwk().clone()],
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let base = serve(Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::to_string(&document).unwrap();
            async move { ([("cache-control", "public, max-age=120")], body) }
        }),
    ))
    .await;

    let jwks = Jwks::from_url(format!("{base}/.well-known/jwks.json")).unwrap();
    jwks.refresh().await.unwrap();
    assert_eq!(jwks.keys().len(), 1);
    let validator = Validator::builder()
        .issuer(ISS)
        .audience(AUD)
        .jwks(jwks)
        .build()
        .unwrap();
    for _ in 0..10 {
        validator.validate(&sign(&key, &claims())).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_that_is_not_a_jwks_is_an_outage_not_a_client_error() {
    let base = serve(Router::new().route("/jwks", get(|| async { "<html>login</html>" }))).await;
    let jwks = Jwks::from_url(format!("{base}/jwks")).unwrap();
    assert!(
        jwks.refresh()
            .await
            .unwrap_err()
            .to_string()
            .contains("not a JWKS document")
    );
    let missing = Jwks::from_url(format!("{base}/nowhere")).unwrap();
    assert!(
        missing
            .refresh()
            .await
            .unwrap_err()
            .to_string()
            .contains("404")
    );

    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = Validator::builder()
        .issuer(ISS)
        .audience(AUD)
        .jwks(missing)
        .build()
        .unwrap();
    let err = validator
        .validate(&sign(&key, &claims()))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)));
}
