//! Timeouts per attempt, and deadlines that travel with the request.
//!
//! * [`TimeoutLayer`] bounds one attempt. With [`within_deadline`](TimeoutLayer::within_deadline)
//!   it also never waits past the request's [`Deadline`], and does not even start an attempt
//!   whose deadline has already passed.
//! * [`DeadlineLayer`] bounds the whole request: it stamps a [`Deadline`] on the request (keeping
//!   an earlier one that came from upstream) and fails with [`error::DeadlineExceeded`] when it
//!   passes. Retry and hedging read the same deadline and skip attempts that cannot finish in
//!   time.
//!
//! A request carries its deadline through [`CarriesDeadline`]. With the `http` feature it is
//! implemented for `http::Request`: the deadline lives in the request's extensions and travels
//! to the next service in the `x-request-deadline` header, as the remaining milliseconds (a
//! relative value, so clocks of different hosts need not agree).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::timeout::{CarriesDeadline, Deadline, DeadlineLayer, TimeoutLayer, error::Elapsed};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! #[derive(Default)]
//! struct Job { deadline: Option<Deadline> }
//!
//! impl CarriesDeadline for Job {
//!     fn deadline(&self) -> Option<Deadline> { self.deadline }
//!     fn set_deadline(&mut self, deadline: Deadline) { self.deadline = Some(deadline) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut service = ServiceBuilder::new()
//!     // Seen first: the whole request, retries included, gets 2 s.
//!     .layer(DeadlineLayer::new(Duration::from_secs(2)))
//!     // Each attempt gets 500 ms, and never more than what is left of the deadline.
//!     .layer(TimeoutLayer::new(Duration::from_millis(500)).within_deadline())
//!     .service(service_fn(|_job: Job| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, std::convert::Infallible>("late")
//!     }));
//!
//! let error = service.ready().await.unwrap().call(Job::default()).await.unwrap_err();
//! assert!(error.is::<Elapsed>());
//! # }
//! ```

mod layer;

pub mod error;
pub mod future;

pub use self::layer::{
    DeadlineLayer, DeadlineService, FromRequest, Ignore, ReadDeadline, Timeout, TimeoutLayer,
};
pub use crate::deadline::{CarriesDeadline, Deadline};
