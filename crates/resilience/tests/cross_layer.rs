//! The cross-layer rule, end to end in one `ServiceBuilder` stack: local rejections are returned
//! at once, never retried on the same endpoint, never charged to the retry budget, never counted
//! by the breaker, and answered over HTTP with 503/429 and `Retry-After`.
#![cfg(all(
    feature = "circuit-breaker",
    feature = "bulkhead",
    feature = "retry",
    feature = "timeout",
    feature = "rate-limit",
    feature = "http"
))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use mainstay_resilience::ServiceBuilderExt;
use mainstay_resilience::bulkhead::error::Full;
use mainstay_resilience::circuit_breaker::{Breaker, State, error::Open};
use mainstay_resilience::http::{
    DEADLINE_HEADER, HttpRetryPolicy, IDEMPOTENCY_KEY, KeyHonoured, StatusClassifier,
};
use mainstay_resilience::rate_limit::RateLimitLayer;
use mainstay_resilience::retry::{ExponentialBackoff, Jitter, RetryBudget, RetryLayer};
use mainstay_resilience::timeout::error::DeadlineExceeded;
use mainstay_resilience::{BoxError, circuit_breaker::CircuitBreakerLayer};
use tokio::sync::oneshot;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Req = Request<String>;

/// An upstream that answers with the status in the request's URI path (`/503`), counting calls.
fn upstream(
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<String>, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let status: u16 = req
                .uri()
                .path()
                .trim_start_matches('/')
                .parse()
                .unwrap_or(200);
            if status == 0 {
                return Err::<Response<String>, BoxError>("connection reset".into());
            }
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(response)
        }
    })
}

fn get(path: &str) -> Req {
    Request::get(path).body(String::new()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_neither_retried_nor_charged_to_the_budget() {
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = Breaker::builder()
        .count_window(4)
        .minimum_calls(4)
        .open_for(Duration::from_secs(30))
        .build()
        .unwrap();
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
    let backoff = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(10))
        .jitter(Jitter::None);
    let mut client = ServiceBuilder::new()
        // Seen first: the whole request gets 5 s.
        .deadline(Duration::from_secs(5))
        // Budgeted retries of safe requests, outside the breaker.
        .retries(
            RetryLayer::new()
                .policy(HttpRetryPolicy)
                .backoff(backoff)
                .max_attempts(3)
                .budget(budget.clone()),
        )
        // One endpoint's breaker, judging 5xx.
        .layer(CircuitBreakerLayer::new(breaker.clone()).classifier(StatusClassifier))
        .bulkhead(8, Duration::ZERO)
        .attempt_timeout(Duration::from_secs(1))
        .service(upstream(calls.clone()));

    // Two failing requests, each retried once more (budget 100 %: 1 retry per request)...
    for _ in 0..2 {
        let response = client
            .ready()
            .await
            .unwrap()
            .call(get("/503"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4, "2 requests × 2 attempts");
    assert_eq!(breaker.state(), State::Open, "4 of 4 attempts failed");

    // ...now the circuit is open: one attempt, refused locally, no retry, no budget spent.
    let remaining = budget.remaining();
    let started = Instant::now();
    let error = client
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap_err();
    assert!(error.is::<Open>(), "got {error}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the upstream was not called"
    );
    assert_eq!(
        budget.remaining(),
        remaining + 1,
        "the request deposited; nothing was withdrawn"
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff slept for a refused call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_is_not_retried_and_not_counted_by_the_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = Breaker::builder()
        .count_window(2)
        .minimum_calls(1)
        .build()
        .unwrap();
    let gate_calls = calls.clone();
    let gated = service_fn(move |req: (oneshot::Receiver<()>, ())| {
        gate_calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = req.0.await;
            Ok::<_, BoxError>(())
        }
    });
    let client = ServiceBuilder::new()
        .retries(RetryLayer::new().policy(CloneUnit).max_attempts(5))
        .circuit_breaker(breaker.clone())
        .bulkhead(1, Duration::ZERO)
        .service(gated);

    let (_hold, held) = oneshot::channel();
    let mut holder = client.clone();
    // The response future holds the only bulkhead slot from `call` on, polled or not.
    let holding = holder.ready().await.unwrap().call((held, ()));

    let mut other = client.clone();
    let (_tx, rx) = oneshot::channel();
    let error = other
        .ready()
        .await
        .unwrap()
        .call((rx, ()))
        .await
        .unwrap_err();
    assert!(error.is::<Full>(), "got {error}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the holder reached the service"
    );
    assert_eq!(breaker.metrics().calls, 0, "the rejection was not counted");
    assert_eq!(breaker.state(), State::Closed);
    drop(holding);
}

/// Replays `(Receiver, ())` requests with a fresh, already-released gate.
#[derive(Clone)]
struct CloneUnit;

impl mainstay_resilience::retry::Policy<(oneshot::Receiver<()>, ()), (), BoxError> for CloneUnit {
    fn clone_request(
        &self,
        _: &(oneshot::Receiver<()>, ()),
    ) -> Option<(oneshot::Receiver<()>, ())> {
        let (tx, rx) = oneshot::channel();
        tx.send(()).ok();
        Some((rx, ()))
    }
    fn decide(
        &self,
        _: &(oneshot::Receiver<()>, ()),
        result: Result<&(), &BoxError>,
    ) -> mainstay_resilience::retry::Decision {
        match result {
            Ok(()) => mainstay_resilience::retry::Decision::Done,
            Err(_) => mainstay_resilience::retry::Decision::Retry,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn unsafe_requests_are_sent_once_unless_the_server_honours_their_idempotency_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut client = ServiceBuilder::new()
        .retries(RetryLayer::new().policy(HttpRetryPolicy).max_attempts(3))
        .service(upstream(calls.clone()));
    let post = Request::post("/0").body(String::new()).unwrap();
    client.ready().await.unwrap().call(post).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "POST is not replayed");

    let keyed = || {
        Request::builder()
            .method(Method::POST)
            .uri("/0")
            .header(IDEMPOTENCY_KEY, "order-42")
            .body(String::new())
            .unwrap()
    };
    // A key alone proves nothing: a server that ignores it would run the request twice.
    client
        .ready()
        .await
        .unwrap()
        .call(keyed())
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a key alone is not replayed"
    );

    // The caller knows this server honours keys: now it is.
    let mut honoured = keyed();
    honoured.extensions_mut().insert(KeyHonoured);
    client
        .ready()
        .await
        .unwrap()
        .call(honoured)
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2 + 3,
        "with an honoured key it is"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_server_is_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let server = service_fn(move |_: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::new(String::new());
            if n == 0 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
                    .headers_mut()
                    .insert("retry-after", "3".parse().unwrap());
            }
            Ok::<_, BoxError>(response)
        }
    });
    let mut client = ServiceBuilder::new()
        .retries(RetryLayer::new().policy(HttpRetryPolicy))
        .service(server);
    let started = Instant::now();
    let response = client.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn local_rejections_become_problem_responses_with_retry_after() {
    // Rate limited: 429 with Retry-After and the draft's RateLimit headers.
    let mut limited = ServiceBuilder::new()
        .problem_responses()
        .shared_rate_limit(RateLimitLayer::new(1, Duration::from_secs(2)).unwrap())
        .service(upstream(Arc::default()));
    limited
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap();
    let response = limited
        .ready()
        .await
        .unwrap()
        .call(get("/200"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        r#""default";q=1;w=2"#
    );
    assert_eq!(response.headers()["ratelimit"], r#""default";r=0;t=2"#);
    assert!(
        response.body().contains(r#""status":429"#),
        "{}",
        response.body()
    );

    // Open circuit: 503 with the time left open.
    let breaker = Breaker::builder()
        .open_for(Duration::from_secs(7))
        .build()
        .unwrap();
    breaker.trip();
    advance(Duration::from_millis(2_500)).await;
    let mut open = ServiceBuilder::new()
        .problem_responses()
        .circuit_breaker(breaker)
        .service(upstream(Arc::default()));
    let response = open.ready().await.unwrap().call(get("/200")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5", "4.5 s rounded up");

    // Deadline: 504.
    let mut slow = ServiceBuilder::new()
        .problem_responses()
        .deadline(Duration::from_millis(100))
        .service(service_fn(|_: Req| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(Response::new(String::new()))
        }));
    let response = slow.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    // Anything else: 500 without leaking the error's text.
    let mut broken = ServiceBuilder::new()
        .problem_responses()
        .service(upstream(Arc::default()));
    let response = broken.ready().await.unwrap().call(get("/0")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!response.body().contains("connection reset"));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_travels_in_a_header_and_an_expired_one_stops_the_next_hop() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let downstream = service_fn(move |req: Req| {
        *record.lock().unwrap() = req.headers().get(DEADLINE_HEADER).cloned();
        async { Ok::<_, BoxError>(Response::new(String::new())) }
    });
    let mut client = ServiceBuilder::new()
        .deadline(Duration::from_millis(1_500))
        .service(downstream);
    client.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(seen.lock().unwrap().as_ref().unwrap(), "1500");

    // A server receiving `x-request-deadline: 0` does not start the work.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut server = ServiceBuilder::new()
        .attempt_timeout(Duration::from_secs(10))
        .service(upstream(calls.clone()));
    let mut expired = get("/200");
    expired
        .headers_mut()
        .insert(DEADLINE_HEADER, "0".parse().unwrap());
    let error = server
        .ready()
        .await
        .unwrap()
        .call(expired)
        .await
        .unwrap_err();
    assert!(error.is::<DeadlineExceeded>());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A service that answers after `delay`.
fn slow(
    delay: Duration,
) -> impl Service<Req, Response = Response<String>, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |_: Req| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(Response::new(String::from("late")))
    })
}

fn with_deadline(path: &str, millis: u64) -> Req {
    let mut request = get(path);
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, millis.to_string().parse().unwrap());
    request
}

#[tokio::test(start_paused = true)]
async fn a_callers_deadline_running_out_is_not_the_endpoints_failure() {
    let breaker = Breaker::builder()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate(0.5)
        .build()
        .unwrap();
    let mut endpoint = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()).classifier(StatusClassifier))
        .attempt_timeout(Duration::from_millis(500))
        .service(slow(Duration::from_secs(1)));

    // Twenty callers that allowed 10 ms each: their deadlines ran out, the endpoint is fine.
    for _ in 0..20 {
        let error = endpoint
            .ready()
            .await
            .unwrap()
            .call(with_deadline("/", 10))
            .await
            .unwrap_err();
        assert!(error.is::<DeadlineExceeded>());
    }
    assert_eq!(breaker.state(), State::Closed);

    // The endpoint's own slowness (the attempt timeout) still counts.
    for _ in 0..4 {
        let _ = endpoint.ready().await.unwrap().call(get("/")).await;
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_server_says_whose_deadline_ran_out_and_the_caller_believes_it() {
    use mainstay_resilience::circuit_breaker::{Classify, Outcome};
    use mainstay_resilience::http::{ProblemLayer, deadline_ran_out};
    use mainstay_resilience::timeout::DeadlineLayer;

    let mut server = ServiceBuilder::new()
        .layer(ProblemLayer::new())
        .layer(DeadlineLayer::new(Duration::from_millis(300)))
        .attempt_timeout(Duration::from_secs(10))
        .service(slow(Duration::from_secs(1)));

    // The caller allowed 100 ms: its deadline ran out, and the 504 says so.
    let callers = server
        .ready()
        .await
        .unwrap()
        .call(with_deadline("/", 100))
        .await
        .unwrap();
    assert_eq!(callers.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(deadline_ran_out(callers.headers()));
    assert_eq!(
        StatusClassifier.classify(Ok::<_, &BoxError>(&callers)),
        Outcome::Ignore
    );

    // The server's own budget (300 ms, sooner than the caller's 5 s) ran out: its failure.
    let own = server
        .ready()
        .await
        .unwrap()
        .call(with_deadline("/", 5_000))
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!deadline_ran_out(own.headers()));
    assert_eq!(
        StatusClassifier.classify(Ok::<_, &BoxError>(&own)),
        Outcome::Failure
    );
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_upstream_slows_its_callers_down_and_is_never_counted_as_broken() {
    use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd, HttpSampler};
    use mainstay_resilience::circuit_breaker::{Classify, Outcome};
    use mainstay_resilience::http::overloaded;

    // The upstream sheds every call: 503 with Retry-After.
    let shedding = service_fn(|_: Req| async {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert("retry-after", "1".parse().unwrap());
        Ok::<_, BoxError>(response)
    });
    let breaker = Breaker::builder()
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let limit = AdaptiveLimitLayer::new(Aimd::default().initial(20).min(2)).sampler(HttpSampler);
    let mut client = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(CircuitBreakerLayer::new(breaker.clone()).classifier(StatusClassifier))
        .service(shedding);
    for _ in 0..20 {
        let response = client.ready().await.unwrap().call(get("/")).await.unwrap();
        assert!(overloaded(&response));
    }
    // The caller backs off (AIMD: × 0.9 per shed answer) ...
    assert!(limit.limit() < 5, "limit {}", limit.limit());
    // ... and the upstream is not broken: its breaker stays closed.
    assert_eq!(breaker.state(), State::Closed);

    // A 503 without Retry-After is a failure; a 429 is the caller's to slow down for.
    let mut plain = Response::new(String::new());
    *plain.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    assert_eq!(
        StatusClassifier.classify(Ok::<_, &BoxError>(&plain)),
        Outcome::Failure
    );
    *plain.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    assert!(overloaded(&plain));

    // A caller's own deadline running out at the server is no sample for the limit.
    let before = limit.limit();
    let mut client = ServiceBuilder::new()
        .layer(limit.clone())
        .service(service_fn(|_: Req| async {
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            response
                .headers_mut()
                .insert(DEADLINE_HEADER, "0".parse().unwrap());
            Ok::<_, BoxError>(response)
        }));
    for _ in 0..5 {
        client.ready().await.unwrap().call(get("/")).await.unwrap();
    }
    assert_eq!(limit.limit(), before);
}

#[tokio::test(start_paused = true)]
async fn every_response_a_limit_admits_says_what_is_left() {
    use mainstay_resilience::rate_limit::KeyedRateLimitLayer;

    // One limit for all, and one per client: both tell each admitted response.
    let mut global = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(3, Duration::from_secs(6))
                .unwrap()
                .headers(),
        )
        .service(upstream(Arc::default()));
    for left in [2, 1, 0] {
        let response = global
            .ready()
            .await
            .unwrap()
            .call(get("/200"))
            .await
            .unwrap();
        assert_eq!(
            response.headers()["ratelimit-policy"],
            r#""default";q=3;w=6"#
        );
        let state = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!(r#""default";r={left};t="#)),
            "{state}"
        );
    }

    let per_client = KeyedRateLimitLayer::new(2, Duration::from_secs(60), |req: &Req| {
        req.headers()["x-client"].to_str().unwrap().to_owned()
    })
    .unwrap()
    .headers();
    let mut keyed = ServiceBuilder::new()
        .layer(per_client)
        .service(upstream(Arc::default()));
    let mut request = get("/200");
    request
        .headers_mut()
        .insert("x-client", "alice".parse().unwrap());
    let response = keyed.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""default";r=1;t=30"#);
}
