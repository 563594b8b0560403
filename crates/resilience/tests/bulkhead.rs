//! Bulkhead behaviour with tokio's paused clock.
#![cfg(feature = "bulkhead")]

use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::bulkhead::{BulkheadLayer, error::Full};
use mainstay_resilience::rejection::{RejectionKind, local_rejection_of};
use tokio::sync::oneshot;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A service whose calls finish when the test sends on the channel they carry.
fn gated()
-> impl Service<oneshot::Receiver<()>, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|gate: oneshot::Receiver<()>| async move {
        let _ = gate.await;
        Ok::<_, BoxError>(())
    })
}

#[tokio::test(start_paused = true)]
async fn rejects_at_once_when_full_and_frees_the_slot_when_the_call_ends() {
    let layer = BulkheadLayer::new(2);
    let mut svc = layer.layer(gated());
    let (open_a, a) = oneshot::channel();
    let (_open_b, b) = oneshot::channel();
    let first = tokio::spawn(svc.ready().await.unwrap().call(a));
    let _second = tokio::spawn(svc.ready().await.unwrap().call(b));
    assert_eq!(layer.available(), 0);

    let started = Instant::now();
    let (_c_tx, c) = oneshot::channel();
    let error = svc.ready().await.unwrap().call(c).await.unwrap_err();
    assert!(error.is::<Full>());
    assert_eq!(started.elapsed(), Duration::ZERO, "no waiting by default");
    assert_eq!(
        local_rejection_of(&error).map(|r| r.kind),
        Some(RejectionKind::BulkheadFull)
    );

    open_a.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(layer.available(), 1, "the finished call gave its slot back");
}

#[tokio::test(start_paused = true)]
async fn waits_at_most_max_wait_for_a_slot() {
    let layer = BulkheadLayer::new(1).max_wait(Duration::from_millis(100));
    let mut svc = layer.layer(gated());
    let (_hold, held) = oneshot::channel();
    let _holder = tokio::spawn(svc.ready().await.unwrap().call(held));

    let started = Instant::now();
    let (_tx, rx) = oneshot::channel();
    let error = svc.ready().await.unwrap().call(rx).await.unwrap_err();
    assert!(error.is::<Full>());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_a_slot_freed_within_max_wait() {
    let layer = BulkheadLayer::new(1).max_wait(Duration::from_secs(1));
    let mut svc = layer.layer(gated());
    let (release, held) = oneshot::channel();
    let holder = tokio::spawn(svc.ready().await.unwrap().call(held));

    let waiter = {
        let mut svc = svc.clone();
        tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            tx.send(()).unwrap();
            svc.ready().await.unwrap().call(rx).await
        })
    };
    advance(Duration::from_millis(300)).await;
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    waiter
        .await
        .unwrap()
        .expect("got the freed slot before its deadline");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_frees_the_slot() {
    let layer = BulkheadLayer::new(1);
    let mut svc = layer.layer(gated());
    let (_tx, rx) = oneshot::channel();
    let pending = svc.ready().await.unwrap().call(rx);
    assert_eq!(layer.available(), 0);
    drop(pending);
    assert_eq!(layer.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let layer = BulkheadLayer::new(1).max_wait(Duration::from_secs(10));
    let mut svc = layer.layer(gated());
    let (release, held) = oneshot::channel();
    let holder = tokio::spawn(svc.ready().await.unwrap().call(held));
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for id in 0..3 {
        let mut svc = svc.clone();
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let ready = svc.ready().await.unwrap();
            order.lock().unwrap().push(id);
            let (tx, rx) = oneshot::channel();
            tx.send(()).unwrap();
            ready.call(rx).await.unwrap();
        }));
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
}

#[tokio::test]
async fn call_without_poll_ready_takes_a_free_slot_or_rejects() {
    let layer = BulkheadLayer::new(1);
    let mut svc = layer.layer(gated());
    let (_tx, rx) = oneshot::channel();
    let held = svc.call(rx);
    let (_tx2, rx2) = oneshot::channel();
    assert!(svc.call(rx2).await.unwrap_err().is::<Full>());
    drop(held);
    let (tx3, rx3) = oneshot::channel();
    tx3.send(()).unwrap();
    svc.call(rx3).await.unwrap();
}
