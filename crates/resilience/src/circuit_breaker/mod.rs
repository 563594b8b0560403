//! Circuit breaker: stop calling an endpoint that is failing, give it time, probe, resume.
//!
//! A [`Breaker`] watches outcomes in a sliding window (the last *n* calls, or the last *t*
//! seconds in buckets) and opens when the failure rate, or the slow-call rate, reaches its
//! threshold. The window is judged when a failure or a slow call is recorded, as in Polly: a
//! success cannot raise either rate, so it never opens the circuit, even the one that brings the
//! window up to its minimum number of calls. While open it refuses calls at once with [`error::Open`]; after the open period it
//! lets a bounded number of probes through (half-open) and judges them by the same rates to close
//! or reopen. The open period can grow each time probing fails.
//!
//! * **Lock-free and allocation-free.** The state is one atomic word; the count window is a ring
//!   of bytes whose aggregates change only when an outcome replaces a different one; the time
//!   window's buckets carry their own epoch. A closed-circuit call costs one atomic
//!   read-modify-write on the window, plus two on the handle's reference count unless the
//!   breaker is made [static](Breaker::into_static), and no clock read unless slow-call detection
//!   or a time window needs one.
//! * **Exact sliding windows.** A 100-call window at 50 % opens on the 50th failure after any
//!   number of successes.
//! * **Half-open done right.** Bounded permits, judged by rate, time-limited (reopens if probes
//!   hang), and cancellation-safe: a probe whose future is dropped returns its permit.
//! * **Generations.** Every transition starts a new generation; an outcome that arrives from an
//!   older one (a slow call admitted before the circuit opened) is ignored.
//! * **Keyed.** [`KeyedCircuitBreakerLayer`] keeps one breaker per host, route or tenant, in a
//!   registry of bounded size.
//! * **Special states.** [`State::Disabled`], [`State::ForcedOpen`] and [`State::MetricsOnly`],
//!   switched by hand through the [`Breaker`] handle, which also reads [`Metrics`].
//!
//! What counts as a failure is decided by a [`Classify`] implementation; the
//! [`DefaultClassifier`] counts errors and ignores local rejections from layers below. With the
//! `http` feature, [`crate::http::StatusClassifier`] counts 5xx responses and ignores 4xx.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer, State, error::Open};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let breaker = Breaker::builder()
//!     .count_window(20)
//!     .minimum_calls(5)
//!     .failure_rate(0.5)
//!     .open_for(Duration::from_secs(10))
//!     .build()?;
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err("upstream failed") } else { Ok("ok") }
//!     }));
//!
//! for _ in 0..5 {
//!     let _ = service.ready().await?.call(true).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Refused without reaching the inner service.
//! let error = service.ready().await?.call(false).await.unwrap_err();
//! assert!(error.downcast_ref::<Open>().is_some());
//! # Ok(())
//! # }
//! ```

mod breaker;
#[cfg(feature = "metrics")]
pub(crate) use self::breaker::WeakBreaker;
mod classify;
pub(crate) mod core;
mod keyed;
mod layer;
mod service;
pub(crate) mod window;

pub mod error;
pub mod future;

pub use self::breaker::{Breaker, Builder, Metrics};
pub use self::classify::{Classify, DefaultClassifier, Outcome};
pub use self::keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;

/// The state of a [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow and are recorded.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A bounded number of probes are let through to decide between closing and reopening.
    HalfOpen,
    /// Calls flow and nothing is recorded.
    Disabled,
    /// Every call is refused until the breaker is switched by hand.
    ForcedOpen,
    /// Calls flow and are recorded, but the circuit never opens.
    MetricsOnly,
}

impl State {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Closed,
        Self::Open,
        Self::HalfOpen,
        Self::ForcedOpen,
        Self::Disabled,
        Self::MetricsOnly,
    ];

    /// Its name in `snake_case`, as metrics label it: `closed`, `open`, `half_open`,
    /// `forced_open`, `disabled`, `metrics_only`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics_only",
        }
    }
}
