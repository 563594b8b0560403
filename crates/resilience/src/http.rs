//! HTTP integration: safe retries, status-based breaking, deadlines over the wire, and RFC 9457
//! problem responses for local rejections.
//!
//! * `http::Request` implements [`CarriesDeadline`]: the deadline lives in the request's
//!   extensions and is sent to the next hop in the [`DEADLINE_HEADER`] header as the remaining
//!   milliseconds; a server reads it back from the header.
//! * [`HttpRetryPolicy`] (with `retry`) replays only idempotent methods (`GET`, `HEAD`,
//!   `OPTIONS`, `TRACE`, `PUT`, `DELETE`), or requests carrying an `Idempotency-Key` that the
//!   caller knows the server honours ([`KeyHonoured`]), retries `502`, `503`, `504` and `429`,
//!   and waits at least what `Retry-After` asks.
//! * [`StatusClassifier`] (with `circuit-breaker`) counts `5xx` as failures; `4xx` are the
//!   client's mistakes and say nothing about the endpoint.
//! * [`ProblemLayer`] answers what the layers below refused or timed out with an
//!   `application/problem+json` response: `503` (open circuit, full bulkhead) or `429` (rate
//!   limited) with `Retry-After` (and, for rate limits, the draft's `RateLimit` and
//!   `RateLimit-Policy`: see [`set_rate_limit_headers`]), `504` for timeouts and deadlines
//!   (with [`DEADLINE_RAN_OUT`] when the deadline that ran out was the caller's).
//!   Its error type is `Infallible`, so axum needs no `HandleErrorLayer`.
//!
//! # Example
//!
//! ```
//! # #[cfg(all(feature = "bulkhead"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response, StatusCode};
//! use mainstay_resilience::{bulkhead::BulkheadLayer, http::ProblemLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! let mut service = ServiceBuilder::new()
//!     // Seen first: turns rejections from the layers below into responses.
//!     .layer(ProblemLayer::new())
//!     .layer(BulkheadLayer::new(1))
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let busy = service.ready().await.unwrap().call(Request::new(String::new()));
//! let refused = service.ready().await.unwrap().call(Request::new(String::new())).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(refused.headers()["content-type"], "application/problem+json");
//! assert_eq!(busy.await.unwrap().status(), StatusCode::OK);
//! # }
//! # #[cfg(not(feature = "bulkhead"))]
//! # fn main() {}
//! ```

use std::convert::Infallible;
#[cfg(feature = "rate-limit")]
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::deadline::{CarriesDeadline, Deadline};
use crate::rejection::{RejectionKind, local_rejection};

/// The header a deadline travels in: the milliseconds left when the request was sent.
pub const DEADLINE_HEADER: HeaderName = HeaderName::from_static("x-request-deadline");

/// The value of [`DEADLINE_HEADER`] on a `504` response that says the deadline the caller sent
/// ran out: the caller's budget was spent, the server did not fail. [`ProblemLayer`] sets it,
/// and [`StatusClassifier`] (like mainstay-discovery's outlier detection) does not count such
/// a response against the endpoint.
pub const DEADLINE_RAN_OUT: HeaderValue = HeaderValue::from_static("0");

/// Whether a response's headers say the caller's own deadline ran out (see
/// [`DEADLINE_RAN_OUT`]).
#[must_use]
pub fn deadline_ran_out(headers: &HeaderMap) -> bool {
    headers.get(&DEADLINE_HEADER) == Some(&DEADLINE_RAN_OUT)
}

/// Whether a response is an overloaded server asking its callers to back off: `429`, or `503`
/// with `Retry-After` (RFC 9110 §15.6.4: the service is temporarily unable to answer, and says
/// when to come back). Such an answer is a reason to slow down (an adaptive limit, the retry
/// budget, the wait it names), not evidence of a broken endpoint: [`StatusClassifier`] and
/// mainstay-discovery's outlier detection do not count it, so that a flash crowd never takes
/// a healthy but busy service out of rotation. A `503` without `Retry-After` is a failure.
#[must_use]
pub fn overloaded<B>(response: &Response<B>) -> bool {
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::SERVICE_UNAVAILABLE => response.headers().contains_key(RETRY_AFTER),
        _ => false,
    }
}

/// The header that makes a non-idempotent request safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl<B> CarriesDeadline for Request<B> {
    fn deadline(&self) -> Option<Deadline> {
        if let Some(deadline) = self.extensions().get::<Deadline>() {
            return Some(*deadline);
        }
        let millis: u64 = self
            .headers()
            .get(&DEADLINE_HEADER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Deadline::after(Duration::from_millis(millis)))
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        self.extensions_mut().insert(deadline);
        let millis = u64::try_from(deadline.remaining().as_millis()).unwrap_or(u64::MAX);
        self.headers_mut()
            .insert(DEADLINE_HEADER, HeaderValue::from(millis));
    }
}

/// `Retry-After` as a duration from now: delta-seconds or an HTTP date.
#[must_use]
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A request extension: the server this request goes to honours its `Idempotency-Key` (it
/// answers a repeated key with the first answer instead of running the request again), so the
/// request may be sent twice. A key alone proves nothing: a server that ignores it would run a
/// retried `POST` twice.
///
/// ```
/// use http::Request;
/// use mainstay_resilience::http::{IDEMPOTENCY_KEY, KeyHonoured, is_replay_safe};
///
/// let mut order = Request::post("/orders").header(IDEMPOTENCY_KEY, "order-42").body(()).unwrap();
/// assert!(!is_replay_safe(&order));
/// order.extensions_mut().insert(KeyHonoured);
/// assert!(is_replay_safe(&order));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyHonoured;

/// Whether an HTTP request may be sent twice: an idempotent method, or an `Idempotency-Key`
/// that the server honours ([`KeyHonoured`]).
#[must_use]
pub fn is_replay_safe<B>(request: &Request<B>) -> bool {
    request.method().is_idempotent()
        || (request.headers().contains_key(&IDEMPOTENCY_KEY)
            && request.extensions().get::<KeyHonoured>().is_some())
}

#[cfg(feature = "retry")]
pub use self::retry_policy::HttpRetryPolicy;

#[cfg(feature = "retry")]
mod retry_policy {
    use http::{Request, Response, StatusCode};

    use super::{is_replay_safe, retry_after};
    use crate::deadline::{CarriesDeadline, Deadline};
    use crate::retry::{Decision, Policy};

    /// Retries idempotent HTTP requests (or ones with an `Idempotency-Key` the server honours,
    /// see [`KeyHonoured`](super::KeyHonoured)) on transport errors and on `502`, `503`, `504`
    /// and `429`, waiting at least what `Retry-After` asks.
    ///
    /// The request body must be `Clone` (for example `Full<Bytes>` or `String`); a request that
    /// is not safe to replay is sent once.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpRetryPolicy;

    impl<B: Clone, ResB, E> Policy<Request<B>, Response<ResB>, E> for HttpRetryPolicy {
        fn clone_request(&self, request: &Request<B>) -> Option<Request<B>> {
            is_replay_safe(request).then(|| request.clone())
        }

        fn decide(&self, _: &Request<B>, result: Result<&Response<ResB>, &E>) -> Decision {
            let Ok(response) = result else {
                return Decision::Retry;
            };
            match response.status() {
                StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS => {
                    retry_after(response.headers()).map_or(Decision::Retry, Decision::RetryAfter)
                }
                _ => Decision::Done,
            }
        }

        fn deadline(&self, request: &Request<B>) -> Option<Deadline> {
            request.deadline()
        }
    }
}

#[cfg(feature = "circuit-breaker")]
pub use self::classifier::{BrokenOnly, StatusClassifier};

#[cfg(feature = "circuit-breaker")]
mod classifier {
    use http::Response;

    use crate::circuit_breaker::{Classify, DefaultClassifier, Outcome};

    /// Counts `5xx` responses and errors as failures, ignores local rejections from layers below
    /// and deadlines that ran out (as [`DefaultClassifier`] does), `504`s that say the caller's
    /// deadline ran out ([`super::DEADLINE_RAN_OUT`]) and an overloaded server's requests to
    /// back off ([`super::overloaded`]), and counts everything else as a success.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct StatusClassifier;

    impl<B, E: 'static> Classify<Response<B>, E> for StatusClassifier {
        fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
            match result {
                Ok(response)
                    if super::deadline_ran_out(response.headers())
                        || super::overloaded(response) =>
                {
                    Outcome::Ignore
                }
                Ok(response) if response.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(e) => Classify::<Response<B>, E>::classify(&DefaultClassifier, Err(e)),
            }
        }
    }

    /// Counts only what says an endpoint is **broken**: transport errors (refused, reset) and
    /// `5xx` answers, but not an overloaded server's request to back off
    /// ([`super::overloaded`]), a caller's deadline running out, a timeout, or a local
    /// rejection from below.
    ///
    /// For a breaker per endpoint under a balancer that weighs latency (p2c on PeakEWMA) and an
    /// adaptive limit that backs off on slowness: a slow endpoint is then avoided and sent less,
    /// and a busy one under a flash crowd is never cut off for being busy. A hung endpoint
    /// still loses its traffic to the balancer's latency estimate. With `timeout` off, as
    /// [`StatusClassifier`] but for the overload answers.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct BrokenOnly;

    impl<B, E: 'static> Classify<Response<B>, E> for BrokenOnly {
        fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
            match result {
                #[cfg(feature = "timeout")]
                Err(e) if crate::timeout::error::timed_out(e) => Outcome::Ignore,
                other => StatusClassifier.classify(other),
            }
        }
    }
}

/// Turns errors of the layers below into `application/problem+json` responses; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct ProblemLayer {
    other: StatusCode,
}

impl ProblemLayer {
    /// Errors that are not rejections or timeouts become `500 Internal Server Error`, with no
    /// detail (the error's text may hold internals).
    #[must_use]
    pub fn new() -> Self {
        Self {
            other: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The status for other errors: `502 Bad Gateway` suits a client stack, where they are the
    /// upstream's failures.
    #[must_use]
    pub fn other_errors(mut self, status: StatusCode) -> Self {
        self.other = status;
        self
    }
}

impl Default for ProblemLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ProblemLayer {
    type Service = Problem<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Problem {
            inner,
            other: self.other,
            ready_error: None,
        }
    }
}

/// Middleware made by [`ProblemLayer`].
#[derive(Debug)]
pub struct Problem<S> {
    inner: S,
    other: StatusCode,
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for Problem<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            other: self.other,
            ready_error: None,
        }
    }
}

impl<S, Req, B> Service<Req> for Problem<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: From<String>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ProblemFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_none()
            && let Err(e) = ready!(self.inner.poll_ready(cx))
        {
            // Answered by `call`, which is where a response can be returned.
            self.ready_error = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.ready_error.take() {
            Some(error) => ProblemFuture {
                inner: None,
                error: Some(error),
                other: self.other,
            },
            None => ProblemFuture {
                inner: Some(self.inner.call(request)),
                error: None,
                other: self.other,
            },
        }
    }
}

pin_project! {
    /// Response future of [`Problem`].
    #[derive(Debug)]
    pub struct ProblemFuture<F> {
        #[pin]
        inner: Option<F>,
        error: Option<BoxError>,
        other: StatusCode,
    }
}

impl<F, B, E> Future for ProblemFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: From<String>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match this.inner.as_pin_mut() {
            Some(inner) => match ready!(inner.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(e) => e.into(),
            },
            None => this
                .error
                .take()
                .unwrap_or_else(|| "problem future polled after completion".into()),
        };
        Poll::Ready(Ok(problem_for(&*error, *this.other)))
    }
}

/// The response [`ProblemLayer`] gives for `error`: 429 or 503 with `Retry-After` (and
/// `RateLimit-*` for rate limits) for local rejections, 504 for timeouts, 500 otherwise. For
/// handlers that consult a limiter or breaker themselves, such as a login form limited per
/// account.
///
/// ```
/// use std::time::Duration;
/// use mainstay_resilience::http::problem_response;
/// use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let per_account = KeyedRateLimitLayer::<(), String>::new(1, Duration::from_secs(60), ()).unwrap();
/// per_account.check(&"alice".to_owned()).unwrap();
/// let limited = per_account.check(&"alice".to_owned()).unwrap_err();
/// let response: http::Response<String> = problem_response(&limited);
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["retry-after"], "60");
/// # }
/// ```
#[must_use]
pub fn problem_response<B: From<String>>(error: &(dyn std::error::Error + 'static)) -> Response<B> {
    problem_for(error, StatusCode::INTERNAL_SERVER_ERROR)
}

/// The problem response for an error of the layers below.
fn problem_for<B: From<String>>(
    error: &(dyn std::error::Error + 'static),
    other: StatusCode,
) -> Response<B> {
    if let Some(rejection) = local_rejection(error) {
        let (status, detail) = match rejection.kind {
            RejectionKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"),
            RejectionKind::BulkheadFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight",
            ),
            RejectionKind::Shed => (StatusCode::SERVICE_UNAVAILABLE, "overloaded: request shed"),
            RejectionKind::NoEndpoint => {
                (StatusCode::SERVICE_UNAVAILABLE, "no endpoint is available")
            }
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream temporarily unavailable (circuit open)",
            ),
        };
        let mut response = problem(status, detail);
        if let Some(wait) = rejection.retry_after {
            // Whole seconds, rounded up: a client must not come back early.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        #[cfg(feature = "rate-limit")]
        rate_limit_headers(error, response.headers_mut());
        return response;
    }
    if is_timeout(error) {
        let mut response = problem(
            StatusCode::GATEWAY_TIMEOUT,
            "the request did not complete in time",
        );
        if crate::deadline::deadline_exceeded(error).is_some_and(|e| e.by_caller()) {
            response
                .headers_mut()
                .insert(DEADLINE_HEADER, DEADLINE_RAN_OUT);
        }
        return response;
    }
    problem(other, other.canonical_reason().unwrap_or("error"))
}

#[cfg(feature = "rate-limit")]
fn rate_limit_headers(error: &(dyn std::error::Error + 'static), headers: &mut HeaderMap) {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(limited) = e.downcast_ref::<crate::rate_limit::error::RateLimited>() {
            set_rate_limit_headers(&limited.status(), headers);
            return;
        }
        current = e.source();
    }
}

/// `RateLimit-Policy`, the policy: its quota and window.
#[cfg(feature = "rate-limit")]
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit`, the policy's state now: what remains, and when it is full again.
#[cfg(feature = "rate-limit")]
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Sets the `RateLimit-Policy` and `RateLimit` headers of the IETF draft *RateLimit header
/// fields for HTTP* (draft-ietf-httpapi-ratelimit-headers-09) for a limit's [`Status`]:
///
/// ```text
/// RateLimit-Policy: "default";q=20;w=1      20 calls (the burst) per window of 1 s
/// RateLimit: "default";r=17;t=1             17 left now; full again in 1 s (rounded up)
/// ```
///
/// `t` is what the draft calls the reset: the seconds until the quota is whole again. A
/// server sends both on every response its limit admitted or refused.
///
/// [`Status`]: crate::rate_limit::Status
///
/// ```
/// use std::time::Duration;
/// use mainstay_resilience::http::set_rate_limit_headers;
/// use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let per_client = KeyedRateLimitLayer::<(), u32>::new(20, Duration::from_secs(1), ()).unwrap();
/// let status = per_client.check(&7).unwrap();
/// let mut headers = http::HeaderMap::new();
/// set_rate_limit_headers(&status, &mut headers);
/// assert_eq!(headers["ratelimit-policy"], r#""default";q=20;w=1"#);
/// assert_eq!(headers["ratelimit"], r#""default";r=19;t=1"#);
/// # }
/// ```
#[cfg(feature = "rate-limit")]
pub fn set_rate_limit_headers(status: &crate::rate_limit::Status, headers: &mut HeaderMap) {
    headers.remove(RATELIMIT_POLICY);
    headers.remove(RATELIMIT);
    append_rate_limit_headers("default", status, headers);
}

/// Adds the policy named `policy` to the `RateLimit-Policy` and `RateLimit` lists already in
/// `headers` (or starts them), so that a client sees every limit that applies, as the draft
/// intends: a proxy reports its own limit beside the one its upstream reported. Nothing is
/// added when the lists already name `policy`, or when `policy` is not a plain name
/// (printable ASCII without `"` or `\`).
///
/// ```
/// use std::time::Duration;
/// use mainstay_resilience::http::{append_rate_limit_headers, set_rate_limit_headers};
/// use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstream = KeyedRateLimitLayer::<(), u32>::new(5, Duration::from_secs(900), ()).unwrap();
/// let proxy = KeyedRateLimitLayer::<(), u32>::new(60, Duration::from_secs(60), ()).unwrap();
/// let mut headers = http::HeaderMap::new();
/// set_rate_limit_headers(&upstream.check(&7).unwrap(), &mut headers);
/// append_rate_limit_headers("gateway", &proxy.check(&7).unwrap(), &mut headers);
/// assert_eq!(
///     headers["ratelimit-policy"],
///     r#""default";q=5;w=900, "gateway";q=60;w=60"#
/// );
/// assert_eq!(headers["ratelimit"], r#""default";r=4;t=180, "gateway";r=59;t=1"#);
/// # }
/// ```
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub fn append_rate_limit_headers(
    policy: &str,
    status: &crate::rate_limit::Status,
    headers: &mut HeaderMap,
) {
    let plain = !policy.is_empty()
        && policy
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if !plain {
        return;
    }
    let ceil_secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    // One field line per list: the members already there (from any number of lines), then
    // this one, written into one buffer with no formatting machinery (this runs on every
    // response); nothing is written when either list already names the policy.
    let line = |name: &HeaderName, (first, a): (u8, u64), (second, b): (u8, u64)| {
        let mut list: Vec<u8> = Vec::with_capacity(policy.len() + 48);
        for existing in headers.get_all(name) {
            if names_policy(existing.as_bytes(), policy.as_bytes()) {
                return None;
            }
            list.extend_from_slice(existing.as_bytes());
            list.extend_from_slice(b", ");
        }
        list.push(b'"');
        list.extend_from_slice(policy.as_bytes());
        list.extend_from_slice(&[b'"', b';', first, b'=']);
        push_decimal(&mut list, a);
        list.extend_from_slice(&[b';', second, b'=']);
        push_decimal(&mut list, b);
        // Exactly sized, the buffer becomes the value's without a copy or a shared header.
        HeaderValue::try_from(list.into_boxed_slice().into_vec()).ok()
    };
    let policy_line = line(
        &RATELIMIT_POLICY,
        (b'q', u64::from(status.limit)),
        (b'w', ceil_secs(status.period).max(1)),
    );
    let Some(limit_line) = line(
        &RATELIMIT,
        (b'r', u64::from(status.remaining)),
        (b't', ceil_secs(status.reset)),
    ) else {
        return;
    };
    if let Some(policy_line) = policy_line {
        headers.insert(RATELIMIT_POLICY, policy_line);
        headers.insert(RATELIMIT, limit_line);
    }
}

/// Appends `n` in decimal.
#[cfg(feature = "rate-limit")]
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // Lossless: a digit.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        digits[start] = b'0' + digit;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Whether a `RateLimit` or `RateLimit-Policy` list has a member named `policy`.
#[cfg(feature = "rate-limit")]
fn names_policy(list: &[u8], policy: &[u8]) -> bool {
    list.split(|b| *b == b',').any(|member| {
        let member = member.trim_ascii_start();
        member.first() == Some(&b'"')
            && member[1..].starts_with(policy)
            && member[1 + policy.len()..].starts_with(b"\";")
    })
}

#[allow(unused_variables)]
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    #[cfg(feature = "timeout")]
    return crate::timeout::error::is_timeout(error);
    #[cfg(not(feature = "timeout"))]
    false
}

/// An RFC 9457 problem response with `type: about:blank`, the status's title and `detail`.
fn problem<B: From<String>>(status: StatusCode, detail: &str) -> Response<B> {
    mainstay_problem::Problem::new(status)
        .detail(detail)
        .to_response()
}

#[cfg(all(test, feature = "rate-limit"))]
mod tests {
    use super::*;
    use crate::rate_limit::Status;

    fn status(limit: u32, remaining: u32, reset_ms: u64) -> Status {
        Status {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
            period: Duration::from_secs(60),
        }
    }

    #[test]
    fn numbers_are_written_in_decimal_at_both_ends_of_their_range() {
        for n in [0, 7, 10, 1_234_567, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn a_policy_is_added_once_to_every_line_and_never_twice() {
        let mut headers = HeaderMap::new();
        headers.append(RATELIMIT, HeaderValue::from_static(r#""a";r=1;t=1"#));
        headers.append(RATELIMIT, HeaderValue::from_static(r#""b";r=2;t=2"#));
        append_rate_limit_headers("gw", &status(60, 0, 1_500), &mut headers);
        assert_eq!(
            headers.get_all(RATELIMIT).iter().collect::<Vec<_>>(),
            [r#""a";r=1;t=1, "b";r=2;t=2, "gw";r=0;t=2"#]
        );
        assert_eq!(headers[RATELIMIT_POLICY], r#""gw";q=60;w=60"#);

        // Named already in either list: neither list changes.
        let before = headers.clone();
        append_rate_limit_headers("gw", &status(60, 59, 0), &mut headers);
        assert_eq!(headers, before);
        let mut named_in_policy = HeaderMap::new();
        named_in_policy.insert(RATELIMIT_POLICY, HeaderValue::from_static(r#""gw";q=1"#));
        append_rate_limit_headers("gw", &status(60, 59, 0), &mut named_in_policy);
        assert!(named_in_policy.get(RATELIMIT).is_none());
        assert_eq!(named_in_policy.len(), 1);
    }
}
