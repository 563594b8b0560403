//! Local rejections: calls a layer of this crate refused without sending them.
//!
//! An open circuit, a full bulkhead, a rate limit, load shedding and a balancer with no
//! endpoint ([`NoEndpoint`], for balancers outside this crate to return) all answer before the
//! request leaves the process. They say nothing about the endpoint's health, so the layers of this crate treat them
//! alike:
//!
//! * retry does not retry them against the same endpoint and does not charge them to its budget;
//! * the circuit breaker's default classifier ignores them;
//! * with the `http` feature they become `503` or `429` problem responses with `Retry-After`.
//!
//! [`local_rejection`] recognises them anywhere in an error's `source()` chain, and
//! [`local_rejection_of`] in a service's error value of any type.

use std::any::Any;
use std::error::Error;
use std::time::Duration;

/// What kind of local rejection an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A circuit breaker refused the call.
    CircuitOpen,
    /// A bulkhead had no free slot within its wait time.
    BulkheadFull,
    /// A rate limiter refused the call.
    RateLimited,
    /// An adaptive concurrency limiter shed the call.
    Shed,
    /// A balancer had no endpoint to send the call to ([`NoEndpoint`]).
    NoEndpoint,
}

/// The leaf error of a balancer that had no endpoint to send a call to: a local rejection, so
/// that retry stops and the problem layer answers `503`. A balancer's own error (naming the
/// service, say) returns it from `source()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, thiserror::Error)]
#[error("no endpoint to send the call to")]
pub struct NoEndpoint;

/// A recognised local rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRejection {
    /// What refused the call.
    pub kind: RejectionKind,
    /// When the caller may try again, if the layer knows.
    pub retry_after: Option<Duration>,
}

/// Finds a local rejection in `error` or its `source()` chain.
#[must_use]
pub fn local_rejection(error: &(dyn Error + 'static)) -> Option<LocalRejection> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = recognise(e) {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Finds a local rejection in a service's error value, whatever its type: a
/// [`BoxError`](crate::BoxError) (the error type of every layer here that adds failure modes) is
/// searched through its `source()` chain, and the leaf rejection types are recognised directly.
#[must_use]
pub fn local_rejection_of<E: 'static>(error: &E) -> Option<LocalRejection> {
    let any: &dyn Any = error;
    if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
        return local_rejection(&**boxed);
    }
    recognise_any(any)
}

/// The leaf rejection types, listed once: `dyn Error` and `dyn Any` both downcast by
/// `downcast_ref`, so one list serves both.
macro_rules! recognise_leaves {
    ($error:expr) => {{
        if $error.downcast_ref::<NoEndpoint>().is_some() {
            return Some(LocalRejection {
                kind: RejectionKind::NoEndpoint,
                retry_after: None,
            });
        }
        #[cfg(feature = "circuit-breaker")]
        if let Some(leaf) = $error.downcast_ref::<crate::circuit_breaker::error::Open>() {
            return Some(leaf.rejection());
        }
        #[cfg(feature = "bulkhead")]
        if let Some(leaf) = $error.downcast_ref::<crate::bulkhead::error::Full>() {
            return Some(leaf.rejection());
        }
        #[cfg(feature = "rate-limit")]
        if let Some(leaf) = $error.downcast_ref::<crate::rate_limit::error::RateLimited>() {
            return Some(leaf.rejection());
        }
        #[cfg(feature = "adaptive")]
        if let Some(leaf) = $error.downcast_ref::<crate::adaptive::error::Shed>() {
            return Some(leaf.rejection());
        }
        None
    }};
}

fn recognise(e: &(dyn Error + 'static)) -> Option<LocalRejection> {
    recognise_leaves!(e)
}

fn recognise_any(e: &dyn Any) -> Option<LocalRejection> {
    recognise_leaves!(e)
}
