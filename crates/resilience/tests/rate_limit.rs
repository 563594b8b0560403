//! Rate limiting: one shared limit, per-key limits, exact waits with paused time.
#![cfg(feature = "rate-limit")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::rate_limit::error::{InvalidQuota, RateLimited};
use mainstay_resilience::rate_limit::{KeyedRateLimitLayer, RateLimitLayer};
use mainstay_resilience::rejection::{RejectionKind, local_rejection_of};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt, service_fn};

fn ok<Req: Send + 'static>()
-> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|_: Req| async { Ok::<_, BoxError>(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_limit_holds_across_many_clones_under_concurrent_load() {
    // A burst of 100 refilled over an hour: during the test at most one more cell can refill.
    let layer = RateLimitLayer::new(100, Duration::from_secs(3_600 * 100)).unwrap();
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        // Every task gets its own service from `layer()`, and clones it per call, as axum does.
        let svc = layer.layer(ok::<u32>());
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let mut clone = svc.clone();
                if clone.ready().await.unwrap().call(i).await.is_ok() {
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        100,
        "2,000 calls, one burst of 100"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_calls_say_when_to_return_and_are_admitted_then() {
    let mut svc = RateLimitLayer::new(2, Duration::from_secs(1))
        .unwrap()
        .layer(ok::<()>());
    svc.ready().await.unwrap().call(()).await.unwrap();
    svc.ready().await.unwrap().call(()).await.unwrap();
    let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let limited = *error.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_millis(500));
    assert_eq!(
        (limited.limit(), limited.period()),
        (2, Duration::from_secs(1))
    );
    assert_eq!(
        local_rejection_of(&error).map(|r| (r.kind, r.retry_after)),
        Some((RejectionKind::RateLimited, Some(Duration::from_millis(500))))
    );

    advance(Duration::from_millis(499)).await;
    assert!(
        svc.ready().await.unwrap().call(()).await.is_err(),
        "1 ms early"
    );
    advance(Duration::from_millis(1)).await;
    svc.ready().await.unwrap().call(()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keys_have_independent_limits() {
    let layer =
        KeyedRateLimitLayer::new(1, Duration::from_secs(1), |user: &&'static str| *user).unwrap();
    let mut svc = layer.layer(ok::<&'static str>());
    svc.ready().await.unwrap().call("alice").await.unwrap();
    svc.ready().await.unwrap().call("bob").await.unwrap();
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call("alice")
            .await
            .unwrap_err()
            .is::<RateLimited>()
    );
    let mut other = layer.layer(ok::<&'static str>());
    assert!(
        other.ready().await.unwrap().call("bob").await.is_err(),
        "keys shared across services"
    );
    assert_eq!(layer.tracked_keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_never_tracks_more_than_max_keys() {
    let layer = KeyedRateLimitLayer::new(5, Duration::from_secs(60), |n: &u32| *n)
        .unwrap()
        .max_keys(10);
    let mut svc = layer.layer(ok::<u32>());
    // Every key of the flood is still inside its limit (4 of 5 left for a minute): none is
    // idle, and still the bound holds at every step.
    for n in 0..10_000 {
        svc.ready().await.unwrap().call(n).await.unwrap();
        assert!(
            layer.tracked_keys() <= 10,
            "tracked {}",
            layer.tracked_keys()
        );
    }
    // A key used throughout keeps its state: its limit is not reset by the flood.
    for _ in 0..5 {
        svc.ready().await.unwrap().call(7_000_000).await.unwrap();
    }
    for n in 20_000..20_050 {
        svc.ready().await.unwrap().call(n).await.unwrap();
        let _ = svc.ready().await.unwrap().call(7_000_000).await;
    }
    assert!(svc.ready().await.unwrap().call(7_000_000).await.is_err());
}

#[test]
fn bad_quotas_are_typed_errors() {
    assert_eq!(
        RateLimitLayer::new(0, Duration::from_secs(1)).unwrap_err(),
        InvalidQuota
    );
    assert_eq!(
        RateLimitLayer::new(5, Duration::ZERO).unwrap_err(),
        InvalidQuota
    );
}
