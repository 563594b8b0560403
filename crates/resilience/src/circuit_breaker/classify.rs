//! Deciding what counts as a failure.

use crate::deadline::deadline_exceeded_of;
use crate::rejection::local_rejection_of;

/// How the breaker counts one completed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed and counts against the failure rate.
    Failure,
    /// The call is not counted at all (for example a local rejection from a layer below, or a
    /// client error that says nothing about the endpoint's health).
    Ignore,
}

/// Classifies results for the breaker.
///
/// Implemented for closures `Fn(Result<&Res, &E>) -> Outcome`, and by [`DefaultClassifier`].
///
/// ```
/// use mainstay_resilience::circuit_breaker::Outcome;
///
/// // Count only errors whose message mentions a reset connection.
/// let classifier = |result: Result<&String, &std::io::Error>| match result {
///     Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Failure,
///     Err(_) => Outcome::Ignore,
///     Ok(_) => Outcome::Success,
/// };
/// # let _ = classifier;
/// ```
pub trait Classify<Res, E> {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// Responses are successes; errors are failures, except local rejections from layers below
/// (a full bulkhead, a rate limit) and a request deadline that ran out
/// ([`DeadlineExceeded`](crate::deadline::DeadlineExceeded): the caller's budget, not the
/// endpoint's failure), which say nothing about the endpoint and are ignored. A per-attempt
/// timeout is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Res, E: 'static> Classify<Res, E> for DefaultClassifier {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) if local_rejection_of(e).is_some() || deadline_exceeded_of(e).is_some() => {
                Outcome::Ignore
            }
            Err(_) => Outcome::Failure,
        }
    }
}
