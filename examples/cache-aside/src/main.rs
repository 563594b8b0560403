//! Cache-aside with mainstay-cache in front of a slow loader: a hundred concurrent requests for
//! a cold key make one load (no stampede), the next request is a hit, and after an
//! invalidation the next request loads again.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p example-cache-aside
//! ```
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_cache::{BoxError, Cache};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Calls of the loader: the queries that reached the database.
static LOADS: AtomicUsize = AtomicUsize::new(0);

/// The slow source the cache is in front of: a query that takes 200 ms.
async fn product_from_db(id: u64) -> Result<Option<String>, BoxError> {
    let load = LOADS.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Some(format!("product {id} (load #{load})")))
}

fn loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let products: Cache<u64, String> = Cache::builder("products")
        .max_capacity(10_000)
        .ttl(Duration::from_secs(60))
        .build();

    // A cold key under load: every request misses at once. Without single-flight each one
    // would query the database; here the first starts the load and the others wait for it.
    println!("1. 100 concurrent requests for product 42, not cached yet");
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..100 {
        let products = products.clone();
        callers.spawn(async move { products.get_or_load(&42, || product_from_db(42)).await });
    }
    let answers = callers
        .join_all()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "   {} answers in {} ms, all {:?}; the loader ran {} time(s)",
        answers.len(),
        started.elapsed().as_millis(),
        answers[0],
        loads()
    );
    assert!(answers.iter().all(|answer| *answer == answers[0]));
    assert_eq!(loads(), 1, "one load for a hundred concurrent misses");

    // The value is cached now: no load, no 200 ms.
    println!("\n2. one more request");
    let started = Instant::now();
    let hit = products.get_or_load(&42, || product_from_db(42)).await?;
    println!(
        "   {hit:?} in {} µs; the loader ran {} time(s)",
        started.elapsed().as_micros(),
        loads()
    );
    assert_eq!(loads(), 1, "a hit");

    // The product changed: drop it, and the next request reads the database again.
    println!("\n3. invalidate product 42, then request it again");
    products.invalidate(&42).await;
    assert_eq!(products.get(&42).await, None, "gone from the cache");
    let reloaded = products.get_or_load(&42, || product_from_db(42)).await?;
    println!("   {reloaded:?}; the loader ran {} time(s)", loads());
    assert_eq!(loads(), 2);
    assert_eq!(reloaded.as_deref(), Some("product 42 (load #2)"));

    let stats = products.stats();
    println!(
        "\nstats: {} hits, {} misses, {} loads",
        stats.hits, stats.misses, stats.loads
    );
    Ok(())
}
