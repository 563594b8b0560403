//! Response future of the timeout and deadline layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::error::{DeadlineExceeded, Elapsed};
use crate::BoxError;

/// When the future gives up.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// `timeout` after the first poll, or at `deadline` if that comes first.
    Attempt {
        timeout: Duration,
        deadline: Option<Instant>,
    },
    /// At this instant.
    Deadline(Instant),
    /// Already passed: fail without polling anything.
    Expired,
}

pin_project! {
    /// Races the inner future against a timer.
    ///
    /// The timer is only created when the inner future first returns `Pending`: a call that
    /// completes on its first poll never touches tokio's timer wheel, which is most of what a
    /// timeout costs.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        limit: Limit,
        expires_as_deadline: bool,
        // The deadline is the caller's: a `DeadlineExceeded` from below is reported as such.
        by_caller: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn attempt(inner: F, timeout: Duration, deadline: Option<Instant>) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            limit: Limit::Attempt { timeout, deadline },
            expires_as_deadline: false,
            by_caller: false,
        }
    }

    pub(crate) fn deadline(inner: F, at: Instant, by_caller: bool) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            limit: Limit::Deadline(at),
            expires_as_deadline: true,
            by_caller,
        }
    }

    pub(crate) fn expired(by_caller: bool) -> Self {
        Self {
            inner: None,
            sleep: None,
            limit: Limit::Expired,
            expires_as_deadline: true,
            by_caller,
        }
    }

    fn exceeded(by_caller: bool) -> BoxError {
        if by_caller {
            DeadlineExceeded::of_caller().into()
        } else {
            DeadlineExceeded::new().into()
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Self::exceeded(*this.by_caller)));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(|error| {
                let error: BoxError = error.into();
                // A timeout below that stopped at this deadline: say whose it was.
                if *this.by_caller && error.is::<DeadlineExceeded>() {
                    return Self::exceeded(true);
                }
                error
            }));
        }
        if this.sleep.is_none() {
            let at = match *this.limit {
                Limit::Attempt { timeout, deadline } => {
                    let end = Instant::now() + timeout;
                    match deadline {
                        Some(deadline) if deadline < end => {
                            *this.expires_as_deadline = true;
                            deadline
                        }
                        _ => end,
                    }
                }
                Limit::Deadline(at) => at,
                Limit::Expired => return Poll::Ready(Err(Self::exceeded(*this.by_caller))),
            };
            this.sleep.set(Some(sleep_until(at)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(if *this.expires_as_deadline {
                Self::exceeded(*this.by_caller)
            } else {
                Elapsed::new().into()
            })),
            _ => Poll::Pending,
        }
    }
}
