//! The Redis second tier and invalidation bus, against the machine's Redis (unique key
//! prefixes) and a private redis-server stopped mid-test.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mainstay_cache::Cache;
use mainstay_cache::redis::{RedisBus, RedisTier};

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether Redis answers; with `MAINSTAY_REQUIRE_SERVERS` set, it must.
async fn redis_or_skip(url: &str) -> bool {
    let reachable = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .ok()
    };
    let up = tokio::time::timeout(Duration::from_secs(2), reachable)
        .await
        .ok()
        .flatten()
        .is_some();
    assert!(
        up || std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
        "Redis at {url} is required (MAINSTAY_REQUIRE_SERVERS is set)"
    );
    if !up {
        eprintln!("skipping: Redis at {url} cannot be used; set TEST_REDIS_URL");
    }
    up
}

fn unique(name: &str) -> String {
    format!(
        "test:{name}:{}",
        u64::from(std::process::id()) * 1_000_000 + u64::from(rand_u32())
    )
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    u32::try_from(RandomState::new().hash_one(0u8) & 0xffff_ffff).unwrap_or(0)
}

fn counting(
    loads: &Arc<AtomicUsize>,
    value: &str,
) -> impl FnOnce() -> futures_util::future::Ready<Result<Option<String>, std::io::Error>> + Send + 'static
{
    let (loads, value) = (loads.clone(), value.to_owned());
    move || {
        loads.fetch_add(1, Ordering::SeqCst);
        futures_util::future::ready(Ok(Some(value)))
    }
}

fn two_tier(url: &str, prefix: &str) -> Cache<u64, String> {
    Cache::builder("products")
        .ttl(Duration::from_secs(60))
        .second_tier(RedisTier::from_url(url, prefix).unwrap())
        .invalidation_bus(RedisBus::from_url(url, format!("{prefix}:invalidate")).unwrap())
        .second_tier_timeout(Duration::from_secs(1))
        .build()
}

async fn eventually(mut condition: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_reads_the_second_tier_and_sees_invalidations() {
    let url = redis_url();
    if !redis_or_skip(&url).await {
        return;
    }
    let prefix = unique("l2");
    let a = two_tier(&url, &prefix);
    let b = two_tier(&url, &prefix);
    let channel = format!("{prefix}:invalidate");
    mainstay_test_support::redis::wait_for_subscribers(&url, &channel, 2).await;
    let loads = Arc::new(AtomicUsize::new(0));

    assert_eq!(
        a.get_or_load(&1, counting(&loads, "teapot"))
            .await
            .unwrap()
            .as_deref(),
        Some("teapot")
    );
    // B has nothing in its first tier: the second tier answers, the loader is not called.
    assert_eq!(
        b.get_or_load(&1, counting(&loads, "kettle"))
            .await
            .unwrap()
            .as_deref(),
        Some("teapot")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().l2_hits, 1);
    assert_eq!(b.get(&1).await.as_deref(), Some("teapot"));

    // A changes the product: B's first-tier copy goes, and B loads the new value.
    a.invalidate(&1).await;
    assert!(
        eventually(async || b.get(&1).await.is_none()).await,
        "B never dropped its copy"
    );
    assert_eq!(
        b.get_or_load(&1, counting(&loads, "kettle"))
            .await
            .unwrap()
            .as_deref(),
        Some("kettle")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Versioned keys: a cache of the next release does not read this release's values.
    let next: Cache<u64, String> = Cache::builder("products")
        .second_tier(RedisTier::from_url(&url, &prefix).unwrap().version(2))
        .build();
    assert_eq!(
        next.get_or_load(&1, counting(&loads, "v2"))
            .await
            .unwrap()
            .as_deref(),
        Some("v2")
    );
    assert_eq!(next.stats().l2_hits, 0);
}

/// A private redis-server on a free port, killed on drop.
struct PrivateRedis {
    child: tokio::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        Self::start_on(port).await
    }

    /// A new server on the port of this one, which must be stopped.
    async fn restart(&self) -> Self {
        let port = self.url.rsplit(':').next().unwrap().parse().unwrap();
        Self::start_on(port).await.unwrap()
    }

    async fn start_on(port: u16) -> Option<Self> {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                assert!(
                    std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                    "redis-server is required (MAINSTAY_REQUIRE_SERVERS is set): {error}"
                );
                eprintln!("skipping: cannot start redis-server ({error})");
                return None;
            }
        };
        let url = format!("redis://127.0.0.1:{port}");
        let this = Self { child, url };
        let url = this.url.clone();
        let up = eventually(async || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        })
        .await;
        assert!(up, "the private redis-server did not start");
        Some(this)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_fails_no_read() {
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let cache = two_tier(&redis.url, "down");
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        cache
            .get_or_load(&1, counting(&loads, "one"))
            .await
            .unwrap()
            .as_deref(),
        Some("one")
    );
    assert_eq!(cache.stats().l2_errors, 0);

    redis.child.kill().await.unwrap();

    // Cached values are still served; new keys come from the loader; writes and invalidations
    // do not fail either. Every failure of Redis is counted.
    assert_eq!(
        cache
            .get_or_load(&1, counting(&loads, "x"))
            .await
            .unwrap()
            .as_deref(),
        Some("one")
    );
    for key in 2..12 {
        let value = cache
            .get_or_load(&key, counting(&loads, "fresh"))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("fresh"));
    }
    cache.insert(20, "twenty".to_owned()).await;
    cache.invalidate(&1).await;
    assert_eq!(loads.load(Ordering::SeqCst), 11);
    assert!(cache.stats().l2_errors >= 10, "{:?}", cache.stats());

    // Redis back (empty): the tier reconnects by itself, and a value written now is read by
    // another instance from Redis.
    let _back = redis.restart().await;
    let other = two_tier(&redis.url, "down");
    let stored = eventually(async || {
        cache.insert(30, "thirty".to_owned()).await;
        other
            .get_or_load(&30, counting(&loads, "from the loader"))
            .await
            .is_ok_and(|v| v.as_deref() == Some("thirty"))
    })
    .await;
    assert!(stored, "the tier never reconnected: {:?}", cache.stats());
}

#[tokio::test]
async fn an_invalidation_leaves_a_tombstone_that_loads_do_not_fill() {
    use mainstay_cache::SecondTier;
    let url = redis_url();
    if !redis_or_skip(&url).await {
        return;
    }
    let tier = RedisTier::from_url(&url, unique("tombstone"))
        .unwrap()
        .tombstone(Duration::from_secs(5));
    let ttl = Duration::from_secs(60);
    // A load fills an empty key, but not one that holds a value.
    tier.fill(&1u64, &"loaded".to_owned(), ttl).await.unwrap();
    tier.fill(&1u64, &"second load".to_owned(), ttl)
        .await
        .unwrap();
    let read: Option<String> = tier.get(&1u64).await.unwrap();
    assert_eq!(read.as_deref(), Some("loaded"));
    // After an invalidation, the key reads as empty, and a load that began before it (and
    // ends now) cannot put its old value back; an explicit write can.
    SecondTier::<u64, String>::remove(&tier, &1u64)
        .await
        .unwrap();
    let read: Option<String> = tier.get(&1u64).await.unwrap();
    assert_eq!(read, None);
    tier.fill(&1u64, &"stale load".to_owned(), ttl)
        .await
        .unwrap();
    let read: Option<String> = tier.get(&1u64).await.unwrap();
    assert_eq!(read, None);
    tier.set(&1u64, &"new price".to_owned(), ttl).await.unwrap();
    let read: Option<String> = tier.get(&1u64).await.unwrap();
    assert_eq!(read.as_deref(), Some("new price"));
}
