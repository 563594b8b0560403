use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Sleep, sleep};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::error::Full;
use super::future::ResponseFuture;
use crate::BoxError;

/// Caps concurrent calls to the inner service; see the [module docs](super).
pub struct Bulkhead<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    /// Calls refused, shared with the layer (read by [`super::BulkheadLayer::rejected`]).
    rejected: Arc<AtomicU64>,
    max_wait: Duration,
    state: State,
}

enum State {
    Idle,
    /// Made only when a caller has to wait, so the common path allocates nothing.
    Waiting {
        poll: PollSemaphore,
        deadline: Pin<Box<Sleep>>,
    },
    Ready(OwnedSemaphorePermit),
    Full,
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("available", &self.semaphore.available_permits())
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        // A slot belongs to the `poll_ready` that took it, never to a clone.
        Self::new(
            self.inner.clone(),
            self.semaphore.clone(),
            self.rejected.clone(),
            self.max_wait,
        )
    }
}

impl<S> Bulkhead<S> {
    pub(crate) fn new(
        inner: S,
        semaphore: Arc<Semaphore>,
        rejected: Arc<AtomicU64>,
        max_wait: Duration,
    ) -> Self {
        Self {
            inner,
            semaphore,
            rejected,
            max_wait,
            state: State::Idle,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the bulkhead, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Moves `state` towards `Ready` or `Full`; `Pending` while waiting for a slot.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                State::Ready(_) | State::Full => return Poll::Ready(()),
                State::Idle => match self.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => self.state = State::Ready(permit),
                    Err(TryAcquireError::NoPermits) if !self.max_wait.is_zero() => {
                        self.state = State::Waiting {
                            poll: PollSemaphore::new(self.semaphore.clone()),
                            deadline: Box::pin(sleep(self.max_wait)),
                        };
                    }
                    Err(_) => self.state = State::Full,
                },
                State::Waiting { poll, deadline } => {
                    if let Poll::Ready(permit) = poll.poll_acquire(cx) {
                        self.state = permit.map_or(State::Full, State::Ready);
                    } else if deadline.as_mut().poll(cx).is_ready() {
                        self.state = State::Full;
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.poll_slot(cx).is_pending() {
            return Poll::Pending;
        }
        match self.state {
            // Rejected: `call` answers with `Full` without touching the inner service.
            State::Full => Poll::Ready(Ok(())),
            _ => match self.inner.poll_ready(cx) {
                Poll::Ready(Err(e)) => {
                    self.state = State::Idle;
                    Poll::Ready(Err(e.into()))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let state = std::mem::replace(&mut self.state, State::Idle);
        let permit = match state {
            State::Ready(permit) => permit,
            // `call` without `poll_ready`: take a free slot if there is one, never wait.
            State::Idle => match self.semaphore.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => return self.reject(),
            },
            State::Waiting { .. } | State::Full => return self.reject(),
        };
        ResponseFuture::called(self.inner.call(request), permit)
    }
}

impl<S> Bulkhead<S> {
    /// The answer to a call that found no slot, counted.
    fn reject<F>(&self) -> ResponseFuture<F> {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        ResponseFuture::full(Full::new())
    }
}
