//! Prices from the catalog: what checkout re-prices an order's lines by (a price the client
//! sent is never believed), and what a cart shows its lines at.

use std::sync::Arc;

use crate::client::Upstream;
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use mainstay_resilience::deadline::{CarriesDeadline, Deadline};
use serde::Deserialize;
use tower::ServiceExt;

/// A product as checkout prices it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Priced {
    /// Its name.
    pub name: String,
    /// The price of one, in minor units of `currency`.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// The catalog could not say.
#[derive(Debug, thiserror::Error)]
#[error("the catalog: {0}")]
pub struct PriceError(pub String);

/// Where prices come from.
#[async_trait]
pub trait Prices: Send + Sync + 'static {
    /// The product `product_id` (a slug: checked by the caller), or `None` when there is none;
    /// asked by `deadline` when the checkout that asks has one (its caller's budget).
    async fn price(
        &self,
        product_id: &str,
        deadline: Option<Deadline>,
    ) -> Result<Option<Priced>, PriceError>;
}

#[async_trait]
impl<P: Prices + ?Sized> Prices for Arc<P> {
    async fn price(
        &self,
        product_id: &str,
        deadline: Option<Deadline>,
    ) -> Result<Option<Priced>, PriceError> {
        (**self).price(product_id, deadline).await
    }
}

/// The most bytes of a product the catalog may answer with.
const MAX_PRODUCT_BYTES: usize = 64 * 1024;

/// [`Prices`] from the catalog service, through the client stack
/// ([`crate::client::upstream`]: deadline, adaptive limit, retries, bulkhead, balancing,
/// breakers). A call ends by the checkout's deadline or the stack's `REQUEST_TIMEOUT_MS`,
/// whichever is sooner, and the catalog is told the time left.
#[derive(Clone)]
pub struct HttpCatalog {
    client: Upstream,
}

impl std::fmt::Debug for HttpCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCatalog").finish_non_exhaustive()
    }
}

impl HttpCatalog {
    /// Prices from the catalog `client` calls.
    #[must_use]
    pub fn new(client: Upstream) -> Self {
        Self { client }
    }

    /// Prices from the catalog at `endpoints`, through a client stack of its own
    /// ([`crate::client::upstream`]) whose calls end by `deadline`, each attempt by
    /// `attempt_timeout`, counted in `kit`'s metrics.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[must_use]
    pub fn at(
        endpoints: Vec<mainstay_discovery::Endpoint>,
        deadline: std::time::Duration,
        attempt_timeout: std::time::Duration,
        kit: &crate::Kit,
    ) -> Self {
        Self::new(crate::client::upstream(
            "catalog",
            mainstay_discovery::fixed(endpoints),
            crate::client::ClientSettings {
                deadline,
                attempt_timeout,
                max_concurrent: 256,
            },
            &kit.metrics,
            &kit.resilience,
        ))
    }
}

impl HttpCatalog {
    /// The catalog's JSON answer to `GET path` (at most `max_bytes`), or `None` when it has
    /// nothing there (`404`).
    ///
    /// # Errors
    ///
    /// The catalog did not answer `200` with that much JSON at most.
    pub async fn get_json(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<serde_json::Value>, PriceError> {
        self.get(path, None, max_bytes).await
    }

    /// `GET path`, by `deadline` when there is one, read as `T` (at most `max_bytes`); `None`
    /// on `404`.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        deadline: Option<Deadline>,
        max_bytes: usize,
    ) -> Result<Option<T>, PriceError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| PriceError(e.to_string()))?;
        // The client stack's own budget applies when it is sooner.
        if let Some(deadline) = deadline {
            request.set_deadline(deadline);
        }
        let response = self
            .client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| PriceError(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != StatusCode::OK {
            return Err(PriceError(format!("answered {status}")));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| PriceError(format!("reading {path}: {e}")))?
            .to_bytes();
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| PriceError(format!("unreadable JSON at {path}: {e}")))
    }
}

#[async_trait]
impl Prices for HttpCatalog {
    async fn price(
        &self,
        product_id: &str,
        deadline: Option<Deadline>,
    ) -> Result<Option<Priced>, PriceError> {
        self.get(
            &format!("/products/{product_id}"),
            deadline,
            MAX_PRODUCT_BYTES,
        )
        .await
    }
}
