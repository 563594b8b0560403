//! Timeouts and deadlines with tokio's paused clock.
#![cfg(feature = "timeout")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_resilience::BoxError;
use mainstay_resilience::timeout::error::{DeadlineExceeded, Elapsed};
use mainstay_resilience::timeout::{CarriesDeadline, Deadline, DeadlineLayer, TimeoutLayer};
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Debug, Default, Clone)]
struct Req {
    work: Duration,
    deadline: Option<Deadline>,
}

impl CarriesDeadline for Req {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

fn worker(
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Option<Deadline>, Error = BoxError> + Clone {
    service_fn(move |req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(req.work).await;
            Ok::<_, BoxError>(req.deadline)
        }
    })
}

fn req(work_ms: u64) -> Req {
    Req {
        work: Duration::from_millis(work_ms),
        deadline: None,
    }
}

#[tokio::test(start_paused = true)]
async fn attempt_times_out_exactly_at_its_limit() {
    let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(worker(Arc::default()));
    let started = Instant::now();
    let error = svc.ready().await.unwrap().call(req(150)).await.unwrap_err();
    assert!(error.is::<Elapsed>());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    svc.ready().await.unwrap().call(req(100 - 1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_stamps_the_request_and_keeps_an_earlier_upstream_deadline() {
    let mut svc = DeadlineLayer::new(Duration::from_secs(2)).layer(worker(Arc::default()));
    let stamped = svc
        .ready()
        .await
        .unwrap()
        .call(req(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stamped.remaining(), Duration::from_secs(2));

    let upstream = Deadline::after(Duration::from_millis(300));
    let mut carried = req(0);
    carried.set_deadline(upstream);
    let kept = svc
        .ready()
        .await
        .unwrap()
        .call(carried)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, upstream, "the earlier upstream deadline wins");

    let started = Instant::now();
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(req(5_000))
        .await
        .unwrap_err();
    assert!(error.is::<DeadlineExceeded>());
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_the_deadline_and_never_start_after_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = TimeoutLayer::new(Duration::from_secs(1))
        .within_deadline()
        .layer(worker(calls.clone()));

    let mut short = req(900);
    short.set_deadline(Deadline::after(Duration::from_millis(200)));
    let started = Instant::now();
    let error = svc.ready().await.unwrap().call(short).await.unwrap_err();
    assert!(
        error.is::<DeadlineExceeded>(),
        "the deadline came before the 1 s timeout"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(200));

    let mut expired = req(0);
    expired.set_deadline(Deadline::at(Instant::now()));
    let before = calls.load(Ordering::SeqCst);
    let error = svc.ready().await.unwrap().call(expired).await.unwrap_err();
    assert!(error.is::<DeadlineExceeded>());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "no work started past the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_without_within_deadline_ignores_the_deadline() {
    let mut svc = TimeoutLayer::new(Duration::from_millis(500)).layer(worker(Arc::default()));
    let mut r = req(300);
    r.set_deadline(Deadline::after(Duration::from_millis(100)));
    svc.ready().await.unwrap().call(r).await.unwrap();
}
