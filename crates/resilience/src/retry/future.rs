//! The retry layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep};
use tower_service::Service;

use super::layer::Config;
use super::{Decision, MakeBackoff, Policy};
use crate::BoxError;
use crate::rejection::local_rejection_of;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        // Boxed: only retries pay for it, and the future every call carries stays small.
        Sleeping { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

/// What a call that may be retried carries along.
struct Retrying<S, P, B: MakeBackoff, Req> {
    service: S,
    request: Req,
    next: Option<Req>,
    config: Config<P, B>,
    backoff: Option<B::Backoff>,
    attempts: u32,
}

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, P, B, Req>
    where
        S: Service<Req>,
        B: MakeBackoff,
    {
        #[pin]
        state: State<S::Future>,
        retry: Option<Retrying<S, P, B, Req>>,
    }
}

impl<S, P, B, Req> fmt::Debug for ResponseFuture<S, P, B, Req>
where
    S: Service<Req>,
    B: MakeBackoff,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.retry.as_ref().map_or(1, |r| r.attempts))
            .finish_non_exhaustive()
    }
}

impl<S, P, B, Req> ResponseFuture<S, P, B, Req>
where
    S: Service<Req>,
    B: MakeBackoff,
{
    pub(crate) fn once(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
            retry: None,
        }
    }

    pub(crate) fn retrying(
        future: S::Future,
        service: S,
        request: Req,
        config: Config<P, B>,
    ) -> Self {
        Self {
            state: State::Called { future },
            retry: Some(Retrying {
                service,
                request,
                next: None,
                config,
                backoff: None,
                attempts: 1,
            }),
        }
    }
}

impl<S, P, B, Req> Retrying<S, P, B, Req>
where
    S: Service<Req>,
    S::Error: 'static,
    P: Policy<Req, S::Response, S::Error>,
    B: MakeBackoff,
{
    /// The delay before another attempt, or `None` to return `result`. Charges the budget and
    /// prepares the next request only when the answer is a retry.
    fn plan(&mut self, result: Result<&S::Response, &S::Error>) -> Option<Duration> {
        let config = &self.config;
        if self.attempts >= config.max_attempts {
            return None;
        }
        if let Err(error) = result {
            // Refused locally: the same endpoint would refuse again, and it cost nothing.
            if local_rejection_of(error).is_some() {
                return None;
            }
        }
        let floor = match config.policy.decide(&self.request, result) {
            Decision::Done => return None,
            Decision::Retry => Duration::ZERO,
            Decision::RetryAfter(wait) if wait > config.max_retry_after => return None,
            Decision::RetryAfter(wait) => wait,
        };
        let backoff = self
            .backoff
            .get_or_insert_with(|| config.backoff.make_backoff());
        let delay = backoff.next()?.max(floor);
        if let Some(deadline) = config.policy.deadline(&self.request) {
            // The attempt could not even start before the deadline.
            if deadline.remaining() <= delay {
                return None;
            }
        }
        if let Some(budget) = &config.budget
            && !budget.withdraw()
        {
            return None;
        }
        self.next = Some(config.policy.clone_request(&self.request)?);
        self.attempts += 1;
        Some(delay)
    }
}

impl<S, P, B, Req> Future for ResponseFuture<S, P, B, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    P: Policy<Req, S::Response, S::Error>,
    B: MakeBackoff,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let delay = match this.retry.as_mut() {
                        Some(retry) => retry.plan(result.as_ref()),
                        None => None,
                    };
                    match delay {
                        None => return Poll::Ready(result.map_err(Into::into)),
                        Some(Duration::ZERO) => this.state.set(State::Readying),
                        Some(delay) => this.state.set(State::Sleeping {
                            sleep: Box::pin(sleep(delay)),
                        }),
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(retry) = this.retry.as_mut() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    if let Err(error) = ready!(retry.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = retry.next.take() else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let future = retry.service.call(request);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}
