//! Response future of the rate limiters.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::error::RateLimited;
use crate::BoxError;

pin_project! {
    /// Either the inner future or an immediate [`RateLimited`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        limited: Option<RateLimited>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F) -> Self {
        Self {
            inner: Some(inner),
            limited: None,
        }
    }

    pub(crate) fn limited(limited: RateLimited) -> Self {
        Self {
            inner: None,
            limited: Some(limited),
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
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(match this.limited.take() {
                Some(limited) => limited.into(),
                None => "rate limit future polled after completion".into(),
            })),
        }
    }
}
