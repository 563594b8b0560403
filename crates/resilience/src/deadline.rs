//! Deadlines that travel with a request, shared by timeouts, retries and hedging.
//!
//! A deadline that runs out is the caller's budget spent, not the callee's failure: the
//! circuit breaker's classifiers and mainstay-discovery's outlier detection ignore
//! [`DeadlineExceeded`] (found with [`deadline_exceeded_of`]), and only a per-attempt timeout
//! (`timeout::error::Elapsed`) counts against an endpoint. Otherwise a client that sends tiny
//! deadlines could open every breaker and eject every endpoint of a healthy service.

use std::any::Any;
use std::error::Error;
use std::time::Duration;

use tokio::time::Instant;

/// The instant by which a request must be answered.
///
/// Read from tokio's clock, so paused-time tests control it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    #[must_use]
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// A deadline `duration` from now.
    #[must_use]
    pub fn after(duration: Duration) -> Self {
        Self(Instant::now() + duration)
    }

    /// The deadline as an instant.
    #[must_use]
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left before the deadline (zero once it has passed).
    #[must_use]
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    #[must_use]
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of two deadlines.
    #[must_use]
    pub fn min(self, other: Option<Deadline>) -> Self {
        match other {
            Some(other) if other.0 < self.0 => other,
            _ => self,
        }
    }
}

/// A request that can carry a [`Deadline`].
///
/// Implemented for `http::Request` with the `http` feature; implement it for your own request
/// types to use `DeadlineLayer` (feature `timeout`) and deadline-aware retries.
pub trait CarriesDeadline {
    /// The request's deadline, if it has one.
    fn deadline(&self) -> Option<Deadline>;

    /// Sets the request's deadline.
    fn set_deadline(&mut self, deadline: Deadline);
}

/// The request's deadline passed, either while it ran or before it started (in which case the
/// inner service was never called).
///
/// [`by_caller`](Self::by_caller) says whether the deadline that ran out was the one the caller
/// sent (and not a budget of this service's own); with the `http` feature the problem response
/// for it says so to the caller (see `http::DEADLINE_RAN_OUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("request deadline exceeded")]
pub struct DeadlineExceeded {
    by_caller: bool,
}

impl DeadlineExceeded {
    #[cfg_attr(not(feature = "timeout"), allow(dead_code))]
    pub(crate) fn new() -> Self {
        Self { by_caller: false }
    }

    #[cfg_attr(not(feature = "timeout"), allow(dead_code))]
    pub(crate) fn of_caller() -> Self {
        Self { by_caller: true }
    }

    /// Whether the deadline that ran out was the caller's own (sent with the request), rather
    /// than a budget set by this service.
    #[must_use]
    pub fn by_caller(&self) -> bool {
        self.by_caller
    }
}

/// Finds a [`DeadlineExceeded`] in `error` or its `source()` chain.
#[must_use]
pub fn deadline_exceeded(error: &(dyn Error + 'static)) -> Option<DeadlineExceeded> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<DeadlineExceeded>() {
            return Some(*found);
        }
        current = e.source();
    }
    None
}

/// Finds a [`DeadlineExceeded`] in a service's error value, whatever its type: a
/// [`BoxError`](crate::BoxError) is searched through its `source()` chain.
#[must_use]
pub fn deadline_exceeded_of<E: 'static>(error: &E) -> Option<DeadlineExceeded> {
    let any: &dyn Any = error;
    if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
        return deadline_exceeded(&**boxed);
    }
    any.downcast_ref::<DeadlineExceeded>().copied()
}
