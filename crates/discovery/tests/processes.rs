//! p2c over three real upstream processes on loopback: load spreads over all three, and when
//! one is killed, calls route around it with no client error.
//!
//! The upstreams are this test binary run again with `MAINSTAY_UPSTREAM_ID` set (so no other
//! binary has to be built); each binds a free port, prints it, and answers every request with
//! its id. The harness is our own `main` for that reason.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mainstay_discovery::balance::{BalanceOptions, Balanced, HttpStatus};
use mainstay_discovery::{Endpoint, fixed};
use mainstay_resilience::ServiceBuilderExt;
use mainstay_resilience::circuit_breaker::Breaker;
use mainstay_resilience::http::{HttpRetryPolicy, StatusClassifier};
use mainstay_resilience::retry::{RetryBudget, RetryLayer};
use tower::buffer::Buffer;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

const UPSTREAM: &str = "MAINSTAY_UPSTREAM_ID";

fn main() {
    if let Ok(id) = std::env::var(UPSTREAM) {
        upstream(&id);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(p2c_spreads_load_and_routes_around_a_killed_process());
    eprintln!("test p2c_spreads_load_and_routes_around_a_killed_process ... ok");
}

/// The upstream process: answers every request with its id.
fn upstream(id: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The parent reads this line to learn the port.
        #[allow(clippy::print_stdout)]
        {
            println!("{}", listener.local_addr().unwrap().port());
        }
        let id = Bytes::from(id.to_owned());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let id = id.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let id = id.clone();
                    async move { Ok::<_, hyper::Error>(Response::new(Full::new(id))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The upstream processes, killed when dropped.
struct Upstreams(Vec<Child>);

impl Drop for Upstreams {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_upstreams(n: usize) -> (Upstreams, Vec<Endpoint>) {
    let mut children = Upstreams(Vec::new());
    let mut endpoints = Vec::new();
    for id in 0..n {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(UPSTREAM, format!("upstream-{id}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        children.0.push(child);
        endpoints.push(Endpoint::new("127.0.0.1", line.trim().parse().unwrap()));
    }
    (children, endpoints)
}

async fn p2c_spreads_load_and_routes_around_a_killed_process() {
    let (mut upstreams, endpoints) = spawn_upstreams(3);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let transport_errors = Arc::new(AtomicUsize::new(0));

    // The client stack of ARCHITECTURE.md §3: retry over the balancer; under it, per
    // endpoint, a circuit breaker, a per-attempt timeout and the connection pool.
    let errors = Arc::clone(&transport_errors);
    let make = move |endpoint: &Endpoint| {
        let client = client.clone();
        let authority = endpoint.authority();
        let errors = Arc::clone(&errors);
        let breaker = Breaker::builder()
            .count_window(10)
            .minimum_calls(3)
            .failure_rate(0.5)
            .open_for(Duration::from_secs(30))
            .build()
            .unwrap();
        ServiceBuilder::new()
            .layer(
                mainstay_resilience::circuit_breaker::CircuitBreakerLayer::new(breaker)
                    .classifier(StatusClassifier),
            )
            .attempt_timeout(Duration::from_secs(2))
            .service(service_fn(move |mut request: Request<Full<Bytes>>| {
                let uri: Uri = format!("http://{authority}{}", request.uri().path())
                    .parse()
                    .unwrap();
                *request.uri_mut() = uri;
                let client = client.clone();
                let errors = Arc::clone(&errors);
                async move {
                    client.request(request).await.inspect_err(|_| {
                        errors.fetch_add(1, Ordering::Relaxed);
                    })
                }
            }))
    };
    let options = BalanceOptions {
        default_rtt: Duration::from_millis(1),
        ..BalanceOptions::default()
    };
    let balanced = Balanced::new("echo", fixed(endpoints), make, HttpStatus, options);
    let service = ServiceBuilder::new()
        .retries(
            RetryLayer::new()
                .policy(HttpRetryPolicy)
                .max_attempts(3)
                .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
        )
        .service(Buffer::new(balanced, 64));

    // `n` requests from 16 concurrent callers: PeakEWMA weighs latency by requests in flight,
    // so load spreads when there is load to spread.
    let spread = |n: usize| {
        let service = service.clone();
        async move {
            let mut callers = Vec::new();
            for caller in 0..16 {
                let service = service.clone();
                callers.push(async move {
                    let mut answers = Vec::new();
                    for _ in (caller..n).step_by(16) {
                        let request = Request::get("/").body(Full::new(Bytes::new())).unwrap();
                        answers.push(match service.clone().oneshot(request).await {
                            Ok(response) => {
                                let body = response.into_body().collect().await.unwrap();
                                String::from_utf8(body.to_bytes().to_vec()).unwrap()
                            }
                            Err(error) => {
                                let error: BoxError = error;
                                format!("error: {error}")
                            }
                        });
                    }
                    answers
                });
            }
            let mut counts = BTreeMap::<String, usize>::new();
            for answers in futures_util::future::join_all(callers).await {
                for answer in answers {
                    *counts.entry(answer).or_default() += 1;
                }
            }
            counts
        }
    };

    let counts = spread(600).await;
    assert_eq!(counts.len(), 3, "not every upstream was used: {counts:?}");
    assert!(
        counts.values().all(|n| *n >= 60),
        "load did not spread: {counts:?}"
    );

    // Kill one upstream process.
    let victim = &mut upstreams.0[1];
    victim.kill().unwrap();
    victim.wait().unwrap();

    let counts = spread(600).await;
    assert!(
        counts.keys().all(|k| !k.starts_with("error")),
        "a client saw an error: {counts:?}"
    );
    assert!(!counts.contains_key("upstream-1"));
    assert_eq!(counts.values().sum::<usize>(), 600);
    // The dead endpoint was tried until it was ejected (5 failures in a row) or its breaker
    // opened, plus calls already dispatched to it by the other callers (at most 16 in flight),
    // and every one of those attempts was retried on a live endpoint.
    let tried = transport_errors.load(Ordering::Relaxed);
    assert!(
        (1..=5 + 16).contains(&tried),
        "{tried} attempts went to the dead endpoint"
    );
    // Ejected: no more attempts reach it.
    let counts = spread(300).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(transport_errors.load(Ordering::Relaxed), tried);
}
