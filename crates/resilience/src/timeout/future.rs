//! Response future of the timeout and deadline layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::error::{DeadlineExceeded, Elapsed};
use crate::BoxError;

#[derive(Debug, Clone, Copy)]
enum Limit {
    Timeout,
    Deadline,
}

pin_project! {
    /// Races the inner future against a timer (held inline: no allocation).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        limit: Limit,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn timeout(inner: F, at: Instant) -> Self {
        Self {
            inner: Some(inner),
            sleep: Some(sleep_until(at)),
            limit: Limit::Timeout,
        }
    }

    pub(crate) fn deadline(inner: F, at: Instant) -> Self {
        Self {
            inner: Some(inner),
            sleep: Some(sleep_until(at)),
            limit: Limit::Deadline,
        }
    }

    pub(crate) fn expired() -> Self {
        Self {
            inner: None,
            sleep: None,
            limit: Limit::Deadline,
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
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(DeadlineExceeded::new().into()));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(match this.limit {
                Limit::Timeout => Elapsed::new().into(),
                Limit::Deadline => DeadlineExceeded::new().into(),
            })),
            _ => Poll::Pending,
        }
    }
}
