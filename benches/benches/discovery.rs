//! The balancer beside tower's own p2c, in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench discovery
//! ```
//!
//! * `balance/direct`: one endpoint service called directly (the floor);
//! * `balance/tower_p2c_peak_ewma`: tower's `p2c::Balance` over three endpoints with PeakEWMA,
//!   fed by a fixed `ServiceList`;
//! * `balance/mainstay_balanced`: our `Balanced` over the same three endpoints from a static
//!   source: the same p2c and PeakEWMA, plus outlier detection on every call and the
//!   no-endpoint check;
//! * `balance/mainstay_balanced_shared` and `balance/mainstay_balanced_tower_buffer`: the same
//!   balancer shared by clones, behind our `Shared` (a lock) and behind tower's `Buffer` (a
//!   channel to a worker task).
//!
//! Each iteration is one `ready().await` and one `call().await`.
#![allow(missing_docs)]
#![allow(
    clippy::disallowed_types,
    reason = "benchmarks measure wall-clock time with std::time::Instant"
)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use mainstay_discovery::balance::{BalanceOptions, Balanced, ErrorsFail, Shared};
use mainstay_discovery::{Endpoint, fixed};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt, service_fn};

fn endpoint(
    port: u16,
) -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = std::future::Ready<Result<u64, Infallible>>,
> + Clone {
    service_fn(move |n: u64| std::future::ready(Ok(n + u64::from(port))))
}

/// `iters` calls, in one `block_on`: the rows compare the calls, not entering the runtime.
async fn calls<S: Service<u64, Response = u64>>(service: &mut S, iters: u64) -> Duration
where
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let ready = service.ready().await.unwrap();
        black_box(ready.call(black_box(1)).await.unwrap());
    }
    start.elapsed()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("balance");

    let mut direct = endpoint(1);
    group.bench_function("direct", |b| {
        b.iter_custom(|iters| runtime.block_on(calls(&mut direct, iters)));
    });

    let list = ServiceList::new::<u64>(vec![endpoint(1), endpoint(2), endpoint(3)]);
    let discover = PeakEwmaDiscover::new::<u64>(
        list,
        Duration::from_millis(30),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    let mut tower_p2c = Balance::new(discover);
    group.bench_function("tower_p2c_peak_ewma", |b| {
        b.iter_custom(|iters| runtime.block_on(calls(&mut tower_p2c, iters)));
    });

    let source = fixed((1..=3).map(|p| Endpoint::new("127.0.0.1", p)).collect());
    let mut ours = Balanced::new(
        "bench",
        source,
        |e: &Endpoint| endpoint(e.port),
        ErrorsFail,
        BalanceOptions::default(),
    );
    group.bench_function("mainstay_balanced", |b| {
        b.iter_custom(|iters| runtime.block_on(calls(&mut ours, iters)));
    });

    // Shared by clones: through `Shared` (a lock) and through tower's `Buffer` (a worker task).
    let make = |e: &Endpoint| endpoint(e.port);
    let source = fixed((1..=3).map(|p| Endpoint::new("127.0.0.1", p)).collect());
    let mut shared = Shared::new(Balanced::new(
        "bench",
        source,
        make,
        ErrorsFail,
        BalanceOptions::default(),
    ));
    group.bench_function("mainstay_balanced_shared", |b| {
        b.iter_custom(|iters| runtime.block_on(calls(&mut shared, iters)));
    });
    let source = fixed((1..=3).map(|p| Endpoint::new("127.0.0.1", p)).collect());
    let mut buffered = Buffer::new(
        Balanced::new("bench", source, make, ErrorsFail, BalanceOptions::default()),
        1024,
    );
    group.bench_function("mainstay_balanced_tower_buffer", |b| {
        b.iter_custom(|iters| runtime.block_on(calls(&mut buffered, iters)));
    });
    group.finish();
    c.final_summary();
}
