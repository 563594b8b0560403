use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::breaker::Validated;
use super::error::ConfigError;
use super::future::{Permit, ResponseFuture};
use super::{Breaker, Builder, Classify, DefaultClassifier};
use crate::BoxError;
use crate::keyed::{MakeKey, Registry};

/// One [`Breaker`] per key (host, route, tenant), all built from one [`Builder`]'s settings, in
/// a registry that holds at most `max_keys` breakers (see [`crate::keyed`]). A breaker that a
/// call in flight (or a clone from [`breaker`](Self::breaker)) holds is never replaced.
///
/// ```
/// use mainstay_resilience::circuit_breaker::{Breaker, KeyedCircuitBreakerLayer, error::Open};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // One breaker per upstream host: a failing host does not cut off the others.
/// let layer = KeyedCircuitBreakerLayer::new(
///     Breaker::builder().count_window(2).minimum_calls(2),
///     |host: &&'static str| *host,
/// )
/// .unwrap();
/// let mut service = layer.layer(service_fn(|host: &'static str| async move {
///     if host == "down.example" { Err("refused") } else { Ok(host) }
/// }));
/// for _ in 0..2 {
///     let _ = service.ready().await.unwrap().call("down.example").await;
/// }
/// let refused = service.ready().await.unwrap().call("down.example").await.unwrap_err();
/// assert!(refused.is::<Open>());
/// assert_eq!(service.ready().await.unwrap().call("up.example").await.unwrap(), "up.example");
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<M, K, C = DefaultClassifier> {
    make_key: M,
    classifier: C,
    settings: Arc<Validated>,
    registry: Arc<Registry<K, Breaker>>,
}

impl<M: Clone, K, C: Clone> Clone for KeyedCircuitBreakerLayer<M, K, C> {
    fn clone(&self) -> Self {
        Self {
            make_key: self.make_key.clone(),
            classifier: self.classifier.clone(),
            settings: self.settings.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<M, K, C> std::fmt::Debug for KeyedCircuitBreakerLayer<M, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("settings", &self.settings)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<M, K: Hash + Eq + Clone> KeyedCircuitBreakerLayer<M, K> {
    /// Breakers configured by `builder`, keyed by `make_key`, at most 10,000 of them.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the builder's settings are out of range.
    pub fn new(builder: Builder, make_key: M) -> Result<Self, ConfigError> {
        Self::with_max_keys(builder, make_key, 10_000)
    }

    /// As [`new`](Self::new), with at most `max_keys` breakers kept.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the builder's settings are out of range.
    pub fn with_max_keys(
        builder: Builder,
        make_key: M,
        max_keys: usize,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            make_key,
            classifier: DefaultClassifier,
            settings: Arc::new(builder.validate()?),
            registry: Arc::new(Registry::new(max_keys, Breaker::is_shared)),
        })
    }
}

impl<M, K: Hash + Eq + Clone, C> KeyedCircuitBreakerLayer<M, K, C> {
    /// Uses `classifier` to decide which results are failures.
    pub fn classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<M, K, C2> {
        KeyedCircuitBreakerLayer {
            make_key: self.make_key,
            classifier,
            settings: self.settings,
            registry: self.registry,
        }
    }

    /// The breaker of `key` (made if it did not exist yet), to read its state or switch it.
    pub fn breaker(&self, key: &K) -> Breaker {
        self.registry.get_or_insert(key, || self.settings.make())
    }

    /// Breakers currently kept.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// Whether no breaker exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S, M: Clone, K, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<M, K, C> {
    type Service = KeyedCircuitBreaker<S, M, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware made by [`KeyedCircuitBreakerLayer`]. The breaker is chosen in `call`, once the
/// key is known.
pub struct KeyedCircuitBreaker<S, M, K, C = DefaultClassifier> {
    inner: S,
    layer: KeyedCircuitBreakerLayer<M, K, C>,
}

impl<S: Clone, M: Clone, K, C: Clone> Clone for KeyedCircuitBreaker<S, M, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, M, K, C> std::fmt::Debug for KeyedCircuitBreaker<S, M, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, M, C, Req> Service<Req> for KeyedCircuitBreaker<S, M, M::Key, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    M: MakeKey<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.layer.make_key.make_key(&request);
        let breaker = self.layer.breaker(&key);
        match breaker.acquire() {
            Err(open) => ResponseFuture::refused(open),
            Ok(admit) => ResponseFuture::called(
                self.inner.call(request),
                Permit::new(breaker, admit),
                self.layer.classifier.clone(),
            ),
        }
    }
}
