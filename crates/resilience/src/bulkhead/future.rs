//! The bulkhead's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::error::Full;
use crate::BoxError;

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead): holds the slot until the inner future
    /// finishes or is dropped.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedSemaphorePermit>,
        full: Option<Full>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner: Some(inner),
            permit: Some(permit),
            full: None,
        }
    }

    pub(crate) fn full(full: Full) -> Self {
        Self {
            inner: None,
            permit: None,
            full: Some(full),
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
            Some(inner) => {
                let result = ready!(inner.poll(cx));
                // Free the slot as soon as the call is done, not when the future is dropped.
                this.permit.take();
                Poll::Ready(result.map_err(Into::into))
            }
            None => Poll::Ready(Err(this.full.take().unwrap_or_default().into())),
        }
    }
}
