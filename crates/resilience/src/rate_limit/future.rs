//! Response future of the rate limiters.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::error::RateLimited;
use super::{NoReport, Report, Status};
use crate::BoxError;

pin_project! {
    /// Either the inner future, whose response reports the limit, or an immediate
    /// [`RateLimited`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, H = NoReport> {
        #[pin]
        inner: Option<F>,
        limited: Option<RateLimited>,
        report: Option<(H, Status)>,
    }
}

impl<F, H> ResponseFuture<F, H> {
    pub(crate) fn called(inner: F, report: H, status: Status) -> Self {
        Self {
            inner: Some(inner),
            limited: None,
            report: Some((report, status)),
        }
    }

    pub(crate) fn limited(limited: RateLimited) -> Self {
        Self {
            inner: None,
            limited: Some(limited),
            report: None,
        }
    }
}

impl<F, H, T, E> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    H: Report<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => {
                let mut result = ready!(inner.poll(cx)).map_err(Into::into);
                if let (Ok(response), Some((report, status))) = (&mut result, this.report.take()) {
                    report.report(response, &status);
                }
                Poll::Ready(result)
            }
            None => Poll::Ready(Err(match this.limited.take() {
                Some(limited) => limited.into(),
                None => "rate limit future polled after completion".into(),
            })),
        }
    }
}
