//! Redis as the second tier ([`RedisTier`]) and as the invalidation bus ([`RedisBus`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use mainstay_cache::Cache;
//! use mainstay_cache::redis::{RedisBus, RedisTier};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), mainstay_cache::BoxError> {
//! let url = "redis://127.0.0.1:6379";
//! let products: Cache<u64, String> = Cache::builder("products")
//!     .ttl(Duration::from_secs(30)) // short: the safety net for a lost invalidation
//!     .second_tier(RedisTier::from_url(url, "catalog:products")?.version(3))
//!     .invalidation_bus(RedisBus::from_url(url, "catalog:invalidate")?)
//!     .build();
//! # Ok(()) }
//! ```

use std::fmt;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::BoxError;
use crate::tier::{InvalidationBus, SecondTier};

/// Turns values into bytes for the second tier and back.
pub trait Codec<V>: Send + Sync + 'static {
    /// Encodes a value, never as no bytes at all (an empty entry is an invalidation's
    /// tombstone).
    ///
    /// # Errors
    ///
    /// The value cannot be encoded.
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError>;
    /// Decodes a value.
    ///
    /// # Errors
    ///
    /// The bytes are not a value of this codec (written by another version, say).
    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

/// JSON through serde: readable in `redis-cli`, and the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The connection of one tier or bus: redis's own [`ConnectionManager`], one multiplexed
/// connection that serves concurrent commands, made on first use and made again after a
/// failure (the failing command returns its error at once). Made inside the first command, so
/// that a tier can be built outside a runtime, and a Redis that is down does not stop the
/// service from starting.
#[derive(Clone)]
struct Connections {
    client: redis::Client,
    manager: Arc<tokio::sync::OnceCell<ConnectionManager>>,
}

impl Connections {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            manager: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, BoxError> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                // One attempt per reconnection: a command that meets a refused connection
                // fails at once (the cache serves without Redis) and the next command tries
                // again, rather than every command waiting out a back-off while Redis is down.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(0);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        let mut connection = manager.clone();
        Ok(command.query_async(&mut connection).await?)
    }
}

/// Redis as a [`SecondTier`]: values under `<prefix>:v<version>:<key>`, with the entry's TTL.
///
/// Bumping the [`version`](Self::version) when the value's shape changes makes every instance
/// of the new release read fresh keys while the old release keeps its own.
///
/// A load writes with `SET … NX` (only where nothing is stored), and an invalidation replaces
/// the value with an empty tombstone that lives for [`tombstone`](Self::tombstone) (30 s by
/// default): a load on any instance that began before the invalidation cannot put its old
/// value back in that time, which should cover the longest load.
#[derive(Clone)]
pub struct RedisTier<C = Json> {
    connections: Connections,
    prefix: String,
    version: u32,
    tombstone: Duration,
    codec: C,
}

impl<C> fmt::Debug for RedisTier<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// A tier on `client`'s server. The connection is made on first use, so a Redis that is
    /// down does not stop the service from starting.
    pub fn new(client: redis::Client, prefix: impl Into<String>) -> Self {
        Self {
            connections: Connections::new(client),
            prefix: prefix.into(),
            version: 1,
            tombstone: Duration::from_secs(30),
            codec: Json,
        }
    }

    /// A tier on the Redis at `url` (`redis://host:port/db`); see [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn from_url(url: &str, prefix: impl Into<String>) -> Result<Self, BoxError> {
        Ok(Self::new(redis::Client::open(url)?, prefix))
    }
}

impl<C> RedisTier<C> {
    /// The key version (default 1).
    #[must_use]
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// How long an invalidated key keeps loads from writing it (default 30 s): longer than
    /// any load takes.
    #[must_use]
    pub fn tombstone(mut self, lifetime: Duration) -> Self {
        self.tombstone = lifetime;
        self
    }

    /// Another codec.
    pub fn codec<D>(self, codec: D) -> RedisTier<D> {
        RedisTier {
            connections: self.connections,
            prefix: self.prefix,
            version: self.version,
            tombstone: self.tombstone,
            codec,
        }
    }

    fn set_command(&self, key: &impl Display, bytes: Vec<u8>, ttl: Duration) -> redis::Cmd {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(self.key(key)).arg(bytes).arg("PX").arg(millis);
        command
    }

    fn key(&self, key: &impl Display) -> String {
        format!("{}:v{}:{key}", self.prefix, self.version)
    }
}

#[async_trait]
impl<K, V, C> SecondTier<K, V> for RedisTier<C>
where
    K: Display + Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: Codec<V>,
{
    async fn get(&self, key: &K) -> Result<Option<V>, BoxError> {
        let bytes: Option<Vec<u8>> = self
            .connections
            .run(redis::cmd("GET").arg(self.key(key)))
            .await?;
        // An empty value is a tombstone: no encoded value is empty.
        bytes
            .filter(|b| !b.is_empty())
            .map(|b| self.codec.decode(&b))
            .transpose()
    }

    async fn set(&self, key: &K, value: &V, ttl: Duration) -> Result<(), BoxError> {
        let command = self.set_command(key, self.codec.encode(value)?, ttl);
        self.connections.run::<()>(&command).await
    }

    async fn fill(&self, key: &K, value: &V, ttl: Duration) -> Result<(), BoxError>
    where
        K: Sync,
        V: Sync,
    {
        let mut command = self.set_command(key, self.codec.encode(value)?, ttl);
        command.arg("NX");
        // `nil` when something (a value, a tombstone) was there: nothing to do.
        self.connections
            .run::<Option<String>>(&command)
            .await
            .map(drop)
    }

    async fn remove(&self, key: &K) -> Result<(), BoxError> {
        let command = self.set_command(key, Vec::new(), self.tombstone);
        self.connections.run::<()>(&command).await
    }
}

/// Redis pub/sub as an [`InvalidationBus`] on one channel. The subscription reconnects with a
/// growing pause (100 ms to 5 s) when Redis goes away; keys published meanwhile are lost,
/// which the first tier's TTL bounds.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    connections: Connections,
    channel: String,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// The bus on `channel` of `client`'s server: a connection for publishing (made on first
    /// use) and one subscription per [`subscribe`](InvalidationBus::subscribe).
    pub fn new(client: redis::Client, channel: impl Into<String>) -> Self {
        Self {
            connections: Connections::new(client.clone()),
            client,
            channel: channel.into(),
        }
    }

    /// The bus on `channel` of the Redis at `url`; see [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn from_url(url: &str, channel: impl Into<String>) -> Result<Self, BoxError> {
        Ok(Self::new(redis::Client::open(url)?, channel))
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    async fn publish(&self, key: String) -> Result<(), BoxError> {
        self.connections
            .run::<i64>(redis::cmd("PUBLISH").arg(&self.channel).arg(key))
            .await
            .map(drop)
    }

    fn subscribe(&self) -> BoxStream<'static, String> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<String>(1024);
        let (client, channel) = (self.client.clone(), self.channel.clone());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            while !sender.is_closed() {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            pause = Duration::from_millis(100);
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let Ok(key) = message.get_payload::<String>() else {
                                    continue;
                                };
                                if sender.send(key).await.is_err() {
                                    return;
                                }
                            }
                            tracing::warn!(%channel, "invalidation subscription lost; reconnecting");
                        }
                        Err(error) => {
                            tracing::warn!(%channel, %error, "cannot subscribe to invalidations");
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%channel, %error, "cannot reach Redis for invalidations");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|key| (key, receiver))
        })
        .boxed()
    }
}
