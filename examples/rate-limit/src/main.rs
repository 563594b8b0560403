//! A rate limit per client on an axum route, with mainstay-resilience: each API key gets its
//! own burst. Alice goes over hers and gets `429 Too Many Requests` as problem+json, with
//! `Retry-After` and the IETF draft's `RateLimit` headers; Bob, on the same route at the same
//! time, is not affected.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p example-rate-limit
//! ```
#![allow(clippy::print_stdout)]

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mainstay_resilience::BoxError;
use mainstay_resilience::http::{ProblemLayer, RATELIMIT, RATELIMIT_POLICY};
use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The header clients name themselves in.
const API_KEY: &str = "x-api-key";

/// What a request is limited by: its API key. Callers without one share a single limit.
/// (To limit by address instead, key on axum's `ConnectInfo<SocketAddr>` extension.)
fn api_key(request: &Request) -> String {
    request
        .headers()
        .get(API_KEY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

async fn search() -> &'static str {
    "3 results"
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A burst of 3 per key, refilled evenly over 30 s: one more request every 10 s.
    let per_key = KeyedRateLimitLayer::<_, String>::new(3, Duration::from_secs(30), api_key)?
        // Admitted responses say what is left, so well-behaved clients can slow down early.
        .headers();
    let limited = ServiceBuilder::new()
        // Seen first: the limiter refuses with an error; this turns it into a 429 response with
        // `Retry-After` and `RateLimit`, so axum needs no `HandleErrorLayer`.
        .layer(ProblemLayer::new())
        .layer(per_key);
    let app = Router::new().route("/search", get(search).layer(limited));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/search", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    println!("alice sends 5 requests in a row, then bob sends 2; each key may burst 3\n");
    let mut statuses = Vec::new();
    let mut refusal = String::new();
    for (n, key) in ["alice"; 5].into_iter().chain(["bob"; 2]).enumerate() {
        let (status, headers, body) = fetch(&client, &url, key).await?;
        println!(
            "#{} {key:<5}  {}  RateLimit: {:<22} Retry-After: {}",
            n + 1,
            status.as_u16(),
            header(&headers, &RATELIMIT),
            header(&headers, &RETRY_AFTER),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(header(&headers, &CONTENT_TYPE), "application/problem+json");
            assert!(headers.contains_key(RETRY_AFTER), "says when to come back");
            assert!(header(&headers, &RATELIMIT).starts_with(r#""default";r=0;"#));
            refusal = body;
        } else {
            assert_eq!(header(&headers, &RATELIMIT_POLICY), r#""default";q=3;w=30"#);
        }
        statuses.push((key, status.as_u16()));
    }
    println!("\nthe body of a 429:\n{refusal}");

    let expected = [
        ("alice", 200),
        ("alice", 200),
        ("alice", 200),
        ("alice", 429),
        ("alice", 429),
        ("bob", 200),
        ("bob", 200),
    ];
    assert_eq!(statuses, expected, "alice is limited, bob is not");
    Ok(())
}

/// Sends `GET url` as the client `key`; the status, headers and body of the answer.
async fn fetch(
    client: &HttpClient,
    url: &str,
    key: &str,
) -> Result<(StatusCode, HeaderMap, String), BoxError> {
    let request = http::Request::get(url)
        .header(API_KEY, key)
        .body(Empty::new())?;
    let (parts, body) = client.request(request).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
}
