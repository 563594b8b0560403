//! Which requests may be replayed and which results call for another attempt.

use std::time::Duration;

use crate::deadline::Deadline;

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Return this result.
    Done,
    /// Try again after the next backoff delay.
    Retry,
    /// Try again, waiting at least this long (a server's `Retry-After`).
    RetryAfter(Duration),
}

/// Decides about retries for one kind of request.
///
/// Whatever the policy says, the [`Retry`](super::Retry) service never retries a local rejection
/// (see [`crate::rejection`]), never exceeds its attempts or budget, and never waits past the
/// request's deadline.
pub trait Policy<Req, Res, E> {
    /// A copy of `request` for another attempt, or `None` if it must not be sent twice (not
    /// idempotent, or not clonable).
    fn clone_request(&self, request: &Req) -> Option<Req>;

    /// Whether `result` calls for another attempt.
    fn decide(&self, request: &Req, result: Result<&Res, &E>) -> Decision;

    /// The request's deadline, if it carries one; attempts that cannot start before it are
    /// skipped.
    fn deadline(&self, _request: &Req) -> Option<Deadline> {
        None
    }
}

/// Retries every error of a clonable request; responses are final.
///
/// For HTTP use [`crate::http::HttpRetryPolicy`], which only replays idempotent requests and
/// honours `Retry-After`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors;

impl<Req: Clone, Res, E> Policy<Req, Res, E> for RetryErrors {
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }

    fn decide(&self, _: &Req, result: Result<&Res, &E>) -> Decision {
        match result {
            Ok(_) => Decision::Done,
            Err(_) => Decision::Retry,
        }
    }
}
