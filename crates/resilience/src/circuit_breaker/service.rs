use std::task::{Context, Poll};

use tower_service::Service;

use super::error::Open;
use super::future::{Permit, ResponseFuture};
use super::{Breaker, Classify, DefaultClassifier};
use crate::BoxError;

/// Refuses calls while its [`Breaker`] is open; see the [module docs](super).
#[derive(Debug)]
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    breaker: Breaker,
    classifier: C,
    /// Decided in `poll_ready`, consumed in `call`. A half-open permit held here goes back to the
    /// breaker if the service is dropped before `call`.
    ready: Option<Result<Permit, Open>>,
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A reservation belongs to the `poll_ready` that made it, never to a clone.
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`; `classifier` decides what is a failure.
    pub fn new(inner: S, breaker: Breaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            ready: None,
        }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn admit(&self) -> Result<Permit, Open> {
        self.breaker
            .acquire()
            .map(|admit| Permit::new(self.breaker.clone(), admit))
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready.is_none() {
            self.ready = Some(self.admit());
        }
        match &self.ready {
            // Refused: ready at once, `call` answers with the rejection without touching `inner`.
            Some(Err(_)) => Poll::Ready(Ok(())),
            _ => match self.inner.poll_ready(cx) {
                Poll::Ready(Err(e)) => {
                    // Give back a probe permit; the inner service's own failure is not a call.
                    self.ready = None;
                    Poll::Ready(Err(e.into()))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let ready = self.ready.take().unwrap_or_else(|| self.admit());
        match ready {
            Err(open) => ResponseFuture::refused(open),
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(request), permit, self.classifier.clone())
            }
        }
    }
}
