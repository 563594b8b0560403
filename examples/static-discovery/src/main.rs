//! A static list of endpoints feeding mainstay-discovery's balancer: three upstreams in this
//! process share the load (power of two choices on PeakEWMA); when one stops, it fails a few
//! calls in a row, is ejected, and the others take all of the traffic. A retry layer above the
//! balancer sends the failed calls elsewhere, so callers never see the outage.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p example-static-discovery
//! ```
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::join_all;
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mainstay_discovery::balance::{BalanceOptions, Balanced, ErrorsFail, OutlierOptions, Shared};
use mainstay_discovery::{Endpoint, fixed};
use mainstay_resilience::ServiceBuilderExt;
use mainstay_resilience::retry::{ExponentialBackoff, RetryLayer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

/// Concurrent callers: PeakEWMA weighs each endpoint's latency by its calls in flight, so load
/// spreads when there is load to spread.
const CALLERS: usize = 8;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut endpoints = Vec::new();
    let mut servers = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (endpoint, server) = start(name).await?;
        println!("{name} listens on {}", endpoint.authority());
        endpoints.push(endpoint);
        servers.push(server);
    }

    // One service per endpoint: a GET to its address, answering with the body. Calls that fail
    // to connect are counted, to show when the balancer stops sending to a stopped upstream.
    let refused = Arc::new(AtomicUsize::new(0));
    let http: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        // No idle connections: every call dials, so a stopped listener is noticed at once.
        .pool_max_idle_per_host(0)
        .build_http();
    let counter = Arc::clone(&refused);
    let make = move |endpoint: &Endpoint| {
        let uri: Uri = format!("http://{}/", endpoint.authority())
            .parse()
            .expect("an endpoint's authority makes a URI");
        let (http, refused) = (http.clone(), Arc::clone(&counter));
        service_fn(move |()| {
            let (http, uri, refused) = (http.clone(), uri.clone(), Arc::clone(&refused));
            async move {
                let response = http.get(uri).await.inspect_err(|_| {
                    refused.fetch_add(1, Ordering::SeqCst);
                })?;
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(String::from_utf8(body.to_vec())?)
            }
        })
    };
    let options = BalanceOptions {
        outlier: OutlierOptions {
            // Three failures in a row eject an endpoint, for 30 s (doubled if it happens again).
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            ..OutlierOptions::default()
        },
        // About one loopback call: an endpoint not yet tried is picked as soon as the others
        // are busy (with the 30 ms default it would wait for them to look slower than that).
        default_rtt: Duration::from_millis(1),
        ..BalanceOptions::default()
    };
    // `fixed` is the static source: a list that never changes. Consul or DNS SRV sources
    // publish the same `Snapshot`s on the same kind of channel.
    let balanced: Balanced<_, _, _, ()> =
        Balanced::new("greeter", fixed(endpoints), make, ErrorsFail, options);
    let client = ServiceBuilder::new()
        // A failed call is sent again; the balancer picks again. One attempt more than the
        // failures that eject an endpoint, so no caller can be unlucky on every attempt.
        .retries(
            RetryLayer::new()
                .max_attempts(4)
                .backoff(ExponentialBackoff::new(
                    Duration::from_millis(5),
                    Duration::from_millis(50),
                )),
        )
        // One balancer shared by every caller, behind a lock.
        .service(Shared::new(balanced));

    let counts = spread(&client, 300).await;
    println!("\n300 requests over three upstreams: {counts:?}");
    // Every upstream answered, and no caller saw an error.
    assert!(counts.keys().eq(["alpha", "beta", "gamma"]), "{counts:?}");

    let beta = servers.remove(1);
    beta.abort();
    let _ = beta.await;
    println!("\nbeta stopped");
    let counts = spread(&client, 300).await;
    let tried = refused.load(Ordering::SeqCst);
    println!("300 requests: {counts:?}");
    println!("{tried} calls reached the stopped upstream before it was ejected; each was retried");
    // Nobody saw the outage: beta's failures were retried on alpha and gamma.
    assert!(counts.keys().eq(["alpha", "gamma"]), "{counts:?}");
    // Three failures in a row ejected it; calls already sent to it when it was ejected
    // failed too (at most one per caller).
    assert!((1..=3 + CALLERS).contains(&tried), "{tried}");

    let counts = spread(&client, 100).await;
    println!("\n100 more requests: {counts:?}");
    // Ejected: nothing is sent to it any more.
    assert_eq!(refused.load(Ordering::SeqCst), tried);
    assert!(counts.keys().eq(["alpha", "gamma"]), "{counts:?}");
    Ok(())
}

/// Starts an upstream that answers every request with its name.
async fn start(name: &'static str) -> std::io::Result<(Endpoint, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = Endpoint::new("127.0.0.1", listener.local_addr()?.port());
    let app = Router::new().route("/", get(move || async move { name }));
    Ok((
        endpoint,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    ))
}

/// Sends `n` requests from `CALLERS` concurrent callers; the answers, counted.
async fn spread<S>(client: &S, n: usize) -> BTreeMap<String, usize>
where
    S: Service<(), Response = String, Error = BoxError> + Clone,
{
    let callers = (0..CALLERS).map(|caller| {
        let client = client.clone();
        async move {
            let mut answers = Vec::new();
            for _ in (caller..n).step_by(CALLERS) {
                answers.push(match client.clone().oneshot(()).await {
                    Ok(name) => name,
                    Err(error) => format!("error: {error}"),
                });
            }
            answers
        }
    });
    let mut counts = BTreeMap::new();
    for answer in join_all(callers).await.into_iter().flatten() {
        *counts.entry(answer).or_insert(0) += 1;
    }
    counts
}
