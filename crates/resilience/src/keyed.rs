//! Per-key middleware: rate limits, breakers and bulkheads per user, host, route or tenant.
//!
//! [`MakeKey`] extracts the key from a request. The state of each key lives in a bounded
//! registry: once it holds `max_keys` entries, a new key replaces an old one chosen by the
//! CLOCK algorithm (second chance, an approximation of least recently used), at an amortised
//! constant cost per new key, whatever the traffic. A flood of distinct keys therefore costs
//! neither memory beyond the configured bound nor time that grows with the registry.
//!
//! Breakers and bulkheads that a call in flight is using are never replaced (their state would
//! be lost under the call); their number is bounded by the calls in flight, so the bound is
//! exceeded only by that many. A rate limit replaced this way starts again with a full burst.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    value: V,
    /// Used since the clock hand last passed: spared once.
    referenced: AtomicBool,
}

struct Table<K, V> {
    map: HashMap<K, Entry<V>>,
    /// Every key, in the order the clock hand visits them (front first).
    ring: VecDeque<K>,
}

/// A bounded map from keys to shared state, replacing entries by the CLOCK algorithm.
pub(crate) struct Registry<K, V> {
    table: RwLock<Table<K, V>>,
    max_keys: AtomicUsize,
    /// Whether a call in flight holds a value (it is then never replaced).
    in_use: fn(&V) -> bool,
    /// Entries the clock hand has looked at, for the tests of its amortised cost.
    #[cfg(test)]
    steps: AtomicUsize,
}

impl<K: Hash + Eq + Clone, V: Clone> Registry<K, V> {
    /// At most `max_keys` entries (at least one); `in_use` says which values must stay.
    pub(crate) fn new(max_keys: usize, in_use: fn(&V) -> bool) -> Self {
        Self {
            table: RwLock::new(Table {
                map: HashMap::new(),
                ring: VecDeque::new(),
            }),
            max_keys: AtomicUsize::new(max_keys.max(1)),
            in_use,
            #[cfg(test)]
            steps: AtomicUsize::new(0),
        }
    }

    /// Changes the bound (entries above it go as new keys arrive).
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(crate) fn set_max_keys(&self, max_keys: usize) {
        self.max_keys.store(max_keys.max(1), Ordering::Relaxed);
    }

    #[cfg_attr(
        not(any(feature = "circuit-breaker", feature = "rate-limit")),
        allow(dead_code)
    )]
    pub(crate) fn len(&self) -> usize {
        self.read().map.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table<K, V>> {
        // A poisoned lock only means another thread panicked while holding it; the table is
        // still consistent (every write below keeps map and ring in step before it can panic).
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of `key`, made by `make` on first use.
    pub(crate) fn get_or_insert(&self, key: &K, make: impl FnOnce() -> V) -> V {
        if let Some(entry) = self.read().map.get(key) {
            // A load first: the common case writes nothing, so no cache line moves.
            if !entry.referenced.load(Ordering::Relaxed) {
                entry.referenced.store(true, Ordering::Relaxed);
            }
            return entry.value.clone();
        }
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = table.map.get(key) {
            return entry.value.clone();
        }
        let max_keys = self.max_keys.load(Ordering::Relaxed);
        while table.map.len() >= max_keys {
            if !self.evict_one(&mut table) {
                break; // every entry is in use: exceed the bound by the calls in flight
            }
        }
        let value = make();
        table.map.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                referenced: AtomicBool::new(false),
            },
        );
        table.ring.push_back(key.clone());
        value
    }

    /// Moves the clock hand until it finds an entry neither used since its last pass nor in
    /// use, and removes it. Each step either removes an entry or clears a mark that a use set
    /// (or passes an entry a call holds), so the cost per new key is constant amortised, plus
    /// the calls in flight. `false` when every entry is in use.
    fn evict_one(&self, table: &mut Table<K, V>) -> bool {
        // Two turns: the first clears every mark, the second finds an unmarked entry unless
        // all are in use.
        let mut turns = table.ring.len() * 2;
        while turns > 0 {
            turns -= 1;
            let Some(key) = table.ring.pop_front() else {
                return false;
            };
            #[cfg(test)]
            self.steps.fetch_add(1, Ordering::Relaxed);
            let spare = table.map.get(&key).is_some_and(|entry| {
                entry.referenced.swap(false, Ordering::Relaxed) || (self.in_use)(&entry.value)
            });
            if spare {
                table.ring.push_back(key);
            } else {
                table.map.remove(&key);
                return true;
            }
        }
        false
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
    use std::sync::Arc;

    use super::*;

    fn held(value: &Arc<String>) -> bool {
        Arc::strong_count(value) > 1
    }

    #[test]
    fn a_value_in_use_is_never_replaced() {
        let registry: Registry<u32, Arc<String>> = Registry::new(2, held);
        let one = registry.get_or_insert(&1, || Arc::new(String::from("one")));
        registry.get_or_insert(&2, || Arc::new(String::from("two")));
        registry.get_or_insert(&3, || Arc::new(String::from("three")));
        assert_eq!(registry.len(), 2);
        // Key 1 is the oldest but in use: key 2 went instead.
        assert!(Arc::ptr_eq(
            &one,
            &registry.get_or_insert(&1, || Arc::new(String::from("new one")))
        ));
        assert_eq!(
            *registry.get_or_insert(&2, || Arc::new(String::from("two again"))),
            "two again"
        );
    }

    #[test]
    fn a_key_used_again_outlives_keys_used_once() {
        let registry: Registry<u32, Arc<String>> = Registry::new(100, |_| false);
        let hot = registry.get_or_insert(&0, || Arc::new(String::from("hot")));
        drop(hot);
        for key in 1..10_000 {
            registry.get_or_insert(&key, || Arc::new(String::from("cold")));
            registry.get_or_insert(&0, || Arc::new(String::from("hot again")));
        }
        assert_eq!(registry.len(), 100);
        assert_eq!(
            *registry.get_or_insert(&0, || Arc::new(String::from("hot again"))),
            "hot"
        );
    }

    #[test]
    fn a_flood_of_new_keys_costs_constant_steps_per_key() {
        let registry: Registry<u64, Arc<String>> = Registry::new(1_000, |_| false);
        for key in 0..1_000 {
            registry.get_or_insert(&key, || Arc::new(String::from("used twice")));
            registry.get_or_insert(&key, || Arc::new(String::from("used twice")));
        }
        let flood = 100_000;
        for key in 1_000..1_000 + flood {
            registry.get_or_insert(&key, || Arc::new(String::from("once")));
        }
        assert_eq!(registry.len(), 1_000);
        // One step per replaced key, plus one per mark cleared (at most one per key used).
        let steps = registry.steps.load(Ordering::Relaxed);
        assert!(
            steps <= flood as usize + 1_000,
            "{steps} steps for {flood} new keys"
        );
    }
}
