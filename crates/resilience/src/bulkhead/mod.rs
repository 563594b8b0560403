//! Bulkhead: cap the calls in flight, wait a bounded time for a slot, then reject.
//!
//! tower's `ConcurrencyLimit` queues callers forever when the limit is reached; a bulkhead gives
//! each caller at most [`max_wait`](BulkheadLayer::max_wait) (zero by default) and then answers
//! with [`error::Full`], a local rejection (see [`crate::rejection`]) that retry layers do not
//! retry and breakers do not count. Waiters are served first come, first served. All services
//! made from one layer share its slots.
//!
//! A slot is taken in `poll_ready` and held until the response future finishes or is dropped.
//! [`KeyedBulkheadLayer`] gives each key (tenant, user, route) slots of its own.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::bulkhead::{BulkheadLayer, error::Full};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = BulkheadLayer::new(1).max_wait(Duration::from_millis(10));
//! let mut service = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|()| async { Ok::<_, std::convert::Infallible>("done") }));
//!
//! let first = service.ready().await.unwrap().call(()); // holds the only slot
//! let second = service.ready().await.unwrap().call(()).await; // waits 10 ms, then rejects
//! assert!(second.unwrap_err().is::<Full>());
//! assert_eq!(first.await.unwrap(), "done");
//! assert_eq!(layer.available(), 1);
//! # }
//! ```

mod keyed;
mod layer;
mod service;

pub mod error;
pub mod future;

pub use self::keyed::{KeyedBulkhead, KeyedBulkheadLayer};
pub use self::layer::BulkheadLayer;
pub use self::service::Bulkhead;
