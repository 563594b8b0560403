use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use crate::BoxError;
use crate::deadline::{CarriesDeadline, Deadline};

/// How a [`Timeout`] learns a request's deadline.
pub trait ReadDeadline<Req> {
    /// The request's deadline, if any.
    fn deadline(&self, request: &Req) -> Option<Deadline>;
}

/// Ignore deadlines: the timeout applies alone (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore;

impl<Req> ReadDeadline<Req> for Ignore {
    fn deadline(&self, _: &Req) -> Option<Deadline> {
        None
    }
}

/// Read the deadline the request carries ([`CarriesDeadline`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromRequest;

impl<Req: CarriesDeadline> ReadDeadline<Req> for FromRequest {
    fn deadline(&self, request: &Req) -> Option<Deadline> {
        request.deadline()
    }
}

/// Bounds each call to the inner service; see the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer<D = Ignore> {
    timeout: Duration,
    read: D,
}

impl TimeoutLayer {
    /// Fails an attempt with [`Elapsed`](super::error::Elapsed) after `timeout`, counted from
    /// the first poll of the response future (when the inner service starts working).
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            read: Ignore,
        }
    }

    /// Also stop at the request's deadline when it comes first, and fail at once with
    /// [`DeadlineExceeded`](super::error::DeadlineExceeded) when it has already passed.
    #[must_use]
    pub fn within_deadline(self) -> TimeoutLayer<FromRequest> {
        TimeoutLayer {
            timeout: self.timeout,
            read: FromRequest,
        }
    }
}

impl<S, D: Clone> Layer<S> for TimeoutLayer<D> {
    type Service = Timeout<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
            read: self.read.clone(),
        }
    }
}

/// Per-attempt timeout middleware made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S, D = Ignore> {
    inner: S,
    timeout: Duration,
    read: D,
}

impl<S, D> Timeout<S, D> {
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

impl<S, D, Req> Service<Req> for Timeout<S, D>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    D: ReadDeadline<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let deadline = self.read.deadline(&request);
        if deadline.is_some_and(Deadline::is_expired) {
            return ResponseFuture::expired(false);
        }
        ResponseFuture::attempt(
            self.inner.call(request),
            self.timeout,
            deadline.map(Deadline::instant),
        )
    }
}

/// Gives each request an overall deadline; see the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    budget: Duration,
    floor: Duration,
}

impl DeadlineLayer {
    /// Requests must be answered within `budget`, or by the deadline they already carry if that
    /// is earlier.
    #[must_use]
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            floor: Duration::ZERO,
        }
    }

    /// Raise a deadline the request carries to at least `floor` from now (never past the
    /// budget). For a service that faces untrusted clients: a caller's `x-request-deadline: 1`
    /// would otherwise make every call it causes time out at once.
    #[must_use]
    pub fn floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            budget: self.budget,
            floor: self.floor,
            _marker: PhantomData,
        }
    }
}

/// Overall-deadline middleware made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    budget: Duration,
    floor: Duration,
    _marker: PhantomData<fn()>,
}

impl<S> DeadlineService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for DeadlineService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: CarriesDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let own = Deadline::after(self.budget);
        let callers = request
            .deadline()
            .map(|d| d.max(Deadline::after(self.floor)));
        let (deadline, by_caller) = match callers {
            Some(callers) if callers < own => (callers, true),
            _ => (own, false),
        };
        if deadline.is_expired() {
            return ResponseFuture::expired(by_caller);
        }
        request.set_deadline(deadline);
        ResponseFuture::deadline(self.inner.call(request), deadline.instant(), by_caller)
    }
}
