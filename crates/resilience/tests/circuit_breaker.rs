//! Circuit breaker behaviour through the tower layer, with tokio's paused clock.
#![cfg(feature = "circuit-breaker")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::circuit_breaker::{
    Breaker, CircuitBreakerLayer, Outcome, State, error::ConfigError, error::Open,
};
use tokio::time::{advance, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the inner test service does with a request.
#[derive(Debug, Clone, Copy)]
enum Do {
    Succeed,
    Fail,
    /// Succeed after this long.
    Take(Duration),
    /// Fail after this long.
    FailAfter(Duration),
    /// Never finish.
    Hang,
}

type Svc = tower::util::BoxCloneService<Do, &'static str, BoxError>;

fn service(breaker: &Breaker, calls: Arc<AtomicUsize>) -> Svc {
    let inner = service_fn(move |action: Do| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            match action {
                Do::Succeed => Ok("ok"),
                Do::Fail => Err::<_, BoxError>("boom".into()),
                Do::Take(d) => {
                    sleep(d).await;
                    Ok("slow")
                }
                Do::FailAfter(d) => {
                    sleep(d).await;
                    Err("late boom".into())
                }
                Do::Hang => std::future::pending().await,
            }
        }
    });
    tower::util::BoxCloneService::new(CircuitBreakerLayer::new(breaker.clone()).layer(inner))
}

async fn call(svc: &mut Svc, action: Do) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(action).await
}

fn is_open(result: &Result<&'static str, BoxError>) -> bool {
    matches!(result, Err(e) if e.is::<Open>())
}

fn small(window: usize) -> mainstay_resilience::circuit_breaker::Builder {
    Breaker::builder()
        .count_window(window)
        .minimum_calls(window as u64)
        .failure_rate(0.5)
        .open_for(Duration::from_secs(10))
        .half_open_permits(2)
        .half_open_max_wait(Some(Duration::from_secs(5)))
}

#[tokio::test(start_paused = true)]
async fn opens_when_failure_rate_reaches_threshold_and_refuses_without_calling_inner() {
    let breaker = small(4).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = service(&breaker, calls.clone());
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Fail).await.unwrap_err();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "3 calls are below the minimum of 4"
    );
    call(&mut svc, Do::Fail).await.unwrap_err();
    assert_eq!(
        breaker.state(),
        State::Open,
        "2 of 4 failed: 50% meets the threshold"
    );

    let before = calls.load(Ordering::SeqCst);
    let refused = call(&mut svc, Do::Succeed).await;
    assert!(is_open(&refused));
    let open = refused.unwrap_err().downcast::<Open>().unwrap();
    assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(open.state(), State::Open);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "inner service not called"
    );
    assert_eq!(breaker.metrics().refused, 1);
}

#[tokio::test(start_paused = true)]
async fn count_window_truly_slides_after_many_successes() {
    // The peer's cumulative window needs 1,000 failures here; a real 100-call window needs 50.
    let breaker = Breaker::builder()
        .count_window(100)
        .minimum_calls(100)
        .failure_rate(0.5)
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..1_000 {
        call(&mut svc, Do::Succeed).await.unwrap();
    }
    for failure in 1..=50 {
        assert_eq!(
            breaker.state(),
            State::Closed,
            "still closed before failure {failure}"
        );
        call(&mut svc, Do::Fail).await.unwrap_err();
    }
    assert_eq!(breaker.state(), State::Open);
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.calls, metrics.failures),
        (100, 50),
        "the window is kept while open: the last 100 calls, 50 of them failures"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_when_probes_succeed_and_starts_with_an_empty_window() {
    let breaker = small(4).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    assert_eq!(breaker.state(), State::Open);
    advance(Duration::from_millis(9_999)).await;
    assert!(
        is_open(&call(&mut svc, Do::Succeed).await),
        "still open 1 ms before the end"
    );
    advance(Duration::from_millis(1)).await;
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    let metrics = breaker.metrics();
    assert_eq!(
        (metrics.calls, metrics.failures),
        (0, 0),
        "closed period starts empty"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_is_judged_by_rate_not_by_the_first_result() {
    let breaker = small(4)
        .half_open_permits(4)
        .failure_rate(0.5)
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    // One failure out of four probes is 25%: below the threshold, so the circuit closes.
    call(&mut svc, Do::Fail).await.unwrap_err();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "one failed probe does not reopen"
    );
    for _ in 0..3 {
        call(&mut svc, Do::Succeed).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failing_probes_reopen_with_a_growing_open_period() {
    let breaker = small(4)
        .open_backoff(2.0, Duration::from_secs(25))
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    let mut expected = [20, 25, 25].into_iter();
    advance(Duration::from_secs(10)).await;
    for _ in 0..3 {
        call(&mut svc, Do::Fail).await.unwrap_err();
        call(&mut svc, Do::Fail).await.unwrap_err();
        assert_eq!(breaker.state(), State::Open);
        let open = call(&mut svc, Do::Succeed)
            .await
            .unwrap_err()
            .downcast::<Open>()
            .unwrap();
        let secs = expected.next().unwrap();
        assert_eq!(open.retry_after(), Some(Duration::from_secs(secs)));
        advance(Duration::from_secs(secs)).await;
    }
    // Recovery resets the growth.
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    let open = call(&mut svc, Do::Succeed)
        .await
        .unwrap_err()
        .downcast::<Open>()
        .unwrap();
    assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_a_bounded_number_of_probes() {
    let breaker = small(4).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    let first = tokio::spawn(call_owned(svc.clone(), Do::Hang));
    let second = tokio::spawn(call_owned(svc.clone(), Do::Hang));
    tokio::task::yield_now().await;
    let third = call(&mut svc, Do::Succeed).await;
    assert!(
        is_open(&third),
        "a third probe is refused while two are in flight"
    );
    assert_eq!(
        third.unwrap_err().downcast::<Open>().unwrap().state(),
        State::HalfOpen
    );
    first.abort();
    second.abort();
}

async fn call_owned(mut svc: Svc, action: Do) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(action).await
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_returns_its_permit() {
    let breaker = small(4).half_open_permits(1).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    let hanging = svc.ready().await.unwrap().call(Do::Hang);
    assert!(
        is_open(&call(&mut svc, Do::Succeed).await),
        "the only permit is taken"
    );
    drop(hanging);
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the freed permit went to a probe that succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reserved_permit_is_returned_when_the_service_is_dropped_before_call() {
    let breaker = small(4).half_open_permits(1).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    let mut reserving = svc.clone();
    reserving.ready().await.unwrap();
    assert!(is_open(&call(&mut svc, Do::Succeed).await));
    drop(reserving);
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn hanging_probes_time_out_and_reopen_the_circuit() {
    let breaker = small(4).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    let a = tokio::spawn(call_owned(svc.clone(), Do::Hang));
    let b = tokio::spawn(call_owned(svc.clone(), Do::Hang));
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    advance(Duration::from_secs(5)).await;
    let refused = call(&mut svc, Do::Succeed)
        .await
        .unwrap_err()
        .downcast::<Open>()
        .unwrap();
    assert_eq!(
        refused.state(),
        State::Open,
        "half-open gave up after its max wait"
    );
    assert_eq!(breaker.state(), State::Open);
    a.abort();
    b.abort();
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_older_generation_are_ignored() {
    let breaker = small(4).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    // A slow failure admitted while closed...
    let slow_failure = {
        let mut svc = svc.clone();
        svc.ready().await.unwrap();
        tokio::spawn(svc.call(Do::FailAfter(Duration::from_secs(12))))
    };
    tokio::task::yield_now().await; // start it now, at t = 0
    for _ in 0..4 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    assert_eq!(breaker.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    call(&mut svc, Do::Succeed).await.unwrap();
    // ...fails during half-open (t = 12 s): it must not count as a failed probe.
    advance(Duration::from_secs(2)).await;
    slow_failure.await.unwrap().unwrap_err();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "still waiting for the second probe"
    );
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_circuit() {
    let breaker = small(4)
        .slow_calls(Duration::from_millis(500), 0.5)
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    call(&mut svc, Do::Take(Duration::from_millis(499)))
        .await
        .unwrap();
    call(&mut svc, Do::Take(Duration::from_millis(500)))
        .await
        .unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.metrics().slow_calls, 1);
    call(&mut svc, Do::Take(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(breaker.state(), State::Open, "2 of 4 calls were slow");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let breaker = Breaker::builder()
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(4)
        .failure_rate(0.5)
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..3 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    advance(Duration::from_secs(10)).await;
    assert_eq!(breaker.metrics().calls, 0, "all three failures slid out");
    let _ = call(&mut svc, Do::Fail).await;
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed, "1 of 4 in the window");
    advance(Duration::from_secs(3)).await;
    let _ = call(&mut svc, Do::Fail).await;
    let _ = call(&mut svc, Do::Fail).await;
    assert_eq!(breaker.state(), State::Open, "3 of 6 in the window");
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let breaker = small(4).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = service(&breaker, calls.clone());

    breaker.force_open();
    assert!(is_open(&call(&mut svc, Do::Succeed).await));
    advance(Duration::from_secs(3600)).await;
    assert!(
        is_open(&call(&mut svc, Do::Succeed).await),
        "forced open never expires"
    );

    breaker.disable();
    for _ in 0..10 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    assert_eq!(breaker.state(), State::Disabled);
    assert_eq!(breaker.metrics().calls, 0, "disabled records nothing");

    breaker.metrics_only();
    for _ in 0..10 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    assert_eq!(
        breaker.state(),
        State::MetricsOnly,
        "metrics-only never opens"
    );
    assert_eq!(breaker.metrics().failures, 4);
    assert!((breaker.metrics().failure_rate() - 1.0).abs() < f64::EPSILON);

    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0);
    breaker.trip();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn classifier_decides_what_counts() {
    let breaker = small(2).build().unwrap();
    let inner = service_fn(|status: u16| async move { Ok::<_, BoxError>(status) });
    let layer =
        CircuitBreakerLayer::new(breaker.clone()).classifier(|result: Result<&u16, &BoxError>| {
            match result {
                Ok(s) if *s >= 500 => Outcome::Failure,
                Ok(s) if *s >= 400 => Outcome::Ignore,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            }
        });
    let mut svc = layer.layer(inner);
    for _ in 0..10 {
        svc.ready().await.unwrap().call(404).await.unwrap();
    }
    assert_eq!(breaker.metrics().calls, 0, "4xx ignored");
    svc.ready().await.unwrap().call(200).await.unwrap();
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn state_changes_reach_the_listener_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let breaker = small(2)
        .half_open_permits(1)
        .on_state_change(move |from, to| log.lock().unwrap().push((from, to)))
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    let _ = call(&mut svc, Do::Fail).await;
    let _ = call(&mut svc, Do::Fail).await;
    advance(Duration::from_secs(10)).await;
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
        ]
    );
}

#[tokio::test]
async fn every_service_made_by_one_layer_shares_the_breaker() {
    let breaker = small(2).build().unwrap();
    let layer = CircuitBreakerLayer::new(breaker.clone());
    let make = || {
        layer.layer(service_fn(|()| async {
            Err::<(), BoxError>("down".into())
        }))
    };
    let (mut a, mut b) = (make(), make());
    let _ = a.ready().await.unwrap().call(()).await;
    let _ = b.ready().await.unwrap().call(()).await;
    let refused = a.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(refused.is::<Open>());
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let err = |b: mainstay_resilience::circuit_breaker::Builder| b.build().unwrap_err();
    assert!(matches!(
        err(Breaker::builder().failure_rate(1.5)),
        ConfigError::Rate { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().failure_rate(0.0)),
        ConfigError::Rate { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().failure_rate(f64::NAN)),
        ConfigError::Rate { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().count_window(0)),
        ConfigError::Count { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().half_open_permits(0)),
        ConfigError::Count { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().open_for(Duration::ZERO)),
        ConfigError::ZeroDuration { .. }
    ));
    assert!(matches!(
        err(Breaker::builder().open_backoff(0.5, Duration::from_secs(1))),
        ConfigError::Multiplier(_)
    ));
    assert_eq!(
        err(Breaker::builder().failure_rate(2.0)).to_string(),
        "failure rate must be above 0 and at most 1, got 2"
    );
}

#[test]
fn count_windows_are_bounded_by_what_the_counters_hold() {
    const LARGEST: usize = (1 << 20) - 1;
    assert!(Breaker::builder().count_window(LARGEST).build().is_ok());
    for too_large in [LARGEST + 1, 1 << 24] {
        assert!(matches!(
            Breaker::builder().count_window(too_large).build().unwrap_err(),
            ConfigError::Count { max, .. } if max == LARGEST as u64
        ));
    }
    assert!(matches!(
        Breaker::builder()
            .time_window(Duration::from_secs(1), 1025)
            .build()
            .unwrap_err(),
        ConfigError::Count { max: 1024, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_minimum_above_the_window_size_is_the_window_size() {
    // A window of 5 never holds 50 calls: taken as 5, so the breaker still opens.
    let breaker = Breaker::builder()
        .count_window(5)
        .minimum_calls(50)
        .build()
        .unwrap();
    let mut svc = service(&breaker, Arc::default());
    for _ in 0..5 {
        let _ = call(&mut svc, Do::Fail).await;
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_static_handle_shares_state_and_counts_with_the_original() {
    let breaker = small(4).half_open_permits(1).build().unwrap();
    let forever = breaker.clone().into_static();
    let mut through_static = service(&forever, Arc::default());
    let mut through_counted = service(&breaker, Arc::default());
    call(&mut through_static, Do::Succeed).await.unwrap();
    call(&mut through_counted, Do::Fail).await.unwrap_err();
    call(&mut through_static, Do::Succeed).await.unwrap();
    assert_eq!(breaker.metrics().calls, 3, "one window for both handles");
    call(&mut through_counted, Do::Fail).await.unwrap_err();
    assert_eq!(forever.state(), State::Open, "2 of 4 failed");
    assert!(is_open(&call(&mut through_static, Do::Succeed).await));

    // A dropped probe through the static handle still returns its permit.
    advance(Duration::from_secs(10)).await;
    let hanging = through_static.ready().await.unwrap().call(Do::Hang);
    assert!(is_open(&call(&mut through_counted, Do::Succeed).await));
    drop(hanging);
    call(&mut through_counted, Do::Succeed).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        forever.clone().into_static().metrics(),
        breaker.metrics(),
        "into_static on a static handle keeps the same breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_is_judged_on_failures_not_on_successes() {
    let breaker = small(4).build().unwrap();
    let mut svc = service(&breaker, Arc::default());
    call(&mut svc, Do::Fail).await.unwrap_err();
    call(&mut svc, Do::Fail).await.unwrap_err();
    call(&mut svc, Do::Succeed).await.unwrap();
    call(&mut svc, Do::Succeed).await.unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the success that reached the minimum does not open the circuit"
    );
    call(&mut svc, Do::Fail).await.unwrap_err();
    assert_eq!(
        breaker.state(),
        State::Open,
        "the next failure does (2 of 4)"
    );
}
