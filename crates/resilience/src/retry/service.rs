use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::{MakeBackoff, Policy};
use crate::BoxError;

/// Retries failed calls; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Retry<S, P, B> {
    pub(crate) inner: S,
    pub(crate) config: Config<P, B>,
}

impl<S, P, B> Retry<S, P, B> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, B, Req> Service<Req> for Retry<S, P, B>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    P: Policy<Req, S::Response, S::Error> + Clone,
    B: MakeBackoff + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, B, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if let Some(budget) = &self.config.budget {
            budget.deposit();
        }
        // Keep what a retry needs only when one is possible at all.
        let replay = if self.config.max_attempts > 1 {
            self.config.policy.clone_request(&request)
        } else {
            None
        };
        let retry = replay.map(|copy| {
            // The ready clone is for this call; the next caller polls `self` again.
            let ready = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, ready);
            (ready, copy)
        });
        match retry {
            Some((mut service, copy)) => {
                let future = service.call(request);
                ResponseFuture::retrying(future, service, copy, self.config.clone())
            }
            None => ResponseFuture::once(self.inner.call(request)),
        }
    }
}
