//! The second tier and the invalidation bus, as traits: Redis implements both (feature
//! `redis`); another store or broker (NATS, say) can too.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::cache::BoxError;

/// A shared cache behind the in-process one (Redis, typically). Errors are reported, counted
/// and then ignored: the cache goes on with its first tier and the loader.
///
/// A load that began before an invalidation (on any instance) must not put its old value back:
/// loads write with [`fill`](Self::fill), which writes only where nothing is stored, and
/// [`remove`](Self::remove) leaves a tombstone that a `fill` does not replace for as long as a
/// load may take. [`set`](Self::set) (an explicit write of a new value) replaces anything.
#[async_trait]
pub trait SecondTier<K, V>: Send + Sync + 'static {
    /// The value for `key`, if stored (a tombstone is no value).
    async fn get(&self, key: &K) -> Result<Option<V>, BoxError>;
    /// Stores `value` for `ttl`, replacing whatever is there.
    async fn set(&self, key: &K, value: &V, ttl: Duration) -> Result<(), BoxError>;
    /// Stores a loaded `value` for `ttl` only if nothing is stored under `key`, not even a
    /// tombstone. The default is [`set`](Self::set), for a tier that cannot do better: a load
    /// that raced an invalidation may then leave its value for its TTL.
    async fn fill(&self, key: &K, value: &V, ttl: Duration) -> Result<(), BoxError>
    where
        K: Sync,
        V: Sync,
    {
        self.set(key, value, ttl).await
    }
    /// Removes `key`, leaving a tombstone that keeps a [`fill`](Self::fill) from writing for a
    /// while.
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
