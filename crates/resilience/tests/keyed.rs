//! Breakers and bulkheads per key, with bounded memory.
#![cfg(all(feature = "circuit-breaker", feature = "bulkhead"))]

use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::bulkhead::{KeyedBulkheadLayer, error::Full};
use mainstay_resilience::circuit_breaker::{Breaker, KeyedCircuitBreakerLayer, State, error::Open};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt, service_fn};

fn hosts() -> impl Service<(&'static str, bool), Response = &'static str, Error = BoxError> + Clone
{
    service_fn(|(host, fail): (&'static str, bool)| async move {
        if fail {
            Err::<_, BoxError>(format!("{host} failed").into())
        } else {
            Ok(host)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let layer = KeyedCircuitBreakerLayer::new(
        Breaker::builder()
            .count_window(2)
            .minimum_calls(2)
            .open_for(Duration::from_secs(5)),
        |(host, _): &(&'static str, bool)| *host,
    )
    .unwrap();
    let mut svc = layer.layer(hosts());
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(("a", true)).await;
    }
    assert_eq!(layer.breaker(&"a").state(), State::Open);
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(("a", false))
            .await
            .unwrap_err()
            .is::<Open>()
    );
    assert_eq!(
        svc.ready().await.unwrap().call(("b", false)).await.unwrap(),
        "b"
    );
    assert_eq!(layer.breaker(&"b").state(), State::Closed);
    assert_eq!(layer.len(), 2);

    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..5 {
        svc.ready().await.unwrap().call(("a", false)).await.unwrap();
    }
    assert_eq!(
        layer.breaker(&"a").state(),
        State::Closed,
        "probes closed it again"
    );
}

#[tokio::test]
async fn the_number_of_breakers_stays_bounded() {
    let layer = KeyedCircuitBreakerLayer::with_max_keys(
        Breaker::builder(),
        |(host, _): &(&'static str, bool)| *host,
        3,
    )
    .unwrap();
    let mut svc = layer.layer(hosts());
    for host in ["a", "b", "c", "d", "e", "f", "g"] {
        svc.ready()
            .await
            .unwrap()
            .call((host, false))
            .await
            .unwrap();
        assert!(layer.len() <= 3, "{} breakers after {host}", layer.len());
    }
}

#[tokio::test]
async fn a_breaker_in_use_is_never_replaced() {
    let layer = KeyedCircuitBreakerLayer::with_max_keys(
        Breaker::builder().count_window(2).minimum_calls(2),
        |(host, _): &(u32, Option<oneshot::Receiver<()>>)| *host,
        2,
    )
    .unwrap();
    let mut svc = layer.layer(service_fn(
        |(host, gate): (u32, Option<oneshot::Receiver<()>>)| async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Err::<u32, BoxError>(format!("{host} is down").into())
        },
    ));
    // Host 0 fails once, and a second call to it is in flight while a hundred hosts pass.
    let _ = svc.ready().await.unwrap().call((0, None)).await;
    let (release, gate) = oneshot::channel();
    let in_flight = svc.ready().await.unwrap().call((0, Some(gate)));
    for host in 1..=100 {
        let _ = svc.ready().await.unwrap().call((host, None)).await;
    }
    // Its second failure lands in the breaker the next call sees: the circuit opens.
    release.send(()).unwrap();
    let _ = in_flight.await;
    assert_eq!(layer.breaker(&0).state(), State::Open);
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call((0, None))
        .await
        .unwrap_err();
    assert!(refused.is::<Open>(), "{refused}");
}

#[test]
fn a_bad_template_is_a_config_error() {
    let error =
        KeyedCircuitBreakerLayer::<_, u8>::new(Breaker::builder().failure_rate(7.0), |k: &u8| *k)
            .unwrap_err();
    assert!(error.to_string().contains("failure rate"));
}

#[tokio::test]
async fn each_key_has_its_own_bulkhead_slots() {
    let layer =
        KeyedBulkheadLayer::new(1, |(tenant, _): &(&'static str, oneshot::Receiver<()>)| {
            *tenant
        });
    let mut svc = layer.layer(service_fn(
        |(tenant, gate): (&'static str, oneshot::Receiver<()>)| async move {
            let _ = gate.await;
            Ok::<_, BoxError>(tenant)
        },
    ));
    let (_hold, held) = oneshot::channel();
    let _busy = svc.ready().await.unwrap().call(("acme", held));
    assert_eq!(layer.available(&"acme"), 0);

    let (_tx, rx) = oneshot::channel();
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(("acme", rx))
            .await
            .unwrap_err()
            .is::<Full>()
    );

    let (tx, rx) = oneshot::channel();
    tx.send(()).unwrap();
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(("globex", rx))
            .await
            .unwrap(),
        "globex"
    );
}
