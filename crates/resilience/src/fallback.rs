//! Fallback: when a call fails, answer with something else (a cached value, a default, a degraded
//! response) instead of the error.
//!
//! [`FallbackLayer::new`] takes an async function of the error. By default every error falls
//! back; [`when`](FallbackLayer::when) narrows it, for example to local rejections and timeouts
//! only ([`on_rejection_or_timeout`]), so genuine upstream errors still surface.
//!
//! # Example
//!
//! ```
//! use mainstay_resilience::{BoxError, fallback::FallbackLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut recommendations = ServiceBuilder::new()
//!     // Seen first: if anything below fails, show the popular products instead.
//!     .layer(FallbackLayer::new(|_error: BoxError| async {
//!         Ok::<_, BoxError>(vec!["popular-1", "popular-2"])
//!     }))
//!     .service(service_fn(|_user: u64| async { Err::<Vec<&str>, BoxError>("recommender down".into()) }));
//!
//! let shown = recommendations.ready().await.unwrap().call(7).await.unwrap();
//! assert_eq!(shown, ["popular-1", "popular-2"]);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;

/// Decides which errors fall back. Implemented for closures `Fn(&BoxError) -> bool`.
pub trait Predicate {
    /// Whether `error` should be answered by the fallback.
    fn check(&self, error: &BoxError) -> bool;
}

impl<F: Fn(&BoxError) -> bool> Predicate for F {
    fn check(&self, error: &BoxError) -> bool {
        self(error)
    }
}

/// Every error falls back (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Always;

impl Predicate for Always {
    fn check(&self, _: &BoxError) -> bool {
        true
    }
}

/// Falls back only on local rejections (see [`crate::rejection`]) and, with the `timeout`
/// feature, on timeouts and passed deadlines.
#[must_use]
pub fn on_rejection_or_timeout(error: &BoxError) -> bool {
    if crate::rejection::local_rejection(&**error).is_some() {
        return true;
    }
    #[cfg(feature = "timeout")]
    return crate::timeout::error::is_timeout(&**error);
    #[cfg(not(feature = "timeout"))]
    false
}

/// Answers failed calls with a fallback; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct FallbackLayer<F, P = Always> {
    fallback: F,
    predicate: P,
}

impl<F> FallbackLayer<F> {
    /// Falls back to `fallback(error)` for every error.
    pub fn new(fallback: F) -> Self {
        Self {
            fallback,
            predicate: Always,
        }
    }
}

impl<F, P> FallbackLayer<F, P> {
    /// Falls back only for errors `predicate` accepts; others are returned as they are.
    pub fn when<P2: Predicate>(self, predicate: P2) -> FallbackLayer<F, P2> {
        FallbackLayer {
            fallback: self.fallback,
            predicate,
        }
    }
}

impl<S, F: Clone, P: Clone> Layer<S> for FallbackLayer<F, P> {
    type Service = Fallback<S, F, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            fallback: self.fallback.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

/// Middleware made by [`FallbackLayer`].
#[derive(Debug, Clone)]
pub struct Fallback<S, F, P = Always> {
    inner: S,
    fallback: F,
    predicate: P,
}

impl<S, F, P> Fallback<S, F, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, Fut, P, Req> Service<Req> for Fallback<S, F, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fn(BoxError) -> Fut + Clone,
    Fut: Future<Output = Result<S::Response, BoxError>>,
    P: Predicate + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F, Fut, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness errors are not answered here: a service that cannot take calls is broken,
        // and a fallback per call would hide that.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture {
            state: State::Primary {
                future: self.inner.call(request),
            },
            fallback: Some((self.fallback.clone(), self.predicate.clone())),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Fut> {
        Primary { #[pin] future: F },
        Fallback { #[pin] future: Fut },
    }
}

pin_project! {
    /// Response future of [`Fallback`].
    pub struct ResponseFuture<F, Fb, Fut, P> {
        #[pin]
        state: State<F, Fut>,
        fallback: Option<(Fb, P)>,
    }
}

impl<F, Fb, Fut, P> std::fmt::Debug for ResponseFuture<F, Fb, Fut, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, Fb, Fut, P, T, E> Future for ResponseFuture<F, Fb, Fut, P>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    Fb: Fn(BoxError) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
    P: Predicate,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { future } => {
                    let error = match ready!(future.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => e.into(),
                    };
                    match this.fallback.take() {
                        Some((fallback, predicate)) if predicate.check(&error) => {
                            this.state.set(State::Fallback {
                                future: fallback(error),
                            });
                        }
                        _ => return Poll::Ready(Err(error)),
                    }
                }
                StateProj::Fallback { future } => return future.poll(cx),
            }
        }
    }
}
