//! Every answer the gateway gives itself, as an RFC 9457 problem: no route, a method the
//! document does not list, a caller over its limit, a body too large, an upstream that failed.

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use mainstay_discovery::balance::NoEndpoints;
use mainstay_resilience::http::{append_rate_limit_headers, problem_response};
use mainstay_resilience::rate_limit::error::RateLimited;
use shop_common::Problem;
use tower::BoxError;

use crate::routes::Unrouted;

/// The name of the gateway's rate limit in the `RateLimit` lists.
pub(crate) const GATEWAY_POLICY: &str = "gateway";

/// A request without a route: 404, 405 with `Allow`, or 400.
pub(crate) fn unrouted(unrouted: Unrouted, method: &Method, path: &str) -> Response {
    match unrouted {
        // The gateway's own paths never reach the proxy: as good as unknown to it.
        Unrouted::NotFound | Unrouted::Gateway => {
            Problem::not_found(format!("no route for {path}")).into_response()
        }
        Unrouted::MethodNotAllowed(allowed) => method_not_allowed(method, allowed),
        Unrouted::BadTarget => {
            Problem::bad_request("the request target cannot be forwarded").into_response()
        }
    }
}

/// `405 Method Not Allowed`, with the methods that are (`Allow`).
fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = Problem::new(StatusCode::METHOD_NOT_ALLOWED)
        .detail(format!(
            "{method} is not allowed on this path; allowed: {allow}"
        ))
        .into_response();
    if let Ok(value) = HeaderValue::try_from(allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The gateway's 429: a problem with `Retry-After`, and its limit named as the gateway's.
pub(crate) fn limited(limited: &RateLimited) -> Response {
    let mut response: Response = problem_response(limited);
    let headers = response.headers_mut();
    headers.remove(mainstay_resilience::http::RATELIMIT);
    headers.remove(mainstay_resilience::http::RATELIMIT_POLICY);
    append_rate_limit_headers(GATEWAY_POLICY, &limited.status(), headers);
    response
}

/// 413: the body is over the limit.
pub(crate) fn too_large(limit: usize) -> Response {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .detail(format!("the request body is larger than {limit} bytes"))
        .into_response()
}

/// An upstream failure: 503 when the service has no endpoint or refused locally, 504 on a
/// timeout, 502 otherwise.
pub(crate) fn upstream(service: &str, error: &BoxError) -> Response {
    if error.is::<NoEndpoints>() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail(error.to_string())
            .with("service", service)
            .into_response();
    }
    let response: Response = problem_response(&**error);
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response; // 503 (breaker, bulkhead), 429 or 504 (timeout, deadline)
    }
    tracing::warn!(%service, %error, "upstream failed");
    Problem::new(StatusCode::BAD_GATEWAY)
        .detail(format!("the {service} service failed to answer"))
        .with("service", service)
        .into_response()
}
