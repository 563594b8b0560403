//! The trivial upstream of the gateway benchmark (`benches/gateway.sh`): answers every path
//! with a short body, and serves the JWKS and a token so that the gateway can validate
//! `Authorization` the way it does in production.
//!
//! `bench-upstream <port>`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{AccessClaims, SigningKey, TokenIssuer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9100);
    let key = SigningKey::generate(Algorithm::EdDSA).map_err(std::io::Error::other)?;
    let issuer = TokenIssuer::new("shop-users", "shop", key).access_ttl(Duration::from_secs(3600));
    let jwks = serde_json::to_string(&issuer.jwks()).map_err(std::io::Error::other)?;
    let token = issuer
        .issue(&AccessClaims::new("bench"))
        .map_err(std::io::Error::other)?
        .token;
    let app = Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move || async move { ([("content-type", "application/json")], jwks) }),
        )
        .route("/token", get(move || async move { token }))
        .fallback(|| async { "hello from upstream" });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
