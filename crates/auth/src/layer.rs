//! [`JwtLayer`]: bearer token validation as tower middleware.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::AuthError;
use crate::validator::{Checked, Validator};

/// Validates the bearer token of every request and puts its [`Principal`](crate::Principal) in
/// the request's extensions; refuses the request otherwise (see [`AuthError`] for the
/// statuses). The reason of a refusal is logged at INFO with the request's span; the token
/// never is.
///
/// In [`optional`](Self::optional) mode, a request without a bearer token passes through
/// without a principal (public routes that personalise when signed in); a request with a bad
/// token is still refused, so that a client learns its token has expired.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use jsonwebtoken::Algorithm;
/// use mainstay_auth::{JwtLayer, KeySet, Principal, Validator, VerifyingKey};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let validator = Validator::builder()
///     .issuer("https://users.example")
///     .audience("shop")
///     .keys(KeySet::new().with(VerifyingKey::hmac(Algorithm::HS256, &[7; 32])?))
///     .build()?;
/// let app: Router = Router::new()
///     // With the `axum` feature, `p: Principal` extracts it directly.
///     .route("/me", get(|Extension(p): Extension<Principal>| async move { p.subject().to_owned() }))
///     .layer(JwtLayer::new(validator));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JwtLayer {
    validator: Validator,
    optional: bool,
}

impl JwtLayer {
    /// Requires a valid bearer token on every request.
    #[must_use]
    pub fn new(validator: Validator) -> Self {
        Self {
            validator,
            optional: false,
        }
    }

    /// Lets requests without a bearer token through, without a principal.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = Jwt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Jwt {
            inner,
            validator: self.validator.clone(),
            optional: self.optional,
        }
    }
}

/// Bearer token validation middleware made by [`JwtLayer`].
#[derive(Clone)]
pub struct Jwt<S> {
    inner: S,
    validator: Validator,
    optional: bool,
}

impl<S: fmt::Debug> fmt::Debug for Jwt<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("inner", &self.inner)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl<S> Jwt<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pub(crate) fn bearer<B>(request: &Request<B>) -> Result<Option<&str>, AuthError> {
    bearer_token(request.headers())
}

/// The bearer token in `headers` (RFC 6750 §2.1), as [`JwtLayer`] reads it, for code that
/// authenticates outside the layer (a proxy deciding per route): `Ok(None)` when there is no
/// `Authorization` header or its scheme is not `Bearer` (in any case);
/// [`AuthError::Malformed`] when the header is repeated, is not visible ASCII, or carries an
/// empty token.
///
/// # Errors
///
/// [`AuthError::Malformed`], as above.
///
/// ```
/// use http::HeaderMap;
/// use mainstay_auth::bearer_token;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("authorization", "bEaReR abc.def.ghi".parse().unwrap());
/// assert_eq!(bearer_token(&headers).unwrap(), Some("abc.def.ghi"));
/// headers.append("authorization", "Bearer another".parse().unwrap());
/// assert!(bearer_token(&headers).is_err());
/// ```
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

fn refuse<B: From<Bytes>>(error: &AuthError) -> Response<B> {
    if matches!(error, AuthError::MissingToken) {
        tracing::debug!(reason = %error, "request refused");
    } else {
        tracing::info!(reason = %error, "request refused");
    }
    error.to_response()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Jwt<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let checked = match bearer(&request) {
            Ok(Some(token)) => self.validator.check(token),
            Ok(None) if self.optional => return ResponseFuture::called(self.inner.call(request)),
            Ok(None) => Checked::Invalid(AuthError::MissingToken),
            Err(error) => Checked::Invalid(error),
        };
        match checked {
            Checked::Valid(principal) => {
                request.extensions_mut().insert(principal);
                ResponseFuture::called(self.inner.call(request))
            }
            Checked::Invalid(error) => ResponseFuture::refused(refuse(&error)),
            Checked::NeedsKeys => {
                // The rare path: the JWKS must be fetched first. The ready service goes into
                // the future; its clone stays here and is made ready by the next poll_ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let validator = self.validator.clone();
                ResponseFuture::fetching(Box::pin(async move {
                    let validated = match bearer(&request) {
                        Ok(Some(token)) => validator.validate(token).await,
                        _ => Err(AuthError::Malformed),
                    };
                    match validated {
                        Ok(principal) => {
                            request.extensions_mut().insert(principal);
                            inner.call(request).await
                        }
                        Err(error) => Ok(refuse(&error)),
                    }
                }))
            }
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`Jwt`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Called { #[pin] future: F },
        Refused { response: Option<Response<B>> },
        Fetching { future: BoxFuture<Result<Response<B>, E>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    fn refused(response: Response<B>) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(response),
            },
        }
    }

    fn fetching(future: BoxFuture<Result<Response<B>, E>>) -> Self {
        Self {
            kind: Kind::Fetching { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
            Kind::Fetching { .. } => "fetching keys",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx),
            KindProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Fetching { future } => future.as_mut().poll(cx),
        }
    }
}
