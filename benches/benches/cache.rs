//! The cache beside raw moka and a raw Redis GET, in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench cache
//! ```
//!
//! * `cache/hit/raw_moka_get`: `moka::future::Cache::get` of a present key (cloning the value),
//!   the floor any moka-based cache pays;
//! * `cache/hit/get_or_load`: our hit path: the same lookup, the freshness check, a counter;
//! * `cache/stampede_1000`: 1,000 concurrent `get_or_load` misses of one key with a loader that
//!   yields once, then every caller's answer; the loads are counted and must be 1;
//! * `cache/l2/raw_redis_get` and `cache/l2/tier_hit`: a raw GET on one multiplexed connection,
//!   and our second-tier hit (pooled connection, GET, JSON decode, first-tier insert), against
//!   the machine's Redis (skipped when it is not there).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::Criterion;
use mainstay_cache::Cache;
use mainstay_cache::redis::RedisTier;

type Value = Arc<str>;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let value: Value = Arc::from("a product of some sixty bytes, with a name and a price in it");

    {
        // Each sample runs its iterations inside one `block_on`, so the rows compare the
        // lookups themselves, not the cost of entering the runtime.
        let mut group = c.benchmark_group("cache/hit");
        let raw: moka::future::Cache<u64, Value> = moka::future::Cache::new(10_000);
        runtime.block_on(raw.insert(42, value.clone()));
        group.bench_function("raw_moka_get", |b| {
            b.to_async(&runtime)
                .iter(|| async { raw.get(black_box(&42)).await.unwrap() });
        });
        let ours: Cache<u64, Value> = Cache::builder("bench").max_capacity(10_000).build();
        runtime.block_on(ours.insert(42, value.clone()));
        group.bench_function("get_or_load", |b| {
            b.to_async(&runtime).iter(|| async {
                ours.get_or_load(black_box(&42), || async { Ok::<_, std::io::Error>(None) })
                    .await
                    .unwrap()
                    .unwrap()
            });
        });
        group.finish();

        // What the hit path adds to moka's lookup, priced one by one on this machine.
        let mut group = c.benchmark_group("cache/primitives");
        group.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
        let counter = std::sync::atomic::AtomicU64::new(0);
        group.bench_function("fetch_add", |b| {
            b.iter(|| counter.fetch_add(1, Ordering::Relaxed));
        });
        group.finish();
    }

    {
        let mut group = c.benchmark_group("cache");
        group.sample_size(20);
        let loads = Arc::new(AtomicUsize::new(0));
        let mut round = 0u64;
        group.bench_function("stampede_1000", |b| {
            b.iter(|| {
                round += 1;
                let cache: Cache<u64, Value> = Cache::builder("stampede").build();
                let key = round;
                runtime.block_on(async {
                    let callers: Vec<_> = (0..1000)
                        .map(|_| {
                            let (cache, loads, value) =
                                (cache.clone(), loads.clone(), value.clone());
                            tokio::spawn(async move {
                                cache
                                    .get_or_load(&key, move || async move {
                                        loads.fetch_add(1, Ordering::Relaxed);
                                        tokio::task::yield_now().await;
                                        Ok::<_, std::io::Error>(Some(value))
                                    })
                                    .await
                            })
                        })
                        .collect();
                    for caller in callers {
                        caller.await.unwrap().unwrap();
                    }
                });
            });
        });
        let rounds = round;
        let total = loads.load(Ordering::Relaxed) as u64;
        assert_eq!(total, rounds, "exactly one load per stampede");
        eprintln!("stampede_1000: {rounds} stampedes, {total} loads");
        group.finish();
    }

    let url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let connected = runtime.block_on(async {
        let client = redis::Client::open(url.as_str()).ok()?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    });
    let Some(mut connection) = connected else {
        eprintln!("cache/l2: Redis at {url} is not reachable; skipped");
        c.final_summary();
        return;
    };
    {
        let mut group = c.benchmark_group("cache/l2");
        let prefix = format!("bench:{}", std::process::id());
        let key = format!("{prefix}:v1:42");
        let json = serde_json::to_vec(&*value).unwrap();
        runtime.block_on(async {
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("EX")
                .arg(600)
                .query_async(&mut connection)
                .await
                .unwrap();
        });
        group.bench_function("raw_redis_get", |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let bytes: Vec<u8> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    bytes
                })
            });
        });
        let tier = RedisTier::from_url(&url, prefix.clone()).unwrap();
        let cache: Cache<u64, String> = Cache::builder("l2")
            .second_tier(tier)
            .second_tier_timeout(Duration::from_secs(1))
            .build();
        group.bench_function("tier_hit", |b| {
            b.iter(|| {
                runtime.block_on(async {
                    cache.invalidate_local();
                    cache
                        .get_or_load(&42, || async {
                            Err::<Option<String>, _>(std::io::Error::other("must come from Redis"))
                        })
                        .await
                        .unwrap()
                        .unwrap()
                })
            });
        });
        assert_eq!(cache.stats().loads, 0, "every lookup was a second-tier hit");
        runtime.block_on(async {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .unwrap();
        });
        group.finish();
    }
    c.final_summary();
}
