//! Fallback, adaptive concurrency and hedging, with tokio's paused clock.
#![cfg(all(
    feature = "fallback",
    feature = "adaptive",
    feature = "hedge",
    feature = "bulkhead",
    feature = "timeout"
))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd, error::Shed};
use mainstay_resilience::bulkhead::{BulkheadLayer, error::Full};
use mainstay_resilience::fallback::{FallbackLayer, on_rejection_or_timeout};
use mainstay_resilience::hedge::HedgeLayer;
use mainstay_resilience::rejection::{RejectionKind, local_rejection_of};
use mainstay_resilience::retry::{Decision, Policy, RetryBudget, RetryErrors};
use mainstay_resilience::timeout::TimeoutLayer;
use tokio::sync::oneshot;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

// ----- fallback -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fallback_answers_rejections_and_timeouts_but_not_upstream_errors() {
    let fallback = FallbackLayer::new(|_: BoxError| async { Ok::<_, BoxError>("cached") })
        .when(on_rejection_or_timeout);
    let mut slow = ServiceBuilder::new()
        .layer(fallback.clone())
        .layer(TimeoutLayer::new(Duration::from_millis(50)))
        .service(service_fn(|_: ()| async {
            sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>("fresh")
        }));
    assert_eq!(
        slow.ready().await.unwrap().call(()).await.unwrap(),
        "cached",
        "timeout falls back"
    );

    let mut failing = ServiceBuilder::new()
        .layer(fallback)
        .service(service_fn(|_: ()| async {
            Err::<&str, BoxError>("500 from upstream".into())
        }));
    let error = failing.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "500 from upstream",
        "a genuine error surfaces"
    );
}

#[tokio::test]
async fn fallback_receives_the_error_and_can_fail_too() {
    let mut svc =
        FallbackLayer::new(|e: BoxError| async move {
            Err::<u8, BoxError>(format!("fallback after: {e}").into())
        })
        .layer(BulkheadLayer::new(1).layer(service_fn(
            |_: oneshot::Receiver<()>| async { Ok::<u8, BoxError>(1) },
        )));
    let (_tx, rx) = oneshot::channel();
    let _held = svc.ready().await.unwrap().call(rx);
    let (_tx2, rx2) = oneshot::channel();
    let error = svc.ready().await.unwrap().call(rx2).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("fallback after: {}", Full::default())
    );
}

// ----- adaptive ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn adaptive_limit_sheds_beyond_the_limit_and_learns_from_drops() {
    let layer = AdaptiveLimitLayer::new(Aimd::default().initial(2).min(1).max(10));
    let svc = layer.layer(service_fn(|gate: oneshot::Receiver<bool>| async move {
        match gate.await {
            Ok(true) => Ok::<_, BoxError>(()),
            _ => Err("upstream overloaded".into()),
        }
    }));

    let (ok_a, a) = oneshot::channel();
    let (ok_b, b) = oneshot::channel();
    let first = svc.clone().oneshot(a);
    let second = svc.clone().oneshot(b);
    let (first, second) = (tokio::spawn(first), tokio::spawn(second));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);

    let (_c_tx, c) = oneshot::channel();
    let error = svc.clone().oneshot(c).await.unwrap_err();
    let shed = error.downcast_ref::<Shed>().expect("shed");
    assert_eq!(shed.limit(), 2);
    assert_eq!(
        local_rejection_of(&error).map(|r| r.kind),
        Some(RejectionKind::Shed)
    );

    ok_a.send(true).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(layer.limit(), 3, "a success at full use adds one");
    ok_b.send(false).unwrap();
    second.await.unwrap().unwrap_err();
    assert_eq!(layer.limit(), 2, "a failure multiplies by 0.9, floored");
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_ignores_local_rejections_from_below() {
    let layer = AdaptiveLimitLayer::new(Aimd::default().initial(4));
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(BulkheadLayer::new(1))
        .service(service_fn(|gate: oneshot::Receiver<()>| async move {
            let _ = gate.await;
            Ok::<_, BoxError>(())
        }));
    let (_hold, held) = oneshot::channel();
    let _holding = svc.ready().await.unwrap().call(held);
    for _ in 0..10 {
        let (_tx, rx) = oneshot::channel();
        let error = svc.ready().await.unwrap().call(rx).await.unwrap_err();
        assert!(error.is::<Full>());
    }
    assert_eq!(
        layer.limit(),
        4,
        "ten bulkhead rejections did not lower the limit"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_place_back() {
    let layer = AdaptiveLimitLayer::new(Aimd::default().initial(1));
    let mut svc = layer.layer(service_fn(|gate: oneshot::Receiver<()>| async move {
        let _ = gate.await;
        Ok::<_, BoxError>(())
    }));
    let (_tx, rx) = oneshot::channel();
    let pending = svc.ready().await.unwrap().call(rx);
    assert_eq!(layer.in_flight(), 1);
    drop(pending);
    assert_eq!(layer.in_flight(), 0);
}

// ----- hedge ---------------------------------------------------------------------------------

/// Answers after the delay carried by the request, counting calls.
fn delayed(
    calls: Arc<AtomicUsize>,
) -> impl Service<Duration, Response = Duration, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |delay: Duration| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            // The hedge (second call) of a slow request is fast: the slowness was one replica's.
            if n > 0 && delay > Duration::from_millis(500) {
                sleep(Duration::from_millis(10)).await;
            } else {
                sleep(delay).await;
            }
            Ok(delay)
        }
    })
}

async fn warm_up<S: Service<Duration, Error = BoxError>>(svc: &mut S, calls: usize) {
    for _ in 0..calls {
        svc.ready()
            .await
            .unwrap()
            .call(Duration::from_millis(10))
            .await
            .unwrap();
    }
    advance(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_after_the_percentile_delay_and_the_fast_answer_wins() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = HedgeLayer::new(RetryErrors)
        .period(Duration::from_secs(1))
        .min_samples(10);
    let mut svc = layer.layer(delayed(calls.clone()));
    warm_up(&mut svc, 20).await;
    let delay = layer.delay().expect("a p95 from the warm-up period");
    assert!(
        delay >= Duration::from_millis(10) && delay <= Duration::from_millis(13),
        "{delay:?}"
    );

    calls.store(0, Ordering::SeqCst);
    let started = Instant::now();
    svc.ready()
        .await
        .unwrap()
        .call(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one hedge");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "answered by the hedge: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn no_hedge_without_data_for_fast_calls_or_beyond_the_budget() {
    let calls = Arc::new(AtomicUsize::new(0));
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
    let layer = HedgeLayer::new(RetryErrors)
        .period(Duration::from_secs(1))
        .min_samples(10)
        .budget(budget);
    let mut svc = layer.layer(delayed(calls.clone()));
    svc.ready()
        .await
        .unwrap()
        .call(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no latency data yet: no hedge"
    );

    warm_up(&mut svc, 20).await;
    calls.store(0, Ordering::SeqCst);
    svc.ready()
        .await
        .unwrap()
        .call(Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a fast call is not hedged");
    svc.ready()
        .await
        .unwrap()
        .call(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a zero budget allows no hedge"
    );
}

#[derive(Clone)]
struct Once;

impl Policy<Duration, Duration, BoxError> for Once {
    fn clone_request(&self, _: &Duration) -> Option<Duration> {
        None
    }
    fn decide(&self, _: &Duration, _: Result<&Duration, &BoxError>) -> Decision {
        Decision::Done
    }
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_be_replayed_are_never_hedged() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = HedgeLayer::new(Once)
        .period(Duration::from_secs(1))
        .min_samples(10);
    let mut svc = layer.layer(delayed(calls.clone()));
    warm_up(&mut svc, 20).await;
    calls.store(0, Ordering::SeqCst);
    svc.ready()
        .await
        .unwrap()
        .call(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
