//! The balancer over in-process endpoints, on paused time: spreading, following the source,
//! outlier ejection and readmission with back-off, the breaker link, the ejection cap, and the
//! error for a service with no endpoint.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_discovery::balance::{
    BalanceOptions, Balanced, Ejected, ErrorsFail, NoEndpoints, OutlierOptions, Shared,
};
use mainstay_discovery::{Endpoint, Snapshot};
use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer};
use mainstay_resilience::rejection::{RejectionKind, local_rejection};
use tokio::sync::watch;
use tower::util::BoxService;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// Which endpoints fail their calls.
type Down = Arc<Mutex<HashSet<String>>>;

fn endpoint(port: u16) -> Endpoint {
    Endpoint::new("10.0.0.1", port)
}

fn snapshot(ports: &[u16]) -> Snapshot {
    Snapshot {
        endpoints: Arc::new(ports.iter().map(|p| endpoint(*p)).collect()),
        fresh: true,
    }
}

/// An endpoint service that answers with its id, or fails while it is down.
fn make(down: &Down) -> impl FnMut(&Endpoint) -> BoxService<(), String, BoxError> + use<> {
    let down = Arc::clone(down);
    move |endpoint: &Endpoint| {
        let id = endpoint.id.clone();
        let down = Arc::clone(&down);
        BoxService::new(service_fn(move |()| {
            let failing = down.lock().unwrap().contains(&id);
            let id = id.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if failing {
                    Err::<String, BoxError>(format!("{id} refused the connection").into())
                } else {
                    Ok(id)
                }
            }
        }))
    }
}

fn options(consecutive_failures: u32) -> BalanceOptions {
    BalanceOptions {
        // Every endpoint answers in 1 ms (of paused time); a readmitted endpoint must start
        // level with the others, or PeakEWMA would not pick it while they are faster.
        default_rtt: Duration::from_millis(1),
        outlier: OutlierOptions {
            consecutive_failures,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        },
        ..BalanceOptions::default()
    }
}

async fn call<S>(service: &mut S) -> Result<String, BoxError>
where
    S: Service<(), Response = String, Error = BoxError>,
{
    service.ready().await?.call(()).await
}

/// Answers of `n` calls, by endpoint id; failures under `"error"`.
async fn spread<S>(service: &mut S, n: usize) -> BTreeMap<String, usize>
where
    S: Service<(), Response = String, Error = BoxError>,
{
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = call(service).await.unwrap_or_else(|_| "error".to_owned());
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn calls_spread_over_every_endpoint_and_follow_the_source() {
    let down = Down::default();
    let (source, receiver) = watch::channel(snapshot(&[1, 2, 3]));
    let mut service = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(5));

    let counts = spread(&mut service, 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n >= 50), "uneven: {counts:?}");

    source.send(snapshot(&[2, 3, 4])).unwrap();
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 300).await;
    assert!(
        !counts.contains_key("10.0.0.1:1"),
        "a removed endpoint was called: {counts:?}"
    );
    assert!(
        counts["10.0.0.1:4"] >= 50,
        "an added endpoint got little: {counts:?}"
    );
    assert_eq!(service.endpoints(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_service_with_no_endpoint_fails_at_once_naming_it() {
    let down = Down::default();
    let (source, receiver) = watch::channel(Snapshot::default());
    let mut service = Balanced::new("carts", receiver, make(&down), ErrorsFail, options(5));

    let error = call(&mut service).await.unwrap_err();
    let none = error.downcast_ref::<NoEndpoints>().expect("NoEndpoints");
    assert_eq!(&*none.service, "carts");
    assert_eq!(error.to_string(), "no healthy endpoint for service `carts`");
    // A local rejection: retry layers stop, problem layers answer 503.
    let rejection = local_rejection(&*error).expect("a local rejection");
    assert_eq!(rejection.kind, RejectionKind::NoEndpoint);

    // And it recovers when an endpoint appears.
    source.send(snapshot(&[7])).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(call(&mut service).await.unwrap(), "10.0.0.1:7");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_in_a_row_is_ejected_then_readmitted_with_growing_back_off() {
    let down = Down::default();
    let (_source, receiver) = watch::channel(snapshot(&[1, 2, 3]));
    let mut service = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(3));
    down.lock().unwrap().insert("10.0.0.1:2".to_owned());

    // Three failures in a row eject it: from then on every call succeeds.
    let mut failures = 0;
    for _ in 0..100 {
        if call(&mut service).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "the endpoint was not ejected after 3 failures");
    assert_eq!(service.endpoints(), 2);
    let counts = spread(&mut service, 100).await;
    assert!(!counts.contains_key("10.0.0.1:2") && !counts.contains_key("error"));

    // Readmitted after the base ejection (10 s); still down, ejected again for twice as long.
    tokio::time::advance(Duration::from_millis(10_001)).await;
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 100).await;
    assert_eq!(counts.get("error"), Some(&3), "not readmitted: {counts:?}");
    assert_eq!(service.endpoints(), 2);
    tokio::time::advance(Duration::from_millis(10_001)).await;
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 100).await;
    assert_eq!(
        counts.len(),
        2,
        "the second ejection lasted only the base period: {counts:?}"
    );

    // Back up by the end of the second ejection: it takes traffic again.
    tokio::time::advance(Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    down.lock().unwrap().clear();
    let counts = spread(&mut service, 300).await;
    assert!(counts["10.0.0.1:2"] >= 50, "{counts:?}");
    assert!(!counts.contains_key("error"));
    assert_eq!(service.endpoints(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_ejection_ends_on_its_own_timer_not_on_an_earlier_ones() {
    let down = Down::default();
    let (source, receiver) = watch::channel(snapshot(&[1, 2, 3]));
    let mut service = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(3));
    down.lock().unwrap().insert("10.0.0.1:2".to_owned());
    spread(&mut service, 20).await;
    assert_eq!(service.endpoints(), 2, "ejected at 0 s, for 10 s");

    // It leaves the registry and comes back, still failing: a new ejection, at 6 s, for 10 s.
    tokio::time::advance(Duration::from_secs(5)).await;
    source.send(snapshot(&[1, 3])).unwrap();
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    source.send(snapshot(&[1, 2, 3])).unwrap();
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 50).await;
    assert_eq!(counts.get("error"), Some(&3), "{counts:?}");
    assert_eq!(service.endpoints(), 2);

    // The first ejection's timer (10 s) ends nothing: the second runs to 16 s.
    tokio::time::advance(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 50).await;
    assert!(
        !counts.contains_key("error"),
        "readmitted early: {counts:?}"
    );
    assert_eq!(service.endpoints(), 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    down.lock().unwrap().clear();
    spread(&mut service, 50).await;
    assert_eq!(service.endpoints(), 3);
}

#[tokio::test(start_paused = true)]
async fn failures_that_are_not_in_a_row_eject_nothing() {
    let down = Down::default();
    let (_source, receiver) = watch::channel(snapshot(&[1]));
    let mut service = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(3));
    for _ in 0..10 {
        down.lock().unwrap().insert("10.0.0.1:1".to_owned());
        assert!(call(&mut service).await.is_err());
        assert!(call(&mut service).await.is_err());
        down.lock().unwrap().clear();
        assert!(call(&mut service).await.is_ok());
    }
    assert_eq!(service.endpoints(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_cap_is_ejected_and_never_the_last_endpoint() {
    let down = Down::default();
    let (_source, receiver) = watch::channel(snapshot(&[1, 2]));
    let mut service = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(2));
    down.lock()
        .unwrap()
        .extend(["10.0.0.1:1".to_owned(), "10.0.0.1:2".to_owned()]);
    spread(&mut service, 50).await;
    assert_eq!(service.endpoints(), 1, "50 % of two endpoints is one");

    // A single endpoint is never ejected, however it fails: its callers see its own errors,
    // and it answers again as soon as it can.
    let (_source, receiver) = watch::channel(snapshot(&[1]));
    let mut single = Balanced::new("catalog", receiver, make(&down), ErrorsFail, options(2));
    let counts = spread(&mut single, 20).await;
    assert_eq!(counts.get("error"), Some(&20));
    assert_eq!(single.endpoints(), 1);
    let error = call(&mut single).await.unwrap_err();
    assert!(!error.is::<NoEndpoints>(), "{error}");
    down.lock().unwrap().clear();
    assert_eq!(call(&mut single).await.unwrap(), "10.0.0.1:1");
}

#[tokio::test(start_paused = true)]
async fn the_last_endpoints_open_breaker_refuses_locally_and_is_not_ejected() {
    let (_source, receiver) = watch::channel(snapshot(&[1]));
    let breaker = Breaker::builder().build().unwrap();
    let handle = breaker.clone();
    let make =
        move |_: &Endpoint| {
            BoxService::new(CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(
                |()| async { Ok::<_, BoxError>("served".to_owned()) },
            )))
        };
    let mut service = Balanced::new("catalog", receiver, make, ErrorsFail, options(5));
    handle.force_open();
    // The refusal stays a local rejection (a 503 with Retry-After for an HTTP caller, and no
    // retry), not an ejection that would leave the service with nothing.
    let error = call(&mut service).await.unwrap_err();
    assert_eq!(
        local_rejection(&*error).map(|r| r.kind),
        Some(RejectionKind::CircuitOpen),
        "{error}"
    );
    assert_eq!(service.endpoints(), 1);
    handle.reset();
    assert_eq!(call(&mut service).await.unwrap(), "served");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_ejects_its_endpoint_at_once_with_a_retryable_error() {
    let (_source, receiver) = watch::channel(snapshot(&[1, 2]));
    let breakers: Arc<Mutex<BTreeMap<String, Breaker>>> = Arc::default();
    let made = Arc::clone(&breakers);
    let down = Down::default();
    let mut inner = make(&down);
    let make = move |endpoint: &Endpoint| {
        let breaker = Breaker::builder().build().unwrap();
        made.lock()
            .unwrap()
            .insert(endpoint.id.clone(), breaker.clone());
        BoxService::new(CircuitBreakerLayer::new(breaker).layer(inner(endpoint)))
    };
    let mut service = Balanced::new("catalog", receiver, make, ErrorsFail, options(5));
    call(&mut service).await.unwrap(); // makes both endpoint services
    breakers.lock().unwrap()["10.0.0.1:1"].force_open();

    let mut errors = Vec::new();
    for _ in 0..50 {
        if let Err(error) = call(&mut service).await {
            errors.push(error);
        }
    }
    assert_eq!(errors.len(), 1, "exactly one call meets the open breaker");
    for error in &errors {
        let ejected = error.downcast_ref::<Ejected>().expect("Ejected");
        assert_eq!(ejected.endpoint, "10.0.0.1:1");
        assert!(
            local_rejection(&**error).is_none(),
            "an ejection must not read as a local rejection, or retries would stop"
        );
    }
    assert_eq!(service.endpoints(), 1);

    // Readmitted with a fresh service (and breaker) after the ejection.
    tokio::time::advance(Duration::from_millis(10_001)).await;
    tokio::task::yield_now().await;
    let counts = spread(&mut service, 200).await;
    assert!(counts["10.0.0.1:1"] >= 30, "{counts:?}");
}

/// An endpoint that answers with its id after 1 ms of real time, as a real one would. Answered
/// at once, the endpoints first tried would measure microseconds against the untried one's
/// 1 ms `default_rtt`, and PeakEWMA would leave that one alone until its estimate decayed
/// (seconds): the test would then see two endpoints of three, now and then.
fn answering_in_a_millisecond(endpoint: &Endpoint) -> BoxService<(), String, BoxError> {
    let id = endpoint.id.clone();
    BoxService::new(service_fn(move |()| {
        let id = id.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<_, BoxError>(id)
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_balancer_serves_many_concurrent_callers() {
    let (_source, receiver) = watch::channel(snapshot(&[1, 2, 3]));
    // Boxed as the gateway boxes it: futures that hold the balancer are only provably `Send`
    // once erased (rust#64552).
    let shared = tower::util::BoxCloneSyncService::new(Shared::new(Balanced::new(
        "catalog",
        receiver,
        answering_in_a_millisecond,
        ErrorsFail,
        options(5),
    )));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let shared = shared.clone();
        callers.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..50 {
                answers.push(shared.clone().oneshot(()).await.unwrap());
            }
            answers
        });
    }
    let mut counts = BTreeMap::<String, usize>::new();
    for answers in callers.join_all().await {
        for answer in answers {
            *counts.entry(answer).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), 32 * 50);
    assert_eq!(counts.len(), 3, "{counts:?}");
}

/// Ready only once `open` is set, and never wakes anyone: the worst case for a waiting call.
#[derive(Clone)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<()> for Gate {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok("through"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_shared_call_waiting_for_readiness_looks_again_without_a_wake_up() {
    let gate = Gate {
        open: Arc::default(),
    };
    let shared = Shared::new(gate.clone()).repoll(Duration::from_millis(1));
    let waiting = tokio::spawn(shared.oneshot(()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiting.is_finished());
    gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = tokio::time::timeout(Duration::from_millis(5), waiting)
        .await
        .expect("the waiting call never looked again")
        .unwrap()
        .unwrap();
    assert_eq!(answer, "through");
}

#[tokio::test(start_paused = true)]
async fn a_callers_deadline_running_out_ejects_nothing() {
    use mainstay_discovery::balance::HttpStatus;
    use mainstay_resilience::deadline::DeadlineExceeded;
    use mainstay_resilience::http::{DEADLINE_HEADER, DEADLINE_RAN_OUT};

    // Every call runs out of its deadline below the balancer.
    let (_source, receiver) = watch::channel(snapshot(&[1]));
    let expiring = |_: &Endpoint| {
        BoxService::new(service_fn(|()| async {
            Err::<String, BoxError>(Box::new(DeadlineExceeded::default()))
        }))
    };
    let mut service = Balanced::new("catalog", receiver, expiring, ErrorsFail, options(3));
    for _ in 0..20 {
        let error = call(&mut service).await.unwrap_err();
        assert!(error.is::<DeadlineExceeded>(), "{error}");
    }
    assert_eq!(service.endpoints(), 1);

    // Over HTTP: a 504 that says the caller's deadline ran out is ignored; another 504 is the
    // endpoint's failure.
    let (_source, receiver) = watch::channel(snapshot(&[1, 2]));
    let marked = Arc::new(Mutex::new(true));
    let mark = Arc::clone(&marked);
    let timing_out = move |_: &Endpoint| {
        let mark = Arc::clone(&mark);
        BoxService::new(service_fn(move |()| {
            let mut response = http::Response::new(());
            *response.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
            if *mark.lock().unwrap() {
                response
                    .headers_mut()
                    .insert(DEADLINE_HEADER, DEADLINE_RAN_OUT);
            }
            async move { Ok::<_, BoxError>(response) }
        }))
    };
    let mut service = Balanced::new("catalog", receiver, timing_out, HttpStatus, options(3));
    for _ in 0..20 {
        let response = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(service.endpoints(), 2);
    *marked.lock().unwrap() = false;
    for _ in 0..6 {
        let _ = service.ready().await.unwrap().call(()).await;
    }
    let _ = service.ready().await.unwrap();
    assert_eq!(
        service.endpoints(),
        1,
        "an endpoint answering plain 504s was not ejected"
    );
}
