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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Config, Pool, Runtime};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::MultiplexedConnection;
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

fn pool(url: &str) -> Result<Pool, BoxError> {
    Ok(Config::from_url(url).create_pool(Some(Runtime::Tokio1))?)
}

/// Connections for one tier or bus. A multiplexed connection serves concurrent commands by
/// itself, so one is kept and cloned per command; the pool only makes (and health-checks) a
/// replacement after a failure. Taking from the pool per command would add a `PING` round
/// trip to each (deadpool-redis checks every connection it hands out again).
#[derive(Clone)]
struct Connections {
    pool: Pool,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl Connections {
    fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, BoxError> {
        if let Some(connection) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(connection);
        }
        let pooled = self.pool.get().await?;
        let connection: MultiplexedConnection = (*pooled).clone();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `command`; a failure drops the kept connection so that the next command starts over.
    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, BoxError> {
        let mut connection = self.get().await?;
        match command.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                self.current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                Err(error.into())
            }
        }
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
    /// A tier on an existing pool.
    pub fn new(pool: Pool, prefix: impl Into<String>) -> Self {
        Self {
            connections: Connections::new(pool),
            prefix: prefix.into(),
            version: 1,
            tombstone: Duration::from_secs(30),
            codec: Json,
        }
    }

    /// A tier with its own pool on `url` (`redis://host:port/db`). Connections are made on
    /// first use, so a Redis that is down does not stop the service from starting.
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn from_url(url: &str, prefix: impl Into<String>) -> Result<Self, BoxError> {
        Ok(Self::new(pool(url)?, prefix))
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
    /// The bus on `channel` of the Redis at `url`.
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn from_url(url: &str, channel: impl Into<String>) -> Result<Self, BoxError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connections: Connections::new(pool(url)?),
            channel: channel.into(),
        })
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
