//! Single flight, cancellation, TTL, stale-while-revalidate, negative caching and bounds,
//! under paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_cache::{Cache, CacheError};
use tokio::time::sleep;

/// A loader that counts its calls and takes 100 ms (of paused time).
fn slow(
    loads: &Arc<AtomicUsize>,
    value: &'static str,
) -> impl FnOnce() -> futures_util::future::BoxFuture<'static, Result<Option<String>, std::io::Error>>
+ Send
+ 'static {
    let loads = loads.clone();
    move || {
        Box::pin(async move {
            loads.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(100)).await;
            Ok(Some(value.to_owned()))
        })
    }
}

fn cache() -> Cache<u32, String> {
    Cache::builder("test").ttl(Duration::from_secs(10)).build()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_misses_make_one_load() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move { cache.get_or_load(&7, slow(&loads, "seven")).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().as_deref(), Some("seven"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.misses + stats.hits), (1, 1000));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_first_caller_neither_aborts_nor_restarts_the_load() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn({
        let (cache, loads) = (cache.clone(), loads.clone());
        async move { cache.get_or_load(&1, slow(&loads, "one")).await }
    });
    sleep(Duration::from_millis(10)).await; // the load has started
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    // A second caller joins the load that is still running: no second load.
    let second = cache.get_or_load(&1, slow(&loads, "other")).await.unwrap();
    assert_eq!(second.as_deref(), Some("one"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // And a load whose only caller went away still lands in the cache.
    let gone = tokio::spawn({
        let (cache, loads) = (cache.clone(), loads.clone());
        async move { cache.get_or_load(&2, slow(&loads, "two")).await }
    });
    sleep(Duration::from_millis(10)).await;
    gone.abort();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.get(&2).await.as_deref(), Some("two"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn values_expire_after_their_ttl() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    cache.get_or_load(&1, slow(&loads, "a")).await.unwrap();
    sleep(Duration::from_secs(9)).await;
    assert_eq!(
        cache
            .get_or_load(&1, slow(&loads, "b"))
            .await
            .unwrap()
            .as_deref(),
        Some("a")
    );
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cache
            .get_or_load(&1, slow(&loads, "b"))
            .await
            .unwrap()
            .as_deref(),
        Some("b")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_values_are_served_while_one_refresh_runs() {
    let cache: Cache<u32, String> = Cache::builder("swr")
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(5))
        .build();
    let loads = Arc::new(AtomicUsize::new(0));
    cache.get_or_load(&1, slow(&loads, "v1")).await.unwrap();

    sleep(Duration::from_secs(11)).await; // stale, inside the grace
    for _ in 0..50 {
        // Answered at once with the stale value; one refresh starts.
        let value = cache.get_or_load(&1, slow(&loads, "v2")).await.unwrap();
        assert_eq!(value.as_deref(), Some("v1"));
    }
    assert_eq!(cache.stats().stale_served, 50);
    sleep(Duration::from_millis(150)).await; // the refresh lands
    assert_eq!(
        cache
            .get_or_load(&1, slow(&loads, "v3"))
            .await
            .unwrap()
            .as_deref(),
        Some("v2")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Past the grace, nothing stale is served: the caller waits for a load.
    sleep(Duration::from_secs(16)).await;
    assert_eq!(
        cache
            .get_or_load(&1, slow(&loads, "v4"))
            .await
            .unwrap()
            .as_deref(),
        Some("v4")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct Down;

#[tokio::test(start_paused = true)]
async fn a_failed_load_reaches_every_waiter_and_is_not_cached_by_default() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let failing = |loads: &Arc<AtomicUsize>| {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(50)).await;
            Err::<Option<String>, _>(Down)
        }
    };
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, f) = (cache.clone(), failing(&loads));
            tokio::spawn(async move { cache.get_or_load(&1, f).await })
        })
        .collect();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert!(matches!(&error, CacheError::Load(e) if e.to_string() == "database down"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // Not remembered: the next lookup loads again.
    assert!(cache.get_or_load(&1, failing(&loads)).await.is_err());
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().load_errors, 2);
}

#[tokio::test(start_paused = true)]
async fn negative_caching_remembers_absence_and_failure_for_its_own_ttl() {
    let cache: Cache<u32, String> = Cache::builder("negative")
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .build();
    let loads = Arc::new(AtomicUsize::new(0));
    let absent = |loads: &Arc<AtomicUsize>| {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<String>, std::io::Error>(None)
        }
    };
    assert_eq!(cache.get_or_load(&404, absent(&loads)).await.unwrap(), None);
    assert_eq!(cache.get_or_load(&404, absent(&loads)).await.unwrap(), None);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(cache.get_or_load(&404, absent(&loads)).await.unwrap(), None);
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    let failures = Arc::new(AtomicUsize::new(0));
    let failing = |n: &Arc<AtomicUsize>| {
        let n = n.clone();
        move || async move {
            n.fetch_add(1, Ordering::SeqCst);
            Err::<Option<String>, _>(Down)
        }
    };
    assert!(cache.get_or_load(&500, failing(&failures)).await.is_err());
    assert!(cache.get_or_load(&500, failing(&failures)).await.is_err());
    assert_eq!(
        failures.load(Ordering::SeqCst),
        1,
        "the failure is remembered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_serving_the_stale_value() {
    let cache: Cache<u32, String> = Cache::builder("keep")
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(30))
        .negative_ttl(Duration::from_secs(5))
        .build();
    cache
        .get_or_load(&1, || async { Ok::<_, Down>(Some("good".to_owned())) })
        .await
        .unwrap();
    sleep(Duration::from_secs(11)).await;
    let stale = cache
        .get_or_load(&1, || async { Err::<Option<String>, _>(Down) })
        .await;
    assert_eq!(stale.unwrap().as_deref(), Some("good"));
    sleep(Duration::from_millis(10)).await; // the refresh failed meanwhile
    let again = cache
        .get_or_load(&1, || async { Err::<Option<String>, _>(Down) })
        .await;
    assert_eq!(again.unwrap().as_deref(), Some("good"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_fails_its_callers_and_the_next_load_runs() {
    let cache = cache();
    let result = cache
        .get_or_load(&1, || async {
            panic!("loader bug") as Result<Option<String>, Down>
        })
        .await;
    assert!(matches!(result, Err(CacheError::LoaderPanicked)));
    let value = cache
        .get_or_load(&1, || async { Ok::<_, Down>(Some("ok".to_owned())) })
        .await;
    assert_eq!(value.unwrap().as_deref(), Some("ok"));
}

#[tokio::test]
async fn the_weight_bound_evicts() {
    let cache: Cache<u32, String> = Cache::builder("weighed")
        .max_capacity(1_000)
        .weigher(|_, value: &String| u32::try_from(value.len()).unwrap_or(u32::MAX))
        .build();
    for key in 0..200 {
        cache.insert(key, "x".repeat(100)).await;
    }
    cache.run_pending_tasks().await;
    let stats = cache.stats();
    assert!(stats.entries <= 10, "{stats:?}");
    assert!(stats.evictions >= 190, "{stats:?}");
}

#[tokio::test]
async fn invalidate_drops_the_value() {
    let cache = cache();
    cache.insert(1, "a".to_owned()).await;
    assert_eq!(cache.get(&1).await.as_deref(), Some("a"));
    cache.invalidate(&1).await;
    assert_eq!(cache.get(&1).await, None);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_collector_exports_the_counters() {
    let cache = cache();
    cache
        .get_or_load(&1, || async { Ok::<_, Down>(Some("a".to_owned())) })
        .await
        .unwrap();
    cache
        .get_or_load(&1, || async { Ok::<_, Down>(Some("b".to_owned())) })
        .await
        .unwrap();
    cache.run_pending_tasks().await;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(cache.collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "cache_hits_total{cache=\"test\"} 1",
        "cache_misses_total{cache=\"test\"} 1",
        "cache_loads_total{cache=\"test\"} 1",
        "cache_entries{cache=\"test\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

/// A regression test for a race the stampede benchmark found: a caller that missed just
/// before a load landed, and took the flight lock just after it ended, started a second load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_lands_during_a_lookup_is_not_repeated() {
    let loads = Arc::new(AtomicUsize::new(0));
    for round in 0..300u32 {
        let cache = cache();
        let callers: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(&round, move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<_, Down>(Some("v".to_owned()))
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 300);
}

/// A loader that returns what `source` holds when it starts, and waits for `gate` to finish.
fn reading(
    source: &Arc<std::sync::Mutex<&'static str>>,
    gate: tokio::sync::oneshot::Receiver<()>,
) -> impl FnOnce() -> futures_util::future::BoxFuture<'static, Result<Option<String>, std::io::Error>>
+ Send
+ 'static {
    let source = source.clone();
    move || {
        Box::pin(async move {
            let read = (*source.lock().unwrap()).to_owned();
            let _ = gate.await;
            Ok(Some(read))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_that_began_before_an_invalidation_publishes_nothing() {
    let cache = cache();
    let database = Arc::new(std::sync::Mutex::new("old price"));
    let (release, gate) = tokio::sync::oneshot::channel();
    let early = tokio::spawn({
        let (cache, database) = (cache.clone(), database.clone());
        async move { cache.get_or_load(&1, reading(&database, gate)).await }
    });
    sleep(Duration::from_millis(10)).await; // it has read the old price

    // The price changes, and the cache is told.
    *database.lock().unwrap() = "new price";
    cache.invalidate(&1).await;
    // A caller after the change does not join the old load: it reads the new price.
    let (done, gate) = tokio::sync::oneshot::channel();
    done.send(()).unwrap();
    let later = tokio::spawn({
        let (cache, database) = (cache.clone(), database.clone());
        async move { cache.get_or_load(&1, reading(&database, gate)).await }
    });
    sleep(Duration::from_millis(10)).await;

    // The old load ends: its caller asked before the change and gets what it read, but the
    // cache keeps the new price.
    release.send(()).unwrap();
    assert_eq!(early.await.unwrap().unwrap().as_deref(), Some("old price"));
    assert_eq!(later.await.unwrap().unwrap().as_deref(), Some("new price"));
    assert_eq!(cache.get(&1).await.as_deref(), Some("new price"));
}

#[tokio::test(start_paused = true)]
async fn a_load_that_began_before_an_insert_does_not_overwrite_it() {
    let cache = cache();
    let database = Arc::new(std::sync::Mutex::new("old price"));
    let (release, gate) = tokio::sync::oneshot::channel();
    let early = tokio::spawn({
        let (cache, database) = (cache.clone(), database.clone());
        async move { cache.get_or_load(&1, reading(&database, gate)).await }
    });
    sleep(Duration::from_millis(10)).await;
    cache.insert(1, "new price".to_owned()).await;
    release.send(()).unwrap();
    early.await.unwrap().unwrap();
    assert_eq!(cache.get(&1).await.as_deref(), Some("new price"));
}

/// A second tier in memory with the contract of `SecondTier`: tombstones keep `fill` out. It
/// can be told to fail its next removals.
#[derive(Clone, Default)]
struct MemoryTier {
    entries: Arc<std::sync::Mutex<std::collections::HashMap<u32, Option<String>>>>,
    failing_removals: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl mainstay_cache::SecondTier<u32, String> for MemoryTier {
    async fn get(&self, key: &u32) -> Result<Option<String>, mainstay_cache::BoxError> {
        Ok(self.entries.lock().unwrap().get(key).cloned().flatten())
    }

    async fn set(
        &self,
        key: &u32,
        value: &String,
        _: Duration,
    ) -> Result<(), mainstay_cache::BoxError> {
        self.entries
            .lock()
            .unwrap()
            .insert(*key, Some(value.clone()));
        Ok(())
    }

    async fn fill(
        &self,
        key: &u32,
        value: &String,
        _: Duration,
    ) -> Result<(), mainstay_cache::BoxError> {
        self.entries
            .lock()
            .unwrap()
            .entry(*key)
            .or_insert_with(|| Some(value.clone()));
        Ok(())
    }

    async fn remove(&self, key: &u32) -> Result<(), mainstay_cache::BoxError> {
        if self
            .failing_removals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("redis is down".into());
        }
        self.entries.lock().unwrap().insert(*key, None);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_load_cannot_write_the_second_tier_after_an_invalidation() {
    let tier = MemoryTier::default();
    let cache: Cache<u32, String> = Cache::builder("test")
        .ttl(Duration::from_secs(10))
        .second_tier(tier.clone())
        .build();
    let database = Arc::new(std::sync::Mutex::new("old price"));
    let (release, gate) = tokio::sync::oneshot::channel();
    let early = tokio::spawn({
        let (cache, database) = (cache.clone(), database.clone());
        async move { cache.get_or_load(&1, reading(&database, gate)).await }
    });
    sleep(Duration::from_millis(10)).await;
    *database.lock().unwrap() = "new price";
    cache.invalidate(&1).await;
    release.send(()).unwrap();
    early.await.unwrap().unwrap();
    assert_eq!(
        tier.entries.lock().unwrap().get(&1),
        Some(&None),
        "the tombstone stays"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_second_tier_invalidation_is_retried() {
    let tier = MemoryTier::default();
    let cache: Cache<u32, String> = Cache::builder("test").second_tier(tier.clone()).build();
    cache.insert(1, "old price".to_owned()).await;
    tier.failing_removals.store(3, Ordering::SeqCst);
    cache.invalidate(&1).await;
    assert_eq!(
        tier.entries.lock().unwrap().get(&1),
        Some(&Some("old price".to_owned())),
        "the first removal failed"
    );
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        tier.entries.lock().unwrap().get(&1),
        Some(&None),
        "removed on a retry"
    );
    assert!(cache.stats().l2_errors >= 3);
}
