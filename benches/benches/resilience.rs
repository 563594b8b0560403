//! Per-call overhead of mainstay-resilience beside its peers, on one and two threads, with
//! allocations per call. Reproduce with `cargo bench -p mainstay-benches --bench resilience`;
//! results are summarised in `BENCHMARKS.md`.
//!
//! Every async layer is driven the same way: `ready().await` then `call().await` in a tight loop
//! inside one `block_on` of a current-thread runtime, over a no-op inner service whose future is
//! immediately ready. The "bare" entry is that loop with no layer: subtract it to get a layer's
//! own cost. Two-thread entries run the same loop on two OS threads at once (each with its own
//! runtime, both sharing one layer's state) and report the per-thread time per call.
//! recloser and failsafe have no tower layer; they are measured through their own synchronous
//! `call`, which skips the async machinery and so flatters them slightly.
#![allow(
    clippy::disallowed_types,
    reason = "benchmarks measure wall-clock time with std::time::Instant"
)]
#![allow(
    missing_docs,
    clippy::print_stdout,
    reason = "a benchmark binary that prints its allocation table"
)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use mainstay_resilience::ServiceBuilderExt;
use mainstay_resilience::bulkhead::BulkheadLayer;
use mainstay_resilience::circuit_breaker::{Breaker, CircuitBreakerLayer};
use mainstay_resilience::rate_limit::RateLimitLayer;
use mainstay_resilience::retry::RetryLayer;
use mainstay_resilience::timeout::TimeoutLayer;
use mainstay_test_support::CountingAllocator;
use tokio::runtime::{Builder as Runtime, Runtime as Rt};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Clone, Copy)]
struct Noop;

impl Service<u64> for Noop {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ready(Ok(request))
    }
}

fn runtime() -> Rt {
    Runtime::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// `iters` ready+call cycles on this thread; returns their wall time.
fn drive<S>(service: &mut S, iters: u64, rt: &Rt) -> Duration
where
    S: Service<u64>,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let Ok(ready) = service.ready().await else {
                continue;
            };
            let _ = black_box(ready.call(black_box(i)).await.is_ok());
        }
        start.elapsed()
    })
}

/// The same on two threads at once; returns the slower thread's time (per-thread time per call
/// is then `elapsed / iters`).
fn drive_two<S>(service: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let mut service = service.clone();
                let barrier = barrier.clone();
                scope.spawn(move || {
                    let rt = runtime();
                    barrier.wait();
                    drive(&mut service, iters, &rt)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn sync_loop(iters: u64, mut f: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        f(black_box(i));
    }
    start.elapsed()
}

fn sync_two<F: Fn(u64) + Sync>(iters: u64, f: &F) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    sync_loop(iters, f)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

// ---------------------------------------------------------------------------------------------
// The services under test. Each is built once, outside the timed loop.
// ---------------------------------------------------------------------------------------------

fn breaker() -> Breaker {
    Breaker::builder()
        .count_window(100)
        .failure_rate(0.5)
        .build()
        .expect("breaker")
}

fn mainstay_breaker() -> impl Service<u64> + Clone + Send + 'static {
    CircuitBreakerLayer::new(breaker()).layer(Noop)
}

/// The same breaker with a static handle ([`Breaker::into_static`]): no reference counting per
/// call.
fn mainstay_breaker_static() -> impl Service<u64> + Clone + Send + 'static {
    CircuitBreakerLayer::new(breaker().into_static()).layer(Noop)
}

fn mainstay_breaker_time_window() -> impl Service<u64> + Clone + Send + 'static {
    let breaker = Breaker::builder()
        .time_window(Duration::from_secs(60), 60)
        .build()
        .expect("breaker");
    CircuitBreakerLayer::new(breaker).layer(Noop)
}

fn peer_breaker() -> impl Service<u64> + Clone + Send + 'static {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("tower-resilience breaker")
        .layer(Noop)
}

fn mainstay_bulkhead() -> impl Service<u64> + Clone + Send + 'static {
    BulkheadLayer::new(1_000).layer(Noop)
}

fn tower_concurrency_limit() -> impl Service<u64> + Clone + Send + 'static {
    tower::limit::ConcurrencyLimitLayer::new(1_000).layer(Noop)
}

fn peer_bulkhead() -> impl Service<u64> + Clone + Send + 'static {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1_000)
        .build()
        .expect("tower-resilience bulkhead")
        .layer(Noop)
}

fn mainstay_retry() -> impl Service<u64> + Clone + Send + 'static {
    RetryLayer::new().max_attempts(3).layer(Noop)
}

#[derive(Clone, Copy)]
struct TowerPolicy;

impl tower::retry::Policy<u64, u64, Infallible> for TowerPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, Infallible>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

fn tower_retry() -> impl Service<u64> + Clone + Send + 'static {
    tower::retry::RetryLayer::new(TowerPolicy).layer(Noop)
}

fn peer_retry() -> impl Service<u64> + Clone + Send + 'static {
    tower_resilience::retry::RetryLayer::<u64, u64, Infallible>::builder()
        .max_attempts(3)
        .build()
        .layer(Noop)
}

fn mainstay_timeout() -> impl Service<u64> + Clone + Send + 'static {
    TimeoutLayer::new(Duration::from_secs(10)).layer(Noop)
}

fn tower_timeout() -> impl Service<u64> + Clone + Send + 'static {
    tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(Noop)
}

fn mainstay_rate_limit() -> impl Service<u64> + Clone + Send + 'static {
    // Never limits during a run: measures the GCRA check itself.
    RateLimitLayer::new(1_000_000_000, Duration::from_secs(1))
        .expect("quota")
        .layer(Noop)
}

/// The client stack of ARCHITECTURE.md §3 without the HTTP parts: deadline + retry + breaker +
/// bulkhead + per-attempt timeout. `u64` requests carry no deadline, so the deadline layer is
/// the per-attempt `TimeoutLayer` bounding the whole call here.
fn mainstay_stack() -> impl Service<u64> + Clone + Send + 'static {
    stack_with(breaker())
}

/// The stack with the breaker's static handle.
fn mainstay_stack_static() -> impl Service<u64> + Clone + Send + 'static {
    stack_with(breaker().into_static())
}

fn stack_with(breaker: Breaker) -> impl Service<u64> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .retries(RetryLayer::new().max_attempts(3))
        .circuit_breaker(breaker)
        .bulkhead(1_000, Duration::ZERO)
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .service(Noop)
}

/// The same stack from the peers: tower's timeouts around tower-resilience's retry, breaker and
/// bulkhead.
fn peer_stack() -> impl Service<u64> + Clone + Send + 'static {
    let retry = tower_resilience::retry::RetryLayer::<u64, u64, tower::BoxError>::builder()
        .max_attempts(3)
        .build();
    ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
        .layer(retry)
        .map_err(|e: tower_resilience::circuitbreaker::CircuitBreakerError<tower::BoxError>| -> tower::BoxError { e.to_string().into() })
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .expect("breaker"),
        )
        .map_err(|e: tower_resilience::bulkhead::BulkheadServiceError<tower::BoxError>| -> tower::BoxError { e.to_string().into() })
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(1_000)
                .build()
                .expect("bulkhead"),
        )
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)))
        .service(Noop)
}

fn mainstay_adaptive() -> impl Service<u64> + Clone + Send + 'static {
    use mainstay_resilience::adaptive::{AdaptiveLimitLayer, Aimd};
    AdaptiveLimitLayer::new(Aimd::default().initial(1_000).max(2_000)).layer(Noop)
}

fn peer_adaptive() -> impl Service<u64> + Clone + Send + 'static {
    let aimd = tower_resilience::adaptive::Aimd::builder()
        .initial_limit(1_000)
        .max_limit(2_000)
        .build()
        .expect("aimd");
    tower_resilience::adaptive::AdaptiveLimiterLayer::new(aimd).layer(Noop)
}

fn mainstay_fallback() -> impl Service<u64> + Clone + Send + 'static {
    mainstay_resilience::fallback::FallbackLayer::new(|_: tower::BoxError| {
        ready(Ok::<u64, tower::BoxError>(0))
    })
    .layer(Noop)
}

fn peer_fallback() -> impl Service<u64> + Clone + Send + 'static {
    tower_resilience::fallback::FallbackLayer::<u64, u64, Infallible>::value(0).layer(Noop)
}

/// Hedging on the fast path: the delay is known (warmed up) but calls finish before it.
fn mainstay_hedge() -> impl Service<u64> + Clone + Send + 'static {
    let layer =
        mainstay_resilience::hedge::HedgeLayer::new(mainstay_resilience::retry::RetryErrors)
            .period(Duration::from_secs(3_600))
            .min_samples(1);
    layer.layer(Noop)
}

#[derive(Clone, Copy)]
struct TowerHedgePolicy;

impl tower::hedge::Policy<u64> for TowerHedgePolicy {
    fn clone_request(&self, request: &u64) -> Option<u64> {
        Some(*request)
    }

    fn can_retry(&self, _: &u64) -> bool {
        true
    }
}

/// Not `Clone`, so it only runs in the one-thread group.
fn tower_hedge() -> impl Service<u64> + Send + 'static {
    tower::hedge::Hedge::new::<u64>(Noop, TowerHedgePolicy, 1, 0.95, Duration::from_secs(1))
}

fn failsafe_breaker() -> impl failsafe::CircuitBreaker {
    failsafe::Config::new().build()
}

fn recloser_breaker() -> recloser::Recloser {
    recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .build()
}

// ---------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------

fn bench_async<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: impl Fn() -> S)
where
    S: Service<u64>,
{
    let mut service = make();
    let rt = runtime();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| drive(&mut service, iters, &rt));
    });
}

fn bench_async_two<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: impl Fn() -> S)
where
    S: Service<u64> + Clone + Send + 'static,
{
    let service = make();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| drive_two(&service, iters));
    });
}

fn one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("1 thread");
    bench_async(&mut group, "bare no-op service", || Noop);

    bench_async(
        &mut group,
        "breaker/mainstay count window",
        mainstay_breaker,
    );
    bench_async(
        &mut group,
        "breaker/mainstay count window, static",
        mainstay_breaker_static,
    );
    bench_async(
        &mut group,
        "breaker/mainstay time window",
        mainstay_breaker_time_window,
    );
    bench_async(&mut group, "breaker/tower-resilience", peer_breaker);
    let failsafe = failsafe_breaker();
    group.bench_function("breaker/failsafe (sync call)", |b| {
        b.iter_custom(|iters| {
            sync_loop(iters, |i| {
                let _ = black_box(failsafe::CircuitBreaker::call(&failsafe, || {
                    Ok::<u64, ()>(i)
                }));
            })
        });
    });
    let recloser = recloser_breaker();
    group.bench_function("breaker/recloser (sync call)", |b| {
        b.iter_custom(|iters| {
            sync_loop(iters, |i| {
                let _ = black_box(recloser.call(|| Ok::<u64, ()>(i)));
            })
        });
    });

    bench_async(&mut group, "bulkhead/mainstay", mainstay_bulkhead);
    bench_async(
        &mut group,
        "bulkhead/tower ConcurrencyLimit",
        tower_concurrency_limit,
    );
    bench_async(&mut group, "bulkhead/tower-resilience", peer_bulkhead);

    bench_async(&mut group, "retry/mainstay", mainstay_retry);
    bench_async(&mut group, "retry/tower Retry", tower_retry);
    bench_async(&mut group, "retry/tower-resilience", peer_retry);

    bench_async(&mut group, "timeout/mainstay", mainstay_timeout);
    bench_async(&mut group, "timeout/tower Timeout", tower_timeout);

    bench_async(&mut group, "rate limit/mainstay", mainstay_rate_limit);

    bench_async(&mut group, "adaptive/mainstay AIMD", mainstay_adaptive);
    bench_async(&mut group, "adaptive/tower-resilience AIMD", peer_adaptive);

    bench_async(&mut group, "fallback/mainstay", mainstay_fallback);
    bench_async(&mut group, "fallback/tower-resilience", peer_fallback);

    bench_async(&mut group, "hedge/mainstay", mainstay_hedge);
    bench_async(&mut group, "hedge/tower Hedge", tower_hedge);

    bench_async(&mut group, "stack/mainstay", mainstay_stack);
    bench_async(
        &mut group,
        "stack/mainstay, static breaker",
        mainstay_stack_static,
    );
    bench_async(&mut group, "stack/tower + tower-resilience", peer_stack);
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("2 threads");
    bench_async_two(&mut group, "bare no-op service", || Noop);
    bench_async_two(
        &mut group,
        "breaker/mainstay count window",
        mainstay_breaker,
    );
    bench_async_two(
        &mut group,
        "breaker/mainstay count window, static",
        mainstay_breaker_static,
    );
    bench_async_two(
        &mut group,
        "breaker/mainstay time window",
        mainstay_breaker_time_window,
    );
    bench_async_two(&mut group, "breaker/tower-resilience", peer_breaker);
    let failsafe = failsafe_breaker();
    group.bench_function("breaker/failsafe (sync call)", |b| {
        b.iter_custom(|iters| {
            sync_two(iters, &|i| {
                let _ = black_box(failsafe::CircuitBreaker::call(&failsafe, || {
                    Ok::<u64, ()>(i)
                }));
            })
        });
    });
    let recloser = recloser_breaker();
    group.bench_function("breaker/recloser (sync call)", |b| {
        b.iter_custom(|iters| {
            sync_two(iters, &|i| {
                let _ = black_box(recloser.call(|| Ok::<u64, ()>(i)));
            })
        });
    });
    bench_async_two(&mut group, "bulkhead/mainstay", mainstay_bulkhead);
    bench_async_two(
        &mut group,
        "bulkhead/tower ConcurrencyLimit",
        tower_concurrency_limit,
    );
    bench_async_two(&mut group, "bulkhead/tower-resilience", peer_bulkhead);
    bench_async_two(&mut group, "stack/mainstay", mainstay_stack);
    bench_async_two(
        &mut group,
        "stack/mainstay, static breaker",
        mainstay_stack_static,
    );
    bench_async_two(&mut group, "stack/tower + tower-resilience", peer_stack);
    group.finish();
}

/// Heap allocations per call, on one thread, after a warm-up.
fn allocations_per_call<S: Service<u64>>(mut service: S) -> f64 {
    let rt = runtime();
    drive(&mut service, 1_000, &rt);
    let calls = 10_000;
    let (_, allocations) = CountingAllocator::count(|| drive(&mut service, calls, &rt));
    allocations as f64 / calls as f64
}

fn print_allocations() {
    let rows: [(&str, f64); 23] = [
        ("bare no-op service", allocations_per_call(Noop)),
        (
            "breaker/mainstay count window",
            allocations_per_call(mainstay_breaker()),
        ),
        (
            "breaker/mainstay count window, static",
            allocations_per_call(mainstay_breaker_static()),
        ),
        (
            "breaker/mainstay time window",
            allocations_per_call(mainstay_breaker_time_window()),
        ),
        (
            "breaker/tower-resilience",
            allocations_per_call(peer_breaker()),
        ),
        (
            "bulkhead/mainstay",
            allocations_per_call(mainstay_bulkhead()),
        ),
        (
            "bulkhead/tower ConcurrencyLimit",
            allocations_per_call(tower_concurrency_limit()),
        ),
        (
            "bulkhead/tower-resilience",
            allocations_per_call(peer_bulkhead()),
        ),
        ("retry/mainstay", allocations_per_call(mainstay_retry())),
        ("retry/tower Retry", allocations_per_call(tower_retry())),
        ("retry/tower-resilience", allocations_per_call(peer_retry())),
        ("timeout/mainstay", allocations_per_call(mainstay_timeout())),
        (
            "timeout/tower Timeout",
            allocations_per_call(tower_timeout()),
        ),
        (
            "rate limit/mainstay",
            allocations_per_call(mainstay_rate_limit()),
        ),
        (
            "adaptive/mainstay AIMD",
            allocations_per_call(mainstay_adaptive()),
        ),
        (
            "adaptive/tower-resilience AIMD",
            allocations_per_call(peer_adaptive()),
        ),
        (
            "fallback/mainstay",
            allocations_per_call(mainstay_fallback()),
        ),
        (
            "fallback/tower-resilience",
            allocations_per_call(peer_fallback()),
        ),
        ("hedge/mainstay", allocations_per_call(mainstay_hedge())),
        ("hedge/tower Hedge", allocations_per_call(tower_hedge())),
        ("stack/mainstay", allocations_per_call(mainstay_stack())),
        (
            "stack/mainstay, static breaker",
            allocations_per_call(mainstay_stack_static()),
        ),
        (
            "stack/tower + tower-resilience",
            allocations_per_call(peer_stack()),
        ),
    ];
    println!("\nallocations per call (1 thread):");
    for (name, per_call) in rows {
        println!("  {name:<40} {per_call:>6.2}");
    }
    let failsafe = failsafe_breaker();
    let (_, n) = CountingAllocator::count(|| {
        sync_loop(10_000, |i| {
            let _ = failsafe::CircuitBreaker::call(&failsafe, || Ok::<u64, ()>(i));
        })
    });
    println!(
        "  {:<40} {:>6.2}",
        "breaker/failsafe (sync call)",
        n as f64 / 10_000.0
    );
    let recloser = recloser_breaker();
    let (_, n) = CountingAllocator::count(|| {
        sync_loop(10_000, |i| {
            let _ = recloser.call(|| Ok::<u64, ()>(i));
        })
    });
    println!(
        "  {:<40} {:>6.2}\n",
        "breaker/recloser (sync call)",
        n as f64 / 10_000.0
    );
}

/// What this machine charges for the atomics every shared middleware needs, to read the other
/// rows against: a counted handle clone and drop (two atomic read-modify-writes) and one
/// `fetch_add`.
fn primitives(c: &mut Criterion) {
    let mut group = c.benchmark_group("primitives");
    let shared = Arc::new(AtomicU64::new(0));
    group.bench_function("Arc clone + drop", |b| {
        b.iter(|| drop(black_box(Arc::clone(&shared))));
    });
    group.bench_function("AtomicU64::fetch_add", |b| {
        b.iter(|| black_box(shared.fetch_add(1, Ordering::Relaxed)));
    });
    group.finish();
}

fn main() {
    print_allocations();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    primitives(&mut criterion);
    one_thread(&mut criterion);
    two_threads(&mut criterion);
    criterion.final_summary();
}
