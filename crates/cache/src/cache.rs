//! The cache-aside core: one moka cache, one load per key at a time.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use moka::notification::RemovalCause;
use tokio::time::Instant;

use crate::stats::{Counters, Stats, bump};
use crate::tier::{InvalidationBus, SecondTier};

/// An error a loader returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a lookup has no value to give.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The loader failed; every caller waiting on that load gets the same error.
    #[error("load failed: {0}")]
    Load(Arc<dyn std::error::Error + Send + Sync>),
    /// The loader panicked.
    #[error("the loader panicked")]
    LoaderPanicked,
}

#[derive(Clone)]
enum Slot<V> {
    Present(V),
    Absent,
    Failed(Arc<dyn std::error::Error + Send + Sync>),
}

/// A first-tier entry. Stored by value (not behind an `Arc`): a hit then clones the value
/// once, which is what a raw moka lookup costs too.
#[derive(Clone)]
struct Entry<V> {
    slot: Slot<V>,
    fresh_until: Instant,
    stale_until: Instant,
}

impl<V: Clone> Entry<V> {
    fn outcome(self) -> Outcome<V> {
        match self.slot {
            Slot::Present(value) => Ok(Some(value)),
            Slot::Absent => Ok(None),
            Slot::Failed(error) => Err(CacheError::Load(error)),
        }
    }
}

type Outcome<V> = Result<Option<V>, CacheError>;
type Flight<V> = Shared<BoxFuture<'static, Outcome<V>>>;
/// A load in flight, and the flag that supersedes it.
type Pending<V> = (Flight<V>, Arc<AtomicBool>);
type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;
type TtlFor<V> = Arc<dyn Fn(&V) -> Duration + Send + Sync>;

/// moka's clock type (moka's choice; this crate's expiry is by tokio time, see `Entry`).
#[allow(clippy::disallowed_types)]
type MokaInstant = std::time::Instant;

/// moka keeps an entry until its stale period ends.
struct UntilStale;

impl<K, V> moka::Expiry<K, Entry<V>> for UntilStale {
    fn expire_after_create(&self, _: &K, entry: &Entry<V>, _: MokaInstant) -> Option<Duration> {
        Some(entry.stale_until.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _: &K,
        entry: &Entry<V>,
        _: MokaInstant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.stale_until.saturating_duration_since(Instant::now()))
    }
}

type ParseKey<K> = Arc<dyn Fn(&str) -> Option<K> + Send + Sync>;

pub(crate) struct Keyed<K> {
    pub(crate) to_string: Arc<dyn Fn(&K) -> String + Send + Sync>,
    pub(crate) parse: ParseKey<K>,
}

/// Configures a [`Cache`].
pub struct CacheBuilder<K, V> {
    name: String,
    max_capacity: u64,
    ttl: Duration,
    stale_grace: Duration,
    negative_ttl: Option<Duration>,
    weigher: Option<Weigher<K, V>>,
    ttl_for: Option<TtlFor<V>>,
    second_tier: Option<Arc<dyn SecondTier<K, V>>>,
    tier_timeout: Duration,
    bus: Option<(Arc<dyn InvalidationBus>, Keyed<K>)>,
}

impl<K, V> fmt::Debug for CacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("max_capacity", &self.max_capacity)
            .field("ttl", &self.ttl)
            .field("stale_grace", &self.stale_grace)
            .field("negative_ttl", &self.negative_ttl)
            .field("second_tier", &self.second_tier.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// At most `capacity` entries (or total weight, with [`weigher`](Self::weigher)).
    #[must_use]
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.max_capacity = capacity;
        self
    }

    /// How long a loaded value is fresh (default 60 s).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A TTL per value (from an HTTP `max-age`, a price's validity…), instead of the fixed one.
    #[must_use]
    pub fn ttl_for(mut self, ttl_for: impl Fn(&V) -> Duration + Send + Sync + 'static) -> Self {
        self.ttl_for = Some(Arc::new(ttl_for));
        self
    }

    /// Stale-while-revalidate: for `grace` after a value's TTL, a lookup gets the stale value
    /// at once while one background load refreshes it (default: off).
    #[must_use]
    pub fn stale_while_revalidate(mut self, grace: Duration) -> Self {
        self.stale_grace = grace;
        self
    }

    /// Negative caching: a load that finds nothing (`Ok(None)`) or fails is remembered for
    /// `ttl`, so a missing or failing key does not reach the loader on every lookup. Off by
    /// default: then absent results and failures are never cached. A failed refresh never
    /// replaces a stale value that can still be served.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Weighs entries; [`max_capacity`](Self::max_capacity) then bounds the total weight.
    #[must_use]
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// A second tier consulted on a first-tier miss before the loader, and written after a
    /// load. Its failures are logged and counted and never fail a lookup.
    #[must_use]
    pub fn second_tier(mut self, tier: impl SecondTier<K, V>) -> Self {
        self.second_tier = Some(Arc::new(tier));
        self
    }

    /// How long a second-tier operation may take before the cache goes on without it
    /// (default 100 ms).
    #[must_use]
    pub fn second_tier_timeout(mut self, timeout: Duration) -> Self {
        self.tier_timeout = timeout;
        self
    }

    /// Broadcasts invalidations on `bus` and drops first-tier entries that other instances
    /// invalidate. Keys travel as their `Display` text and are parsed back with `FromStr`.
    #[must_use]
    pub fn invalidation_bus(mut self, bus: impl InvalidationBus) -> Self
    where
        K: fmt::Display + std::str::FromStr,
    {
        let keyed = Keyed {
            to_string: Arc::new(|key: &K| key.to_string()),
            parse: Arc::new(|text: &str| text.parse().ok()),
        };
        self.bus = Some((Arc::new(bus), keyed));
        self
    }

    /// The cache. With an invalidation bus, subscribing starts here and needs a tokio runtime.
    #[must_use]
    pub fn build(self) -> Cache<K, V> {
        let counters = Arc::new(Counters::default());
        let evictions = counters.clone();
        let mut l1 = moka::future::Cache::builder()
            .name(&self.name)
            .max_capacity(self.max_capacity)
            .expire_after(UntilStale)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    bump(&evictions.evictions);
                }
            });
        if let Some(weigher) = self.weigher {
            l1 = l1.weigher(move |key: &K, entry: &Entry<V>| match &entry.slot {
                Slot::Present(value) => weigher(key, value),
                _ => 1,
            });
        }
        let (bus, keyed) = match self.bus {
            Some((bus, keyed)) => (Some(bus), Some(keyed)),
            None => (None, None),
        };
        let cache = Cache(Arc::new(Inner {
            name: self.name,
            l1: l1.build(),
            inflight: Mutex::new(HashMap::new()),
            ttl: self.ttl,
            stale_grace: self.stale_grace,
            negative_ttl: self.negative_ttl,
            ttl_for: self.ttl_for,
            counters,
            second_tier: self.second_tier,
            tier_timeout: self.tier_timeout,
            bus,
            keyed,
        }));
        cache.subscribe();
        cache
    }
}

struct Inner<K, V> {
    name: String,
    l1: moka::future::Cache<K, Entry<V>>,
    /// The load in flight per key, with the flag that an invalidation or a write of the key
    /// sets: a superseded load publishes nothing, and nobody joins it any more.
    inflight: Mutex<HashMap<K, Pending<V>>>,
    ttl: Duration,
    stale_grace: Duration,
    negative_ttl: Option<Duration>,
    ttl_for: Option<TtlFor<V>>,
    counters: Arc<Counters>,
    second_tier: Option<Arc<dyn SecondTier<K, V>>>,
    tier_timeout: Duration,
    bus: Option<Arc<dyn InvalidationBus>>,
    keyed: Option<Keyed<K>>,
}

/// A cache-aside cache that never stampedes; cheap to clone (clones share everything).
///
/// [`get_or_load`](Self::get_or_load) answers from the first tier (moka) when it can; on a miss,
/// concurrent callers for one key share **one** load, which runs on its own task: a caller that
/// is cancelled (client gone, timeout) neither aborts nor restarts it, and the value still lands
/// in the cache. The load tries the second tier, if any, then the loader.
///
/// ```
/// use std::time::Duration;
/// use mainstay_cache::Cache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mainstay_cache::CacheError> {
/// let products: Cache<u64, String> = Cache::builder("products")
///     .max_capacity(10_000)
///     .ttl(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(5))
///     .build();
///
/// let name = products
///     .get_or_load(&42, || async { Ok::<_, std::io::Error>(Some("teapot".to_owned())) })
///     .await?;
/// assert_eq!(name.as_deref(), Some("teapot"));
/// # Ok(())
/// # }
/// ```
pub struct Cache<K, V>(Arc<Inner<K, V>>);

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.0.name)
            .field("entries", &self.0.l1.entry_count())
            .finish_non_exhaustive()
    }
}

/// Removes a key's flight when its load task ends, however it ends (unless a newer flight
/// has replaced it).
struct Landed<K: Hash + Eq, V> {
    inner: Arc<Inner<K, V>>,
    key: K,
    superseded: Arc<AtomicBool>,
}

impl<K: Hash + Eq, V> Drop for Landed<K, V> {
    fn drop(&mut self) {
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(&self.key)
            .is_some_and(|(_, flag)| Arc::ptr_eq(flag, &self.superseded))
        {
            inflight.remove(&self.key);
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Configures a cache; `name` labels its logs and metrics.
    pub fn builder(name: impl Into<String>) -> CacheBuilder<K, V> {
        CacheBuilder {
            name: name.into(),
            max_capacity: 10_000,
            ttl: Duration::from_secs(60),
            stale_grace: Duration::ZERO,
            negative_ttl: None,
            weigher: None,
            ttl_for: None,
            second_tier: None,
            tier_timeout: Duration::from_millis(100),
            bus: None,
        }
    }

    /// The value for `key`: from the cache when fresh (or stale within the grace, refreshing
    /// it in the background), else from one shared load. `Ok(None)` means the loader found
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`CacheError::Load`] with the loader's error (the same for every caller of that load, and
    /// remembered for the negative TTL if set); [`CacheError::LoaderPanicked`].
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &*self.0;
        let Some(entry) = inner.l1.get(key).await else {
            return self.miss(key, loader).await;
        };
        if Instant::now() < entry.fresh_until {
            bump(&inner.counters.hits);
            return entry.outcome();
        }
        self.not_fresh(key, entry, loader).await
    }

    /// An entry past its TTL: stale within the grace (served, refreshed in the background),
    /// or expired (a miss).
    async fn not_fresh<F, Fut, E>(&self, key: &K, entry: Entry<V>, loader: F) -> Outcome<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        if Instant::now() < entry.stale_until {
            bump(&self.0.counters.stale);
            // One refresh, in the background; the caller does not wait for it.
            drop(self.flight(key, loader));
            return entry.outcome();
        }
        self.miss(key, loader).await
    }

    async fn miss<F, Fut, E>(&self, key: &K, loader: F) -> Outcome<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        bump(&self.0.counters.misses);
        self.flight(key, loader).await
    }

    /// The value in the first tier, fresh or stale, without loading.
    pub async fn get(&self, key: &K) -> Option<V> {
        let entry = self.0.l1.get(key).await?;
        match entry.slot {
            Slot::Present(value) if Instant::now() < entry.stale_until => Some(value),
            _ => None,
        }
    }

    /// The load in flight for `key`, or a new one.
    fn flight<F, Fut, E>(&self, key: &K, loader: F) -> Flight<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let mut inflight = self
            .0
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((flight, _)) = inflight.get(key) {
            return flight.clone();
        }
        let superseded = Arc::new(AtomicBool::new(false));
        let landed = Landed {
            inner: self.0.clone(),
            key: key.clone(),
            superseded: Arc::clone(&superseded),
        };
        let task = tokio::spawn(async move {
            // `landed` lives for the whole load and clears the flight when it ends.
            let outcome = landed
                .inner
                .load(&landed.key, loader, &landed.superseded)
                .await;
            drop(landed);
            outcome
        });
        let flight = async move { task.await.unwrap_or(Err(CacheError::LoaderPanicked)) }
            .boxed()
            .shared();
        inflight.insert(key.clone(), (flight.clone(), superseded));
        flight
    }

    /// Puts a value in both tiers and tells other instances to drop theirs. A load of `key`
    /// in flight is superseded: it publishes nothing, and later lookups do not join it.
    pub async fn insert(&self, key: K, value: V) {
        let inner = &*self.0;
        inner.supersede(&key);
        inner.tier_set(&key, &value).await;
        inner
            .store(
                &key,
                Slot::Present(value.clone()),
                inner.ttl_of(&value),
                inner.stale_grace,
            )
            .await;
        inner.broadcast(&key).await;
    }

    /// Drops `key` from both tiers and tells other instances to drop it from theirs. A load of
    /// `key` in flight (here, or on an instance that hears of it) is superseded: it publishes
    /// nothing, and later lookups load anew. A second-tier removal that fails is retried in the
    /// background (five times, over about three seconds) before it is given up, loudly.
    pub async fn invalidate(&self, key: &K) {
        let inner = &*self.0;
        inner.supersede(key);
        inner.l1.invalidate(key).await;
        if let Some(tier) = &inner.second_tier
            && inner.tier_op("remove", tier.remove(key)).await.is_none()
        {
            self.retry_remove(key.clone());
        }
        inner.broadcast(key).await;
    }

    /// Removes `key` from the second tier again until it works, in the background.
    fn retry_remove(&self, key: K) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.0);
        runtime.spawn(async move {
            let Some(tier) = &inner.second_tier else {
                return;
            };
            let mut pause = Duration::from_millis(100);
            for _ in 0..5 {
                tokio::time::sleep(pause).await;
                if inner.tier_op("remove", tier.remove(&key)).await.is_some() {
                    return;
                }
                pause *= 2;
            }
            bump(&inner.counters.l2_errors);
            tracing::error!(cache = %inner.name, "second-tier invalidation failed five times: its entry stays until its TTL");
        });
    }

    /// Drops every first-tier entry of this instance (the second tier is left alone).
    pub fn invalidate_local(&self) {
        self.0.l1.invalidate_all();
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.0.counters.snapshot(self.0.l1.entry_count())
    }

    /// Runs moka's pending maintenance (evictions, counts) now; for tests and metrics.
    pub async fn run_pending_tasks(&self) {
        self.0.l1.run_pending_tasks().await;
    }

    /// A prometheus-client collector of this cache's counters.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    #[must_use]
    pub fn collector(&self) -> crate::stats::CacheCollector {
        let this = self.clone();
        crate::stats::CacheCollector::new(self.0.name.clone(), move || this.stats())
    }

    fn subscribe(&self) {
        let (Some(bus), Some(keyed)) = (&self.0.bus, &self.0.keyed) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(cache = %self.0.name, "no tokio runtime: invalidations from other instances are not received");
            return;
        };
        let mut stream = bus.subscribe();
        let parse = keyed.parse.clone();
        // The task holds the first tier only, so dropping every `Cache` ends it at the next message.
        let weak = Arc::downgrade(&self.0);
        runtime.spawn(async move {
            use futures_util::StreamExt;
            while let Some(text) = stream.next().await {
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                if let Some(key) = parse(&text) {
                    // A load here that began before the other instance's change is stale too.
                    inner.supersede(&key);
                    inner.l1.invalidate(&key).await;
                }
            }
        });
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Marks the load of `key` in flight, if any, as superseded, and forgets it so that later
    /// lookups start their own.
    fn supersede(&self, key: &K) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, superseded)) = inflight.remove(key) {
            superseded.store(true, Ordering::SeqCst);
        }
    }

    /// Stores a loaded slot in the first tier unless the load was superseded. Checked again
    /// after the write: an invalidation that came in between marked the flag before it
    /// dropped the entry, so either it dropped this write or this check sees the flag.
    async fn publish(
        &self,
        key: &K,
        slot: Slot<V>,
        ttl: Duration,
        grace: Duration,
        superseded: &AtomicBool,
    ) -> bool {
        if superseded.load(Ordering::SeqCst) {
            return false;
        }
        self.store(key, slot, ttl, grace).await;
        if superseded.load(Ordering::SeqCst) {
            self.l1.invalidate(key).await;
            return false;
        }
        true
    }

    fn ttl_of(&self, value: &V) -> Duration {
        self.ttl_for
            .as_ref()
            .map_or(self.ttl, |ttl_for| ttl_for(value))
    }

    async fn store(&self, key: &K, slot: Slot<V>, ttl: Duration, grace: Duration) {
        let now = Instant::now();
        let entry = Entry {
            slot,
            fresh_until: now + ttl,
            stale_until: now + ttl + grace,
        };
        self.l1.insert(key.clone(), entry).await;
    }

    async fn tier_op<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, BoxError>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.tier_timeout, op).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                bump(&self.counters.l2_errors);
                tracing::warn!(cache = %self.name, what, %error, "second tier failed; going on without it");
                None
            }
            Err(_) => {
                bump(&self.counters.l2_errors);
                tracing::warn!(cache = %self.name, what, timeout = ?self.tier_timeout, "second tier timed out; going on without it");
                None
            }
        }
    }

    async fn tier_set(&self, key: &K, value: &V) {
        if let Some(tier) = &self.second_tier {
            self.tier_op("set", tier.set(key, value, self.ttl_of(value)))
                .await;
        }
    }

    async fn broadcast(&self, key: &K) {
        if let (Some(bus), Some(keyed)) = (&self.bus, &self.keyed) {
            let text = (keyed.to_string)(key);
            self.tier_op("publish", bus.publish(text)).await;
        }
    }

    async fn load<F, Fut, E>(&self, key: &K, loader: F, superseded: &AtomicBool) -> Outcome<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        // A load that finished between this caller's lookup and its flight may have left a
        // fresh value: use it rather than load twice.
        if let Some(entry) = self.l1.get(key).await
            && Instant::now() < entry.fresh_until
        {
            return entry.outcome();
        }
        if let Some(tier) = &self.second_tier
            && let Some(Some(value)) = self.tier_op("get", tier.get(key)).await
        {
            bump(&self.counters.l2_hits);
            self.publish(
                key,
                Slot::Present(value.clone()),
                self.ttl_of(&value),
                self.stale_grace,
                superseded,
            )
            .await;
            return Ok(Some(value));
        }
        bump(&self.counters.loads);
        let loaded = loader().await.map_err(Into::<BoxError>::into);
        match loaded {
            Ok(Some(value)) => {
                let ttl = self.ttl_of(&value);
                let slot = Slot::Present(value.clone());
                if self
                    .publish(key, slot, ttl, self.stale_grace, superseded)
                    .await
                    && let Some(tier) = &self.second_tier
                {
                    // Where nothing is stored: not over an invalidation's tombstone.
                    self.tier_op("fill", tier.fill(key, &value, ttl)).await;
                }
                Ok(Some(value))
            }
            Ok(None) => {
                if let Some(ttl) = self.negative_ttl {
                    self.publish(key, Slot::Absent, ttl, Duration::ZERO, superseded)
                        .await;
                }
                Ok(None)
            }
            Err(error) => {
                bump(&self.counters.load_errors);
                let error: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
                tracing::debug!(cache = %self.name, %error, "load failed");
                if let Some(ttl) = self.negative_ttl {
                    // A stale value still inside its grace is better than a remembered failure.
                    let stale_usable = self.l1.get(key).await.is_some_and(|entry| {
                        matches!(entry.slot, Slot::Present(_)) && Instant::now() < entry.stale_until
                    });
                    if !stale_usable {
                        let slot = Slot::Failed(error.clone());
                        self.publish(key, slot, ttl, Duration::ZERO, superseded)
                            .await;
                    }
                }
                Err(CacheError::Load(error))
            }
        }
    }
}
