//! Retry: try again, later, but only when it is safe, useful and affordable.
//!
//! * **Jitter by default.** [`ExponentialBackoff`] uses AWS-style decorrelated jitter unless told
//!   otherwise ([`Jitter::Full`], [`Jitter::Equal`], [`Jitter::None`]); each request draws its
//!   own sequence and no delay exceeds the cap. Any `Iterator<Item = Duration>` works too, through
//!   a closure ([`MakeBackoff`]).
//! * **Only safe requests.** The [`Policy`] decides which requests may be replayed: with the
//!   `http` feature, [`HttpRetryPolicy`](crate::http::HttpRetryPolicy) replays idempotent methods
//!   and requests carrying an `Idempotency-Key` their server honours, and honours `Retry-After`.
//! * **A budget.** A [`RetryBudget`] caps retries at a share of requests plus a floor per second,
//!   so retries cannot multiply the load on a struggling dependency.
//! * **Local rejections are final.** An open circuit, a full bulkhead or a rate limit below this
//!   layer is returned at once, and is not charged to the budget.
//! * **Deadlines.** An attempt that could not start before the request's deadline is not made.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use mainstay_resilience::retry::{ExponentialBackoff, Jitter, RetryBudget, RetryLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let mut service = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new()
//!             .max_attempts(3)
//!             .backoff(ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1)).jitter(Jitter::Full))
//!             .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
//!     )
//!     .service(service_fn(move |name: &'static str| {
//!         let attempt = counter.fetch_add(1, Ordering::SeqCst);
//!         async move { if attempt < 2 { Err("flaky") } else { Ok(name) } }
//!     }));
//!
//! assert_eq!(service.ready().await.unwrap().call("hello").await.unwrap(), "hello");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

mod backoff;
mod budget;
mod layer;
mod policy;
mod service;

pub mod future;

pub use self::backoff::{ExponentialBackoff, ExponentialDelays, Jitter, MakeBackoff};
pub use self::budget::RetryBudget;
pub use self::layer::RetryLayer;
pub use self::policy::{Decision, Policy, RetryErrors};
pub use self::service::Retry;
