//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::core::Admit;
use super::error::Open;
use super::{Breaker, Classify};
use crate::BoxError;

/// One admitted call. Dropped without an outcome (the caller gave up), it returns a half-open
/// permit to the breaker instead of counting as a success or a failure.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Breaker,
    /// `Untracked` once the outcome is recorded, so that dropping the permit does nothing more.
    admit: Admit,
}

impl Permit {
    #[inline]
    pub(crate) fn new(breaker: Breaker, admit: Admit) -> Self {
        Self { breaker, admit }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Admit::HalfOpen(_) = self.admit {
            self.breaker.cancel(self.admit);
        }
    }
}

/// What an admitted call needs to record its outcome.
#[derive(Debug)]
struct Call<C> {
    permit: Permit,
    classifier: C,
    started_nanos: u64,
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Refused { error: Option<Open> },
        Called { #[pin] future: F, call: Option<Call<C>> },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
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
        }
    }

    /// The future of an admitted call.
    #[inline]
    pub(crate) fn called(future: F, permit: Permit, classifier: C) -> Self {
        let started_nanos = permit.breaker.started_nanos(permit.admit);
        Self {
            kind: Kind::Called {
                future,
                call: Some(Call {
                    permit,
                    classifier,
                    started_nanos,
                }),
            },
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Refused { error } => Poll::Ready(Err(error.take().map_or_else(
                || "circuit breaker future polled after completion".into(),
                Into::into,
            ))),
            KindProj::Called { future, call } => {
                let result = ready!(future.poll(cx));
                if let Some(Call {
                    mut permit,
                    classifier,
                    started_nanos,
                }) = call.take()
                {
                    let admit = std::mem::replace(&mut permit.admit, Admit::Untracked);
                    let outcome = classifier.classify(result.as_ref());
                    permit.breaker.finish(admit, outcome, started_nanos);
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
