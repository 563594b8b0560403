//! `GET /products/{id}` of the catalog service, served from its cache and from its database,
//! in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench catalog
//! ```
//!
//! The catalog's routes (without the server stack, whose cost BENCHMARKS.md gives apart) on
//! the embedded default: SQLite in memory, the 120 seeded products. `from_cache` is a warm
//! cache hit; `from_database` drops the cached copy before each request, so each one loads
//! the row (and serializes the same JSON).
#![allow(missing_docs)]

use axum::body::Body;
use criterion::Criterion;
use http::Request;
use shop_catalog::{Catalog, CatalogConfig, router};
use shop_common::config::{ServiceConfig, Vars};
use shop_common::store::Database;
use tower::{Service, ServiceExt};

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (catalog, mut service) = runtime.block_on(async {
        let vars = Vars(|var: &str| (var == "SEED_DEMO_CATALOG").then(|| "true".to_owned()));
        let service = ServiceConfig::from_vars("catalog", 0, &vars).unwrap();
        let config = CatalogConfig::from_vars(service, &vars).unwrap();
        let (_issuer, validator) = shop_common::testing::users_tokens();
        let database = Database::connect("sqlite::memory:").await.unwrap();
        let catalog = Catalog::start(&config, &database, validator).await.unwrap();
        (catalog.clone(), router(catalog).into_service::<Body>())
    });
    let mut group = c.benchmark_group("catalog/get_product");
    let mut get = |runtime: &tokio::runtime::Runtime, drop_cache: bool| {
        runtime.block_on(async {
            if drop_cache {
                catalog.product_cache().invalidate_local();
            }
            let request = Request::get("/products/kitchen-000")
                .body(Body::empty())
                .unwrap();
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response
        })
    };
    group.bench_function("from_cache", |b| b.iter(|| get(&runtime, false)));
    group.bench_function("from_database", |b| b.iter(|| get(&runtime, true)));
    group.finish();
    c.final_summary();
}
