//! [`RequireScopeLayer`] and [`RequireRoleLayer`]: authorization after [`JwtLayer`](crate::JwtLayer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::AuthError;
use crate::principal::Principal;

#[derive(Debug)]
enum Requirement {
    Scope(String),
    Role(String),
}

impl Requirement {
    fn check(&self, principal: Option<&Principal>) -> Result<(), AuthError> {
        let principal = principal.ok_or(AuthError::MissingToken)?;
        match self {
            Self::Scope(scope) if !principal.has_scope(scope) => {
                Err(AuthError::MissingScope(scope.clone()))
            }
            Self::Role(role) if !principal.has_role(role) => {
                Err(AuthError::MissingRole(role.clone()))
            }
            _ => Ok(()),
        }
    }
}

/// Refuses with 403 (`insufficient_scope`) a request whose principal lacks a scope, and with
/// 401 a request without a principal. Goes inside (after) [`JwtLayer`](crate::JwtLayer).
///
/// ```
/// use axum::{Router, routing::post};
/// use mainstay_auth::RequireScopeLayer;
///
/// let orders: Router = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .layer(RequireScopeLayer::new("orders:write"));
/// ```
#[derive(Debug, Clone)]
pub struct RequireScopeLayer(Arc<Requirement>);

impl RequireScopeLayer {
    /// Requires `scope`.
    #[must_use]
    pub fn new(scope: impl Into<String>) -> Self {
        Self(Arc::new(Requirement::Scope(scope.into())))
    }
}

/// Refuses with 403 a request whose principal lacks a role, and with 401 a request without a
/// principal. Goes inside (after) [`JwtLayer`](crate::JwtLayer).
#[derive(Debug, Clone)]
pub struct RequireRoleLayer(Arc<Requirement>);

impl RequireRoleLayer {
    /// Requires `role`.
    #[must_use]
    pub fn new(role: impl Into<String>) -> Self {
        Self(Arc::new(Requirement::Role(role.into())))
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = Require<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Require {
            inner,
            requirement: self.0.clone(),
        }
    }
}

impl<S> Layer<S> for RequireRoleLayer {
    type Service = Require<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Require {
            inner,
            requirement: self.0.clone(),
        }
    }
}

/// Authorization middleware made by [`RequireScopeLayer`] and [`RequireRoleLayer`].
#[derive(Clone)]
pub struct Require<S> {
    inner: S,
    requirement: Arc<Requirement>,
}

impl<S: fmt::Debug> fmt::Debug for Require<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Require")
            .field("inner", &self.inner)
            .field("requirement", &self.requirement)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Require<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RequireFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self
            .requirement
            .check(request.extensions().get::<Principal>())
        {
            Ok(()) => RequireFuture {
                kind: RequireKind::Called {
                    future: self.inner.call(request),
                },
            },
            Err(error) => {
                tracing::info!(reason = %error, "request refused");
                RequireFuture {
                    kind: RequireKind::Refused {
                        response: Some(error.to_response()),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Require`].
    pub struct RequireFuture<F, B> {
        #[pin]
        kind: RequireKind<F, B>,
    }
}

pin_project! {
    #[project = RequireKindProj]
    enum RequireKind<F, B> {
        Called { #[pin] future: F },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B> fmt::Debug for RequireFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RequireFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            RequireKindProj::Called { future } => future.poll(cx),
            RequireKindProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
