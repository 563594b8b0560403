//! Retry behaviour with tokio's paused clock.
#![cfg(feature = "retry")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::deadline::Deadline;
use mainstay_resilience::retry::{
    Decision, ExponentialBackoff, Jitter, MakeBackoff, Policy, RetryBudget, RetryLayer,
};
use proptest::prelude::*;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Fails the first `failures` calls, records when each call happened.
fn flaky(
    failures: usize,
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl Service<u32, Response = u32, Error = BoxError> + Clone {
    let calls = Arc::new(AtomicUsize::new(0));
    service_fn(move |req: u32| {
        log.lock().unwrap().push(Instant::now());
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err::<u32, BoxError>(format!("failure {n}").into())
            } else {
                Ok(req)
            }
        }
    })
}

fn gaps(log: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect()
}

#[tokio::test(start_paused = true)]
async fn retries_errors_with_capped_backoff_until_success() {
    let log = Arc::default();
    let backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_millis(300))
        .jitter(Jitter::None);
    let mut svc = RetryLayer::new()
        .max_attempts(4)
        .backoff(backoff)
        .layer(flaky(3, Arc::clone(&log)));
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    assert_eq!(
        gaps(&log),
        [100, 200, 300].map(Duration::from_millis),
        "100 × 2ⁿ, capped at 300"
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let log = Arc::default();
    let mut svc = RetryLayer::new()
        .max_attempts(3)
        .layer(flaky(10, Arc::clone(&log)));
    let error = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(error.to_string(), "failure 2");
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[derive(Clone)]
struct NeverReplay;

impl Policy<u32, u32, BoxError> for NeverReplay {
    fn clone_request(&self, _: &u32) -> Option<u32> {
        None
    }
    fn decide(&self, _: &u32, _: Result<&u32, &BoxError>) -> Decision {
        Decision::Retry
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_sent_once() {
    let log = Arc::default();
    let mut svc = RetryLayer::new()
        .policy(NeverReplay)
        .layer(flaky(1, Arc::clone(&log)));
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// Asks the client to come back later, and optionally carries a deadline.
#[derive(Clone)]
struct ServerSays {
    retry_after: Duration,
    deadline: Option<Deadline>,
}

impl Policy<u32, u32, BoxError> for ServerSays {
    fn clone_request(&self, r: &u32) -> Option<u32> {
        Some(*r)
    }
    fn decide(&self, _: &u32, result: Result<&u32, &BoxError>) -> Decision {
        match result {
            Ok(_) => Decision::Done,
            Err(_) => Decision::RetryAfter(self.retry_after),
        }
    }
    fn deadline(&self, _: &u32) -> Option<Deadline> {
        self.deadline
    }
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after_and_refuses_to_wait_too_long() {
    let log = Arc::default();
    let policy = ServerSays {
        retry_after: Duration::from_secs(2),
        deadline: None,
    };
    let mut svc = RetryLayer::new()
        .policy(policy)
        .layer(flaky(1, Arc::clone(&log)));
    svc.ready().await.unwrap().call(1).await.unwrap();
    let gap = gaps(&log)[0];
    assert!(gap >= Duration::from_secs(2), "waited {gap:?}");

    let log = Arc::default();
    let policy = ServerSays {
        retry_after: Duration::from_secs(60),
        deadline: None,
    };
    let mut svc = RetryLayer::new()
        .policy(policy)
        .layer(flaky(1, Arc::clone(&log)));
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "60 s is above the 30 s default cap"
    );
}

#[tokio::test(start_paused = true)]
async fn skips_a_retry_the_deadline_cannot_cover() {
    let log = Arc::default();
    let policy = ServerSays {
        retry_after: Duration::from_secs(1),
        deadline: Some(Deadline::after(Duration::from_millis(900))),
    };
    let mut svc = RetryLayer::new()
        .policy(policy)
        .layer(flaky(1, Arc::clone(&log)));
    let started = Instant::now();
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "returned at once instead of sleeping in vain"
    );
}

#[tokio::test(start_paused = true)]
async fn plugs_in_any_iterator_of_durations() {
    let log = Arc::default();
    let mut svc = RetryLayer::new()
        .max_attempts(3)
        .backoff(|| [Duration::from_millis(7), Duration::from_millis(11)].into_iter())
        .layer(flaky(2, Arc::clone(&log)));
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(gaps(&log), [7, 11].map(Duration::from_millis));
}

#[tokio::test(start_paused = true)]
async fn budget_counts_exact_fractions_and_refills_after_its_ttl() {
    // No floor: 10 requests at 20 % buy exactly 2 retries (tower#857 would allow more).
    let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.2);
    for _ in 0..10 {
        budget.deposit();
    }
    assert_eq!(budget.remaining(), 2);
    assert!(budget.withdraw());
    assert!(budget.withdraw());
    assert!(!budget.withdraw(), "the third retry is over budget");

    // A floor of 3 per second over 1 s: 3 retries with no traffic at all.
    let floor = RetryBudget::new(Duration::from_secs(1), 3, 0.0);
    assert_eq!((0..5).filter(|_| floor.withdraw()).count(), 3);
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        floor.remaining(),
        3,
        "withdrawals older than the TTL no longer count"
    );
}

#[tokio::test(start_paused = true)]
async fn budget_limits_retries_across_requests() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
    let log = Arc::default();
    let mut svc = RetryLayer::new()
        .max_attempts(5)
        .budget(budget.clone())
        .layer(flaky(usize::MAX, Arc::clone(&log)));
    for _ in 0..4 {
        svc.ready().await.unwrap().call(1).await.unwrap_err();
    }
    // 4 requests × 0.5 = 2 retries in all, not 4 × 4.
    assert_eq!(log.lock().unwrap().len(), 4 + 2);
    assert_eq!(budget.remaining(), 0);
}

#[test]
fn each_request_draws_its_own_jitter_sequence() {
    let backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let firsts: std::collections::HashSet<_> = (0..100)
        .map(|_| backoff.make_backoff().take(3).collect::<Vec<_>>())
        .collect();
    assert!(
        firsts.len() > 95,
        "only {} distinct sequences of 100",
        firsts.len()
    );
}

proptest! {
    #[test]
    fn jitter_stays_within_its_bounds_and_under_the_cap(
        base_ms in 1u64..1_000,
        cap_ms in 1u64..20_000,
        kind in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated)],
    ) {
        let base = Duration::from_millis(base_ms);
        let cap = Duration::from_millis(cap_ms).max(base);
        let mut previous = base;
        for (n, delay) in ExponentialBackoff::new(base, cap).jitter(kind).make_backoff().take(40).enumerate() {
            prop_assert!(delay <= cap, "{delay:?} above cap {cap:?}");
            let exponential = base.saturating_mul(1u32 << n.min(31)).min(cap);
            match kind {
                Jitter::None => prop_assert_eq!(delay, exponential),
                Jitter::Full => prop_assert!(delay <= exponential),
                Jitter::Equal => prop_assert!(delay >= exponential / 2 && delay <= exponential),
                Jitter::Decorrelated => {
                    prop_assert!(delay >= base && delay <= (previous * 3).min(cap));
                    previous = delay;
                }
            }
        }
    }
}
