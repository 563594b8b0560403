//! The second tier and the invalidation bus, as traits: Redis implements both (feature
//! `redis`); another store or broker (NATS, say) can too.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::cache::BoxError;

/// A shared cache behind the in-process one (Redis, typically). Errors are reported, counted
/// and then ignored: the cache goes on with its first tier and the loader.
#[async_trait]
pub trait SecondTier<K, V>: Send + Sync + 'static {
    /// The value for `key`, if stored.
    async fn get(&self, key: &K) -> Result<Option<V>, BoxError>;
    /// Stores `value` for `ttl`.
    async fn set(&self, key: &K, value: &V, ttl: Duration) -> Result<(), BoxError>;
    /// Removes `key`.
    async fn remove(&self, key: &K) -> Result<(), BoxError>;
}

/// Carries invalidations between instances, so each drops its first-tier copy.
#[async_trait]
pub trait InvalidationBus: Send + Sync + 'static {
    /// Tells every subscriber (this instance included) that `key` changed.
    async fn publish(&self, key: String) -> Result<(), BoxError>;
    /// The keys other instances invalidate, for as long as the stream is held. An
    /// implementation reconnects on its own; keys published while disconnected may be lost,
    /// which is why first-tier TTLs should stay short.
    fn subscribe(&self) -> BoxStream<'static, String>;
}
