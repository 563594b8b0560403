//! Admission: who is calling, and whether they may, before anything is buffered or forwarded.
//!
//! [`AdmissionLayer`] reads, for each request:
//!
//! 1. the client's address: the connection's peer, or `X-Forwarded-For` when the peer is a
//!    trusted proxy ([`shop_common::client_ip`]); an IPv6 client counts by its /64;
//! 2. the caller's principal, from a bearer token read by mainstay-auth's parser and checked
//!    by its validator, as the route's [`Access`] says: never looked at on the sign-in routes,
//!    checked when sent on open ones, required on the rest. A refused token costs the client
//!    address one request of its limit (a verification is work), so a client cannot try tokens
//!    faster than it may call;
//! 3. one request from the caller's rate limit: per principal when signed in, per client
//!    address otherwise; every response carries the limit's state as the `"gateway"` policy
//!    of the IETF draft's `RateLimit` and `RateLimit-Policy` headers, beside any limit the
//!    upstream reported.
//!
//! What it learned goes on in the request's extensions: [`Caller`], and the [`Principal`]
//! when signed in. Only a token whose key the validator has not fetched yet waits (and boxes a
//! future); everything else is decided in `call`. A request the route layer found no route
//! for ([`Unrouted`]) passes untouched: it is answered below with a 404, 405 or 400, and
//! nothing is forwarded.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{HeaderMap, Request};
use mainstay_auth::{AuthError, Principal, Validator};
use mainstay_resilience::http::append_rate_limit_headers;
use mainstay_resilience::rate_limit::error::RateLimited;
use mainstay_resilience::rate_limit::{KeyedRateLimitLayer, Status};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::problems::{self, GATEWAY_POLICY};
use crate::routes::{Access, Resolved, Unrouted};

/// The client of a request, as admission saw it: in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The connection's peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-*` headers are believed).
    pub trusted_peer: bool,
}

struct Shared {
    validator: Validator,
    per_principal: KeyedRateLimitLayer<(), String>,
    per_ip: KeyedRateLimitLayer<(), IpAddr>,
    trusted_proxies: Vec<IpAddr>,
}

/// Authenticates and rate-limits every request (see the [module](self)). Cheap to clone.
#[derive(Clone)]
pub struct AdmissionLayer(Arc<Shared>);

impl fmt::Debug for AdmissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("trusted_proxies", &self.0.trusted_proxies)
            .finish_non_exhaustive()
    }
}

/// The outcome of admission, decided without waiting.
enum Decision {
    Admitted(Option<Principal>, Status),
    Refused(Response),
    /// The token names a key the validator has yet to fetch.
    NeedsKeys(String),
}

impl AdmissionLayer {
    /// Admission with `validator`, the two limits, and the proxies whose `X-Forwarded-For` is
    /// believed.
    #[must_use]
    pub fn new(
        validator: Validator,
        per_principal: KeyedRateLimitLayer<(), String>,
        per_ip: KeyedRateLimitLayer<(), IpAddr>,
        trusted_proxies: Vec<IpAddr>,
    ) -> Self {
        Self(Arc::new(Shared {
            validator,
            per_principal,
            per_ip,
            trusted_proxies,
        }))
    }

    /// A refusal of the token: a 429 when the address is over its limit (the refusal costs
    /// it a request), the authentication error otherwise.
    fn refuse(&self, error: &AuthError, client: IpAddr) -> Response {
        match self.charge_address(client) {
            Err(limited) => problems::limited(&limited),
            // The refusal cost a request: it says what is left, like every other answer.
            Ok(status) => with_limit(error.to_response::<Body>(), &status),
        }
    }

    /// Takes one request from the client address's budget.
    fn charge_address(&self, client: IpAddr) -> Result<Status, RateLimited> {
        self.0.per_ip.check(&shop_common::limit_key(client))
    }

    /// Takes one request from the caller's budget.
    fn limit(&self, principal: Option<Principal>, client: IpAddr) -> Decision {
        let checked = match &principal {
            Some(principal) => self.0.per_principal.check(&principal.subject().to_owned()),
            None => self.charge_address(client),
        };
        match checked {
            Ok(status) => Decision::Admitted(principal, status),
            Err(limited) => {
                tracing::info!(%client, signed_in = principal.is_some(), "rate limited");
                Decision::Refused(problems::limited(&limited))
            }
        }
    }

    fn decide(&self, headers: &HeaderMap, access: Access, client: IpAddr) -> Decision {
        let token = match mainstay_auth::bearer_token(headers) {
            Ok(token) => token,
            Err(_) if access == Access::Public => None,
            Err(error) => return Decision::Refused(self.refuse(&error, client)),
        };
        match (token, access) {
            (_, Access::Public) | (None, Access::Open) => self.limit(None, client),
            (None, Access::SignedIn) => {
                Decision::Refused(self.refuse(&AuthError::MissingToken, client))
            }
            (Some(token), _) => match self.0.validator.validate_static(token.trim()) {
                Ok(principal) => self.limit(Some(principal), client),
                Err(AuthError::UnknownKey) => Decision::NeedsKeys(token.trim().to_owned()),
                Err(error) => Decision::Refused(self.refuse(&error, client)),
            },
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S> Service<Request<Body>> for Admission<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AdmissionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if request.extensions().get::<Unrouted>().is_some() {
            // Answered below with a 404, 405 or 400: nothing is forwarded, nobody admitted.
            return AdmissionFuture::unrouted(self.inner.call(request));
        }
        let access = request
            .extensions()
            .get::<Resolved>()
            .map_or(Access::Open, |resolved| resolved.route.access);
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let trusted_peer = self.layer.0.trusted_proxies.contains(&peer);
        let client = shop_common::client_ip(peer, request.headers(), &self.layer.0.trusted_proxies);
        request
            .extensions_mut()
            .insert(Caller { peer, trusted_peer });
        match self.layer.decide(request.headers(), access, client) {
            Decision::Admitted(principal, limit) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                AdmissionFuture::admitted(self.inner.call(request), limit)
            }
            Decision::Refused(response) => AdmissionFuture::refused(response),
            Decision::NeedsKeys(token) => {
                // The rare path: the key set must be fetched first. Waiting for it is charged
                // to the address before it starts (a client cannot make the gateway wait for
                // keys faster than it may call), and a refusal after it is not charged again.
                let spent = match self.layer.charge_address(client) {
                    Ok(status) => status,
                    Err(limited) => return AdmissionFuture::refused(problems::limited(&limited)),
                };
                // The ready service goes into the future; its clone stays, to be made ready by
                // the next poll_ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let layer = self.layer.clone();
                AdmissionFuture::fetching(Box::pin(async move {
                    let decision = match layer.0.validator.validate(&token).await {
                        Ok(principal) => layer.limit(Some(principal), client),
                        Err(error) => {
                            Decision::Refused(with_limit(error.to_response::<Body>(), &spent))
                        }
                    };
                    match decision {
                        Decision::Admitted(principal, limit) => {
                            if let Some(principal) = principal {
                                request.extensions_mut().insert(principal);
                            }
                            let response = inner.call(request).await?;
                            Ok(with_limit(response, &limit))
                        }
                        Decision::Refused(response) => Ok(response),
                        Decision::NeedsKeys(_) => Ok(with_limit(
                            AuthError::UnknownKey.to_response::<Body>(),
                            &spent,
                        )),
                    }
                }))
            }
        }
    }
}

/// `response`, with the caller's rate limit reported as the `"gateway"` policy.
fn with_limit(mut response: Response, limit: &Status) -> Response {
    append_rate_limit_headers(GATEWAY_POLICY, limit, response.headers_mut());
    response
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// Response future of [`Admission`].
    pub struct AdmissionFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Projected]
    enum State<F> {
        // Refused in `call`; `None` once answered.
        Refused { response: Option<Response> },
        // Admitted in `call`: the inner service's answer, to get the limit's headers.
        Admitted { #[pin] inner: F, limit: Option<Status> },
        // Waiting for the key set, then the inner service.
        Fetching { future: BoxFuture },
    }
}

impl<F> AdmissionFuture<F> {
    fn refused(response: Response) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    fn admitted(inner: F, limit: Status) -> Self {
        Self {
            state: State::Admitted {
                inner,
                limit: Some(limit),
            },
        }
    }

    fn unrouted(inner: F) -> Self {
        Self {
            state: State::Admitted { inner, limit: None },
        }
    }

    fn fetching(future: BoxFuture) -> Self {
        Self {
            state: State::Fetching { future },
        }
    }
}

impl<F> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projected::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("an admission future polled after it completed"))),
            Projected::Admitted { inner, limit } => {
                let response = ready!(inner.poll(cx))?;
                Poll::Ready(Ok(match limit.take() {
                    Some(limit) => with_limit(response, &limit),
                    None => response,
                }))
            }
            Projected::Fetching { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F> fmt::Debug for AdmissionFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionFuture")
    }
}
