//! Heap allocations on the hot paths, counted per thread by a global allocator.
#![cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "timeout"))]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mainstay_resilience::bulkhead::BulkheadLayer;
use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer};
use mainstay_test_support::CountingAllocator;
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// One ready-call-poll cycle; the futures here finish on the first poll.
fn call_once<S: Service<u64, Response = u64>>(service: &mut S) -> u64
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let future = pin!(service.call(7));
    match future.poll(&mut cx) {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => unreachable!("the inner service is immediate"),
    }
}

fn noop() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    service_fn(|n: u64| std::future::ready(Ok(n)))
}

#[test]
fn closed_breaker_call_allocates_nothing() {
    for breaker in [
        Breaker::builder().count_window(100).build().unwrap(),
        Breaker::builder()
            .time_window(Duration::from_secs(60), 60)
            .build()
            .unwrap(),
        Breaker::builder()
            .slow_calls(Duration::from_secs(1), 0.5)
            .build()
            .unwrap(),
    ] {
        let mut service = CircuitBreakerLayer::new(breaker).layer(noop());
        call_once(&mut service); // warm-up: thread-locals, lazy statics
        let (_, allocations) = CountingAllocator::count(|| {
            for _ in 0..1_000 {
                call_once(&mut service);
            }
        });
        assert_eq!(allocations, 0);
    }
}

#[test]
fn open_breaker_refusal_allocates_only_the_boxed_error() {
    let breaker = Breaker::builder().build().unwrap();
    breaker.force_open();
    let mut service = CircuitBreakerLayer::new(breaker).layer(noop());
    let mut cx = Context::from_waker(Waker::noop());
    let (_, allocations) = CountingAllocator::count(|| {
        let _ = service.poll_ready(&mut cx);
        let _ = pin!(service.call(1)).poll(&mut cx);
    });
    assert_eq!(allocations, 1, "the `Open` error boxed into BoxError");
}

#[tokio::test(flavor = "current_thread")]
async fn bulkhead_with_a_free_slot_allocates_nothing() {
    let mut service = BulkheadLayer::new(4).layer(noop());
    call_once(&mut service);
    let (_, allocations) = CountingAllocator::count(|| {
        for _ in 0..1_000 {
            call_once(&mut service);
        }
    });
    assert_eq!(allocations, 0);
}
