//! The catalog service: products and categories, listed, searched and cached.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /categories` | — | every category |
//! | `GET /products?page&per_page&category&min_price&max_price&sort` | — | a page of products |
//! | `GET /products/search?q&limit` | — | full-text search (FTS5 on SQLite, `tsvector` on PostgreSQL) |
//! | `GET /products/{id}` | — | one product, through the cache, with `ETag` and `304` |
//! | `POST /product-views/{id}` | optional | a view of the product (`202`): counted, and announced every few seconds in a batch ([`views`]) |
//! | `POST /products`, `PUT /products/{id}`, `DELETE /products/{id}` | role `admin` | changes; they invalidate the cache, and a new price publishes `ProductPriceChanged` on `catalog.events` |
//!
//! Listing and search pages are cached for 5 s per replica: a write clears the replica's, and
//! every replica's once it is announced on `catalog.events` ([`Catalog::follow_events`]).
//! Reads of single products go through [`mainstay_cache::Cache`]: single-flight loads,
//! stale-while-revalidate, 404s remembered for 5 s, and with `REDIS_URL` a Redis second tier
//! whose invalidations reach every replica. Prices are integer minor units plus an ISO 4217
//! currency. Invalid paging, sorting or filtering is a 400 problem naming each bad parameter.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod seed;
pub mod store;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use mainstay_auth::Validator;
use mainstay_cache::Cache;
use mainstay_cache::redis::{RedisBus, RedisTier};
use shop_common::store::{Database, StoreError};

pub use self::api::router;
pub use self::config::CatalogConfig;
use self::store::{CatalogStore, Product};
use self::views::Views;

/// The subject catalog events are published on.
pub const EVENTS: &str = shop_messaging::contracts::CATALOG_EVENTS;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis URL is unusable.
    #[error("redis: {0}")]
    Redis(mainstay_cache::BoxError),
}

/// The service's state, shared by its handlers.
#[derive(Clone)]
pub struct Catalog(Arc<Inner>);

struct Inner {
    store: CatalogStore,
    products: Cache<String, Product>,
    /// Listing and search pages, as JSON, by their canonical query; local to the replica and
    /// short-lived (a write clears this replica's, other replicas' expire within the TTL).
    pages: Cache<String, bytes::Bytes>,
    views: Views,
    validator: Validator,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("products", &self.0.products)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens the store (migrating it, and the outbox beside it), seeds an empty catalog when
    /// configured to, and builds the product cache. Admin routes trust tokens `validator`
    /// accepts. Events are written to the outbox in the transaction of the change they announce
    /// (`ProductPriceChanged`); the service's relay publishes them.
    ///
    /// # Errors
    ///
    /// The database fails, or `REDIS_URL` is not a Redis URL.
    pub async fn start(
        config: &CatalogConfig,
        database: &Database,
        validator: Validator,
    ) -> Result<Self, StartError> {
        let store = CatalogStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        if config.seed_demo_catalog && store.count().await? == 0 {
            for category in seed::categories() {
                store.add_category(&category).await?;
            }
            let products = seed::products(shop_common::unix_seconds());
            for product in &products {
                store.create(product).await?;
            }
            tracing::info!(products = products.len(), "seeded the demo catalog");
        }
        let mut products = Cache::builder("products")
            .max_capacity(50_000)
            .ttl(config.cache_ttl)
            .stale_while_revalidate(config.cache_ttl)
            .negative_ttl(Duration::from_secs(5));
        if let Some(url) = &config.redis_url {
            products = products
                .second_tier(
                    RedisTier::from_url(url.expose(), format!("{}:products", config.redis_prefix))
                        .map_err(StartError::Redis)?,
                )
                .invalidation_bus(
                    RedisBus::from_url(url.expose(), format!("{}:invalidate", config.redis_prefix))
                        .map_err(StartError::Redis)?,
                );
        }
        let pages = Cache::builder("product_pages")
            .max_capacity(64 << 20)
            .weigher(|key: &String, page: &bytes::Bytes| {
                u32::try_from(key.len() + page.len()).unwrap_or(u32::MAX)
            })
            .ttl(Duration::from_secs(5))
            .stale_while_revalidate(Duration::from_secs(5))
            .build();
        Ok(Self(Arc::new(Inner {
            store,
            products: products.build(),
            pages,
            views: Views::default(),
            validator,
        })))
    }

    /// The product cache (for its metrics).
    #[must_use]
    pub fn product_cache(&self) -> &Cache<String, Product> {
        &self.0.products
    }

    /// Drops this replica's listing and search pages whenever a replica announces a change on
    /// [`EVENTS`], and at every gap in the events, under `tasks` (stopped by `serve` after the
    /// last request): a price changed through another replica is not listed stale here for
    /// the pages' lifetime.
    pub fn follow_events(
        &self,
        tasks: &shop_common::tasks::Supervisor,
        transport: Arc<dyn shop_messaging::Transport>,
    ) {
        let pages = self.0.pages.clone();
        tasks.spawn(
            "page-cache-invalidation",
            shop_common::tasks::Stage::Consumers,
            move |stop| {
                shop_messaging::follow(
                    transport,
                    vec![EVENTS.to_owned()],
                    stop.cancelled_owned(),
                    move |_| pages.invalidate_local(),
                )
            },
        );
    }

    /// The listing and search page cache (for its metrics).
    #[must_use]
    pub fn page_cache(&self) -> &Cache<String, bytes::Bytes> {
        &self.0.pages
    }

    /// The product views counted since the last batch.
    #[must_use]
    pub fn views(&self) -> &Views {
        &self.0.views
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &CatalogStore {
        &self.0.store
    }
}

/// The the catalog service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: CatalogConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Catalog)> {
    let validator = config.tokens.validator()?;
    let service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let catalog = Catalog::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    // Other replicas' changes drop this one's cached pages.
    catalog.follow_events(&service.kit.tasks, service.transport.clone());
    catalog.views().flush_every(
        &service.kit.tasks,
        service.database.clone(),
        config.views_flush,
    );
    let collector = catalog.product_cache().collector();
    service.kit.metrics.register_collector(Box::new(collector));
    let (kit, app) = service.launch(router(catalog.clone()), validator);
    Ok((kit, app, catalog))
}
