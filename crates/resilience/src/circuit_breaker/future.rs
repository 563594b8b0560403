//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::core::Admit;
use super::error::Open;
use super::window::{FAILED, RECORDED, SLOW};
use super::{Breaker, Classify, Outcome};
use crate::BoxError;

/// One admitted call. Dropped without an outcome (the caller gave up), it returns a half-open
/// permit to the breaker instead of counting as a success or a failure.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Breaker,
    admit: Admit,
    done: bool,
}

impl Permit {
    #[inline]
    pub(crate) fn new(breaker: Breaker, admit: Admit) -> Self {
        Self {
            breaker,
            admit,
            done: false,
        }
    }

    #[inline]
    fn complete(mut self, outcome: Outcome, started_nanos: u64) {
        self.done = true;
        let breaker = &self.breaker;
        let mut bits = match outcome {
            Outcome::Success => RECORDED,
            Outcome::Failure => RECORDED | FAILED,
            Outcome::Ignore => 0,
        };
        let now = (bits != 0 && breaker.needs_clock()).then(|| breaker.now_nanos());
        if let (Some(threshold), Some(now)) = (breaker.slow_call_nanos(), now)
            && now.saturating_sub(started_nanos) >= threshold
        {
            bits |= SLOW;
        }
        breaker.record(self.admit, bits, now);
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.breaker.cancel(self.admit);
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Refused { error: Option<Open> },
        Called { #[pin] future: F },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        permit: Option<Permit>,
        classifier: Option<C>,
        started_nanos: u64,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("refused", &matches!(self.kind, Kind::Refused { .. }))
            .finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn refused(error: Open) -> Self {
        Self {
            kind: Kind::Refused { error: Some(error) },
            permit: None,
            classifier: None,
            started_nanos: 0,
        }
    }

    /// The future of an admitted call. The start time is read only when slow calls are
    /// detected and the call is recorded at all.
    pub(crate) fn called(future: F, permit: Permit, classifier: C) -> Self {
        let breaker = &permit.breaker;
        let started_nanos =
            if permit.admit != Admit::Untracked && breaker.slow_call_nanos().is_some() {
                breaker.now_nanos()
            } else {
                0
            };
        Self {
            kind: Kind::Called { future },
            permit: Some(permit),
            classifier: Some(classifier),
            started_nanos,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Refused { error } => Poll::Ready(Err(error.take().map_or_else(
                || "circuit breaker future polled after completion".into(),
                Into::into,
            ))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                if let (Some(permit), Some(classifier)) =
                    (this.permit.take(), this.classifier.as_ref())
                {
                    permit.complete(classifier.classify(result.as_ref()), *this.started_nanos);
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
