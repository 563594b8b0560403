//! An axum service with mainstay's server side: request ids, spans and RED metrics from
//! mainstay-telemetry, `/metrics` and `/health/*` for scrapers and probes, and JWT bearer
//! authentication with a scope check from mainstay-auth. The example serves itself on a free
//! port, calls itself with and without tokens, and prints what `/metrics` counted.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p example-axum-service
//! ```
#![allow(clippy::print_stdout)]

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{
    AccessClaims, JwtLayer, Principal, RequireScopeLayer, SigningKey, TokenIssuer, Validator,
};
use mainstay_telemetry::{Health, Metrics, ServerLayer, routes};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

const ISSUER: &str = "https://users.example";
const AUDIENCE: &str = "shop";

/// Who the token belongs to; any valid token will do.
async fn me(principal: Principal) -> String {
    format!("hello, {}", principal.subject())
}

/// Needs the `orders:write` scope, which `RequireScopeLayer` checked before this runs.
async fn create_order(principal: Principal) -> (StatusCode, String) {
    let body = format!("order created for {}", principal.subject());
    (StatusCode::CREATED, body)
}

fn app(validator: Validator, metrics: &Metrics, health: &Health) -> Router {
    let writes = Router::new()
        .route("/orders", post(create_order))
        // Inside the JWT layer: it reads the principal that layer put in the request.
        .layer(RequireScopeLayer::new("orders:write"));
    let api = Router::new()
        .route("/me", get(me))
        .merge(writes)
        // 401 for a missing or bad token, before any handler or scope check runs.
        .layer(JwtLayer::new(validator));
    Router::new()
        .merge(api)
        // Outside the JWT layer: probes and scrapers carry no token.
        .merge(routes(metrics, health))
        // Last, so that it wraps every route above: each request gets an id, a span named by
        // its route template, and a count in `/metrics`, refusals included.
        .layer(ServerLayer::new(metrics))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // In a real system the users service issues tokens and this service fetches its JWKS
    // (`Jwks::from_url`); here both sides run in one process.
    let issuer = TokenIssuer::new(ISSUER, AUDIENCE, SigningKey::generate(Algorithm::EdDSA)?);
    let validator = Validator::builder()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .keys(issuer.key_set())
        .build()?;
    let metrics = Metrics::new();
    let health = Health::new();
    health.add_check("database", || async { Ok::<_, String>(()) });

    let app = app(validator, &metrics, &health);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let reader = issuer.issue(&AccessClaims::new("alice").scope("orders:read"))?;
    let writer = issuer.issue(&AccessClaims::new("bob").scope("orders:write"))?;
    let alice = Some(("alice, orders:read", reader.token.as_str()));
    let bob = Some(("bob, orders:write", writer.token.as_str()));
    let cases = [
        ("GET /me", None, 401),
        ("GET /me", alice, 200),
        ("POST /orders", alice, 403),
        ("POST /orders", bob, 201),
        ("GET /health/ready", None, 200),
    ];
    for (request, token, expected) in cases {
        let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
        let who = token.map_or("no token", |(who, _)| who);
        let url = format!("{base}{path}");
        let (status, headers, body) = call(&client, method, &url, token.map(|(_, t)| t)).await?;
        println!("{request:<18} {who:<18} -> {status}");
        println!("    x-request-id: {}", header(&headers, "x-request-id"));
        if let Some(challenge) = headers.get(WWW_AUTHENTICATE) {
            println!(
                "    www-authenticate: {}",
                challenge.to_str().unwrap_or("?")
            );
        }
        println!("    {body}");
        assert_eq!(status.as_u16(), expected, "{request} with {who}");
    }

    // The scrape Prometheus would make: the requests above, by route template and status class.
    let (_, _, text) = call(&client, "GET", &format!("{base}/metrics"), None).await?;
    println!("\nGET /metrics (the request counters):");
    let counters = text
        .lines()
        .filter(|line| line.starts_with("http_server_requests_total"));
    for line in counters {
        println!("  {line}");
    }
    assert!(text.contains(r#"route="/orders",status="4xx""#), "{text}");
    Ok(())
}

/// Sends a request with an optional bearer token; the status, headers and body of the answer.
async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Result<(StatusCode, HeaderMap, String), BoxError> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let (parts, body) = client
        .request(request.body(Empty::new())?)
        .await?
        .into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
}
