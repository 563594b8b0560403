//! Rate limiting with GCRA (the `governor` crate), globally or per key.
//!
//! [`RateLimitLayer`] enforces one limit across every service it makes and every clone of those
//! services: the limiter lives in the layer, not in each service (tower's `RateLimit` keeps
//! per-instance state, so under axum, which clones services per request, it limits nothing).
//! [`KeyedRateLimitLayer`] keeps one limit per key (user, API key, client IP), with memory
//! bounded by configuration (see [`crate::keyed`]).
//!
//! A refused call fails at once with [`error::RateLimited`], a local rejection that says when to
//! come back; with the `http` feature [`crate::http::ProblemLayer`] turns it into `429 Too Many
//! Requests` with `Retry-After` and the `RateLimit` and `RateLimit-Policy` headers of the IETF
//! draft. With `headers()` on either layer (feature `http`), every response it admits carries
//! them too; a handler that checks a limit itself ([`KeyedRateLimitLayer::check`]) gets the
//! limit's [`Status`] to send the same headers.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::rate_limit::{RateLimitLayer, error::RateLimited};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Bursts of 2, refilled at 2 per second.
//! let limit = RateLimitLayer::new(2, Duration::from_secs(1)).unwrap();
//! let mut service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|()| async { Ok::<_, std::convert::Infallible>("ok") }));
//!
//! service.ready().await.unwrap().call(()).await.unwrap();
//! service.ready().await.unwrap().call(()).await.unwrap();
//! let refused = service.ready().await.unwrap().call(()).await.unwrap_err();
//! let limited = refused.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(limited.retry_after(), Duration::from_millis(500));
//! # }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::time::Duration;

pub use self::layer::{KeyedRateLimit, KeyedRateLimitLayer, RateLimit, RateLimitLayer};

/// Tells a response what the limit that admitted it has left: the layers' `headers()` give
/// HTTP responses the draft's `RateLimit` and `RateLimit-Policy` headers ([`Headers`], feature
/// `http`); by default nothing is added ([`NoReport`]).
pub trait Report<Res> {
    /// Adds what `status` says to `response`.
    fn report(&self, response: &mut Res, status: &Status);
}

/// Reports nothing: the layers' default, for any response type.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReport;

impl<Res> Report<Res> for NoReport {
    fn report(&self, _: &mut Res, _: &Status) {}
}

/// Gives every admitted HTTP response the draft's `RateLimit` and `RateLimit-Policy` headers
/// (refused calls get them on their `429` from [`crate::http::ProblemLayer`]).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers;

#[cfg(feature = "http")]
impl<B> Report<http::Response<B>> for Headers {
    fn report(&self, response: &mut http::Response<B>, status: &Status) {
        crate::http::set_rate_limit_headers(status, response.headers_mut());
    }
}

/// A limit's state after a decision: what a client is told in the `RateLimit` and
/// `RateLimit-Policy` headers (see `http::set_rate_limit_headers`, feature `http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The burst size: calls admitted at once from a full limit (the policy's quota).
    pub limit: u32,
    /// Calls that would be admitted now, at once.
    pub remaining: u32,
    /// How long until the limit is full again (`remaining == limit`).
    pub reset: Duration,
    /// The time in which a drained limit refills completely (the policy's window).
    pub period: Duration,
}
