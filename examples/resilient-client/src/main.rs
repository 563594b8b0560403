//! The client stack of mainstay-resilience against a flaky upstream: a deadline, budgeted
//! retries, a circuit breaker, a bulkhead and per-attempt timeouts around a hyper client. The
//! upstream is an axum server in this process that hangs, fails and recovers on cue.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p example-resilient-client
//! ```
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mainstay_resilience::circuit_breaker::error::Open;
use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer, State as Circuit};
use mainstay_resilience::http::{HttpRetryPolicy, StatusClassifier};
use mainstay_resilience::retry::{ExponentialBackoff, RetryBudget, RetryLayer};
use mainstay_resilience::{BoxError, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const HEALTHY: u8 = 0;
const FLAKY: u8 = 1;
const DOWN: u8 = 2;

/// The upstream's behaviour, switched by `main`, and the calls it has received.
#[derive(Default)]
struct Upstream {
    mode: AtomicU8,
    calls: AtomicUsize,
}

impl Upstream {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn price(State(upstream): State<Arc<Upstream>>) -> (StatusCode, &'static str) {
    let call = upstream.calls.fetch_add(1, Ordering::SeqCst);
    match upstream.mode.load(Ordering::SeqCst) {
        // Every third call hangs, far past the client's attempt timeout.
        FLAKY if call % 3 == 2 => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            (StatusCode::OK, "too late")
        }
        DOWN => (StatusCode::SERVICE_UNAVAILABLE, "down"),
        _ => (StatusCode::OK, "42.00"),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = Arc::new(Upstream::default());
    let addr = serve(Arc::clone(&upstream)).await?;
    let url = format!("http://{addr}/price");

    // Opens when half of the last 10 calls (at least 5) failed; probes again after 1 s.
    let breaker = Breaker::builder()
        .count_window(10)
        .minimum_calls(5)
        .failure_rate(0.5)
        .open_for(Duration::from_secs(1))
        .half_open_permits(1)
        .on_state_change(|from, to| println!("   breaker: {from:?} -> {to:?}"))
        .build()?;
    let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // The first layer listed sees the request first.
    let mut client = ServiceBuilder::new()
        // The whole call, retries included, gets 2 s; retries never start an attempt past it.
        .deadline(Duration::from_secs(2))
        // Idempotent requests only, on errors and 502/503/504/429. The budget caps retries at
        // 20 % of requests (plus 10 a second), so retries cannot multiply an outage's load.
        .retries(
            RetryLayer::new()
                .policy(HttpRetryPolicy)
                .max_attempts(3)
                .backoff(ExponentialBackoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(100),
                ))
                .budget(budget.clone()),
        )
        // Below retry: an open circuit's refusal comes back at once and is not retried. 5xx
        // answers count as failures, not only transport errors.
        .layer(CircuitBreakerLayer::new(breaker.clone()).classifier(StatusClassifier))
        // At most 16 calls in flight; the 17th is refused, and the breaker does not count it.
        .bulkhead(16, Duration::ZERO)
        // Each attempt gets 250 ms: a hung call becomes an error that retry can act on.
        .attempt_timeout(Duration::from_millis(250))
        .service(http);

    println!("1. flaky: every third call hangs; the attempt times out and is retried");
    upstream.set(FLAKY);
    for _ in 0..6 {
        assert_eq!(send(&mut client, &url, &upstream).await?, StatusCode::OK);
    }
    assert!(upstream.calls() > 6, "some requests were retried");

    println!("\n2. down: every call answers 503; retries run out and the breaker opens");
    upstream.set(DOWN);
    while breaker.state() != Circuit::Open && upstream.calls() < 30 {
        let _ = send(&mut client, &url, &upstream).await;
    }
    assert_eq!(breaker.state(), Circuit::Open);
    println!("   while it is open, calls fail fast without reaching the upstream:");
    let before = upstream.calls();
    for _ in 0..3 {
        let result = send(&mut client, &url, &upstream).await;
        assert!(result.is_err_and(|error| error.is::<Open>()));
    }
    assert_eq!(upstream.calls(), before, "an open circuit sends nothing");
    println!(
        "   (refusals are not retried: {} retries left in the budget)",
        budget.remaining()
    );

    println!("\n3. recovered: after the open period one probe closes the breaker");
    upstream.set(HEALTHY);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        assert_eq!(send(&mut client, &url, &upstream).await?, StatusCode::OK);
    }
    assert_eq!(breaker.state(), Circuit::Closed);
    Ok(())
}

/// Sends one `GET` through the stack and prints what came of it.
async fn send<S, B>(client: &mut S, url: &str, upstream: &Upstream) -> Result<StatusCode, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
{
    let (calls, started) = (upstream.calls(), Instant::now());
    let request = Request::get(url).body(Full::new(Bytes::new()))?;
    let (what, outcome) = match client.ready().await?.call(request).await {
        Ok(response) => (response.status().to_string(), Ok(response.status())),
        // An open circuit's refusal reads "circuit open".
        Err(error) => (format!("error: {error}"), Err(error)),
    };
    println!(
        "   {what:<28} {} upstream call(s) {:>4} ms",
        upstream.calls() - calls,
        started.elapsed().as_millis(),
    );
    outcome
}

/// Starts the upstream on a free port.
async fn serve(upstream: Arc<Upstream>) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/price", get(price))
        .with_state(upstream);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
