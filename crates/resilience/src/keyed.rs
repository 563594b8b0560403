//! Per-key middleware: rate limits, breakers and bulkheads per user, host, route or tenant.
//!
//! [`MakeKey`] extracts the key from a request. Breakers and bulkheads per key live in a
//! bounded registry: once it holds `max_keys` entries, adding a key first evicts the least
//! recently used entries that no call is using, so a flood of distinct keys cannot grow memory
//! without bound (a key whose state is in use by a call in flight is never evicted, so the
//! bound is soft only while that many calls are in flight).

// The registry serves the keyed breaker and bulkhead; a build with only `rate-limit` (whose
// keyed state lives in governor) does not use it.
#![cfg_attr(
    not(any(feature = "circuit-breaker", feature = "bulkhead")),
    allow(dead_code)
)]

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Extracts the key a request is limited or isolated by.
///
/// Implemented for closures `Fn(&Req) -> K`.
pub trait MakeKey<Req> {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `request`.
    fn make_key(&self, request: &Req) -> Self::Key;
}

impl<F, Req, K> MakeKey<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn make_key(&self, request: &Req) -> K {
        self(request)
    }
}

struct Entry<V> {
    value: Arc<V>,
    last_used: AtomicU64,
}

/// A bounded map from keys to shared state, evicting idle entries least recently used first.
pub(crate) struct Registry<K, V> {
    map: RwLock<HashMap<K, Entry<V>>>,
    max_keys: usize,
    tick: AtomicU64,
}

impl<K: Hash + Eq + Clone, V> Registry<K, V> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            max_keys: max_keys.max(1),
            tick: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().map_or(0, |map| map.len())
    }

    /// The state of `key`, made by `make` on first use.
    pub(crate) fn get_or_insert(&self, key: &K, make: impl FnOnce() -> V) -> Arc<V> {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Ok(map) = self.map.read()
            && let Some(entry) = map.get(key)
        {
            entry.last_used.store(now, Ordering::Relaxed);
            return entry.value.clone();
        }
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is still consistent (every write below is a single insert or remove).
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = map.get(key) {
            return entry.value.clone();
        }
        if map.len() >= self.max_keys {
            let excess = map.len() + 1 - self.max_keys;
            Self::evict(&mut map, excess);
        }
        let value = Arc::new(make());
        map.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        value
    }

    /// Removes up to `count` idle entries, least recently used first.
    fn evict(map: &mut HashMap<K, Entry<V>>, count: usize) {
        let mut idle: Vec<(u64, K)> = map
            .iter()
            .filter(|(_, entry)| Arc::strong_count(&entry.value) == 1)
            .map(|(key, entry)| (entry.last_used.load(Ordering::Relaxed), key.clone()))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in idle.into_iter().take(count) {
            map.remove(&key);
        }
    }
}

impl<K, V> std::fmt::Debug for Registry<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_idle_key_and_keeps_keys_in_use() {
        let registry: Registry<u32, &str> = Registry::new(2);
        let held = registry.get_or_insert(&1, || "one");
        registry.get_or_insert(&2, || "two");
        registry.get_or_insert(&3, || "three");
        assert_eq!(registry.len(), 2);
        // Key 1 is the oldest but in use: key 2 went instead.
        assert!(Arc::ptr_eq(
            &held,
            &registry.get_or_insert(&1, || "new one")
        ));
        assert_eq!(*registry.get_or_insert(&2, || "two again"), "two again");
    }
}
