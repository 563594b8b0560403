use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

use super::error::Full;
use super::future::ResponseFuture;
use crate::BoxError;
use crate::keyed::{MakeKey, Registry};

/// A bulkhead per key (tenant, user, route): one noisy key cannot take every slot.
///
/// Each key gets `max_concurrent` slots; a call whose key has none free is rejected at once with
/// [`Full`]. At most `max_keys` keys are tracked (see [`crate::keyed`]).
///
/// ```
/// use mainstay_resilience::bulkhead::{KeyedBulkheadLayer, error::Full};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedBulkheadLayer::new(1, |tenant: &&'static str| *tenant);
/// let mut service = layer.layer(service_fn(|tenant: &'static str| async move {
///     Ok::<_, std::convert::Infallible>(tenant)
/// }));
/// let busy = service.ready().await.unwrap().call("acme");
/// let refused = service.ready().await.unwrap().call("acme").await.unwrap_err();
/// assert!(refused.is::<Full>());
/// assert_eq!(service.ready().await.unwrap().call("globex").await.unwrap(), "globex");
/// # drop(busy);
/// # }
/// ```
pub struct KeyedBulkheadLayer<M, K> {
    make_key: M,
    max_concurrent: usize,
    registry: Arc<Registry<K, Arc<Semaphore>>>,
}

impl<M: Clone, K> Clone for KeyedBulkheadLayer<M, K> {
    fn clone(&self) -> Self {
        Self {
            make_key: self.make_key.clone(),
            max_concurrent: self.max_concurrent,
            registry: self.registry.clone(),
        }
    }
}

impl<M, K> std::fmt::Debug for KeyedBulkheadLayer<M, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBulkheadLayer")
            .field("max_concurrent", &self.max_concurrent)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<M, K: Hash + Eq + Clone> KeyedBulkheadLayer<M, K> {
    /// `max_concurrent` slots per key (at least one), keys made by `make_key`, at most 10,000
    /// keys tracked.
    pub fn new(max_concurrent: usize, make_key: M) -> Self {
        Self::with_max_keys(max_concurrent, make_key, 10_000)
    }

    /// As [`new`](Self::new), with at most `max_keys` keys tracked.
    pub fn with_max_keys(max_concurrent: usize, make_key: M, max_keys: usize) -> Self {
        Self {
            make_key,
            max_concurrent: max_concurrent.clamp(1, Semaphore::MAX_PERMITS),
            registry: Arc::new(Registry::new(max_keys, |semaphore: &Arc<Semaphore>| {
                // Every permit holds the semaphore.
                Arc::strong_count(semaphore) > 1
            })),
        }
    }

    /// Free slots of `key` right now.
    pub fn available(&self, key: &K) -> usize {
        self.semaphore(key).available_permits()
    }

    fn semaphore(&self, key: &K) -> Arc<Semaphore> {
        self.registry
            .get_or_insert(key, || Arc::new(Semaphore::new(self.max_concurrent)))
    }
}

impl<S, M: Clone, K> Layer<S> for KeyedBulkheadLayer<M, K> {
    type Service = KeyedBulkhead<S, M, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkhead {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware made by [`KeyedBulkheadLayer`]; the slot is taken in `call`, once the key is known.
pub struct KeyedBulkhead<S, M, K> {
    inner: S,
    layer: KeyedBulkheadLayer<M, K>,
}

impl<S: Clone, M: Clone, K> Clone for KeyedBulkhead<S, M, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, M, K> std::fmt::Debug for KeyedBulkhead<S, M, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M, Req> Service<Req> for KeyedBulkhead<S, M, M::Key>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: MakeKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.layer.make_key.make_key(&request);
        match self.layer.semaphore(&key).try_acquire_owned() {
            Ok(permit) => ResponseFuture::called(self.inner.call(request), permit),
            Err(_) => ResponseFuture::full(Full::new()),
        }
    }
}
