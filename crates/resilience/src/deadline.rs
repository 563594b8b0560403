//! Deadlines that travel with a request, shared by timeouts, retries and hedging.

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
