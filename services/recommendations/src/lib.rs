//! The recommendations service: "bought together", popular and personal picks, from a read
//! model built only from events.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /recommendations?product=&category=&limit=` | optional | with `product`: what was bought with it; signed in, without `product`: picks from the caller's history; otherwise the most popular (in `category`, when given) |
//! | `GET /recommendations/me?limit=` | signed in | picks from the caller's history |
//!
//! The consumer `recommendations` reads `OrderConfirmed` on `orders.events` and the catalog's
//! batches of views (`ProductsViewed` on `catalog.views`) through the inbox, and keeps
//! ([`store`]) co-purchases per day, popularity per product per hour (10 per order, 1 per
//! view) and each user's history, over a sliding window (`RECOMMENDATIONS_WINDOW_HOURS`,
//! pruned hourly). Each order counts once, whichever message carried it.
//!
//! An answer is a list of the catalog's products, and the `basis` of its first pick:
//! `co-purchase`, `history`, `popular`, or `catalog` (the catalog's own first page: nothing was
//! bought or viewed yet). A short list is filled from the next basis in that order. Rankings
//! are served through [`mainstay_cache::Cache`] (fresh for `RECOMMENDATIONS_TTL_MS`, then stale
//! while they refresh, and stale rather than nothing while the store fails); products through
//! another, from the catalog's client stack. When the store fails and nothing is cached, the
//! answer falls back to the popular, then to the catalog; only when the catalog cannot say
//! either is it a `503`.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mainstay_auth::Validator;
use mainstay_cache::Cache;
use serde::Serialize;
use serde_json::Value;
use shop_common::catalog::HttpCatalog;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::tasks::Stage;
use shop_messaging::contracts::{
    CATALOG_VIEWS, MAX_VIEWED_PRODUCTS, MAX_VIEWERS, ORDERS_EVENTS, OrderConfirmed, ProductsViewed,
    check_order_id,
};
use shop_messaging::{ConsumerConfig, HandleError, Handler, Inbound, Outcome, Poison};

pub use self::api::router;
pub use self::config::RecommendationsConfig;
use self::store::{Ranked, RecommendationStore};

/// The most products one answer holds.
pub const MAX_LIMIT: u32 = 20;

/// The most bytes of a product or category id.
pub const MAX_ID: usize = 64;

/// The most products of one order that make co-purchase pairs (the first, by id): an order of
/// `n` products makes `n × (n − 1)` pairs.
pub const MAX_PAIRED: usize = 20;

/// The most lines an order may hold here (orders takes at most 50).
const MAX_ORDER_LINES: usize = 100;

/// How many of a user's latest products their picks are drawn from.
const HISTORY: u32 = 10;

/// How many popular products a category's picks are looked for among.
const CATEGORY_SCAN: u32 = 200;

/// Whether `id` is a product or category id this service takes: the catalog's slugs, 1 to
/// [`MAX_ID`] bytes of lower-case ASCII letters, digits and `-` (safe in a path and a query).
#[must_use]
pub fn id_ok(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a list of picks was drawn from (its first pick's basis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// Bought with the product asked about.
    CoPurchase,
    /// Bought with what the caller bought or viewed lately.
    History,
    /// The most bought and viewed over the window.
    Popular,
    /// The catalog's first page: nothing to rank yet, or the store failed.
    Catalog,
}

/// An answer: products, as the catalog has them.
#[derive(Debug, Clone, Serialize)]
pub struct Picks {
    /// The products, the best first.
    pub items: Vec<Value>,
    /// What the first was drawn from.
    pub basis: Basis,
}

/// What to recommend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// What was bought with a product.
    BoughtWith(String),
    /// From a user's history.
    For(String),
    /// The most popular.
    Popular,
}

/// Where products come from: the catalog.
#[async_trait]
pub trait Products: Send + Sync + 'static {
    /// The product `id` as the catalog answers it, `None` when it has none.
    async fn product(&self, id: &str) -> Result<Option<Value>, ProductsError>;
    /// The catalog's first page of up to `limit` products (of `category`, when given).
    async fn featured(
        &self,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Value>, ProductsError>;
}

/// The catalog could not say.
#[derive(Debug, thiserror::Error)]
#[error("the catalog: {0}")]
pub struct ProductsError(pub String);

#[async_trait]
impl Products for HttpCatalog {
    async fn product(&self, id: &str) -> Result<Option<Value>, ProductsError> {
        self.get_json(&format!("/products/{id}"), 64 * 1024)
            .await
            .map_err(|e| ProductsError(e.0))
    }

    async fn featured(
        &self,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Value>, ProductsError> {
        let path = match category {
            Some(category) => format!("/products?per_page={limit}&category={category}"),
            None => format!("/products?per_page={limit}"),
        };
        let page = self
            .get_json(&path, 1024 * 1024)
            .await
            .map_err(|e| ProductsError(e.0))?;
        Ok(match page {
            Some(Value::Object(mut page)) => match page.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }
}

/// The service's state.
#[derive(Clone)]
pub struct Recommendations(Arc<Inner>);

struct Inner {
    store: RecommendationStore,
    products: Arc<dyn Products>,
    details: Cache<String, Value>,
    featured: Cache<String, Vec<Value>>,
    rankings: Cache<String, Vec<Ranked>>,
    window: Duration,
    validator: Validator,
}

impl std::fmt::Debug for Recommendations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommendations")
            .field("window", &self.0.window)
            .finish_non_exhaustive()
    }
}

impl Recommendations {
    /// The read model in `store`, products from `products`, over `window`; rankings fresh for
    /// `ranking_ttl`. Routes trust tokens `validator` accepts.
    #[must_use]
    pub fn new(
        store: RecommendationStore,
        products: Arc<dyn Products>,
        window: Duration,
        ranking_ttl: Duration,
        validator: Validator,
    ) -> Self {
        let details = Cache::builder("recommended_products")
            .max_capacity(50_000)
            .ttl(Duration::from_secs(30))
            .stale_while_revalidate(Duration::from_secs(300))
            .negative_ttl(Duration::from_secs(5))
            .build();
        let featured = Cache::builder("recommended_featured")
            .max_capacity(1_000)
            .ttl(Duration::from_secs(30))
            .stale_while_revalidate(Duration::from_secs(300))
            .build();
        let rankings = Cache::builder("recommendation_rankings")
            .max_capacity(100_000)
            .ttl(ranking_ttl)
            .stale_while_revalidate((ranking_ttl * 30).max(Duration::from_secs(60)))
            .build();
        Self(Arc::new(Inner {
            store,
            products,
            details,
            featured,
            rankings,
            window,
            validator,
        }))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &RecommendationStore {
        &self.0.store
    }

    /// The ranking caches (for their metrics): rankings, then products.
    #[must_use]
    pub fn caches(&self) -> (&Cache<String, Vec<Ranked>>, &Cache<String, Value>) {
        (&self.0.rankings, &self.0.details)
    }

    /// The consumer of orders and views: `recommendations` on [`ORDERS_EVENTS`] and
    /// [`CATALOG_VIEWS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("recommendations", &[ORDERS_EVENTS, CATALOG_VIEWS])
    }

    /// The handler of those events (see [`Events`]).
    #[must_use]
    pub fn events(&self) -> Events {
        Events {
            window: self.0.window,
        }
    }

    fn since(&self) -> i64 {
        let window = i64::try_from(self.0.window.as_millis()).unwrap_or(i64::MAX);
        shop_common::unix_millis().saturating_sub(window)
    }

    /// A ranking, through the cache: `key` names it, `load` computes it from the store.
    async fn ranked<F, Fut>(&self, key: String, load: F) -> Result<Vec<Ranked>, String>
    where
        F: FnOnce(RecommendationStore, i64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Ranked>, StoreError>> + Send + 'static,
    {
        let store = self.0.store.clone();
        let since = self.since();
        self.0
            .rankings
            .get_or_load(
                &key,
                move || async move { load(store, since).await.map(Some) },
            )
            .await
            .map(Option::unwrap_or_default)
            .map_err(|error| error.to_string())
    }

    async fn popular(&self, limit: u32) -> Result<Vec<Ranked>, String> {
        self.ranked(format!("popular:{limit}"), move |store, since| async move {
            store.popular(since, limit).await
        })
        .await
    }

    async fn bought_with(&self, product: &str, limit: u32) -> Result<Vec<Ranked>, String> {
        let products = vec![product.to_owned()];
        self.ranked(
            format!("with:{product}:{limit}"),
            move |store, since| async move { store.bought_with(&products, since, limit).await },
        )
        .await
    }

    async fn for_user(&self, user: &str, limit: u32) -> Result<Vec<Ranked>, String> {
        let user = user.to_owned();
        self.ranked(
            format!("for:{user}:{limit}"),
            move |store, since| async move {
                let history = store.history(&user, since, HISTORY).await?;
                let seen: Vec<String> = history.into_iter().map(|seen| seen.product_id).collect();
                store.bought_with(&seen, since, limit).await
            },
        )
        .await
    }

    /// A product as the catalog has it, through the cache; `None` when it has none or cannot
    /// say.
    async fn product(&self, id: &str) -> Option<Value> {
        let products = self.0.products.clone();
        let key = id.to_owned();
        match self
            .0
            .details
            .get_or_load(&key.clone(), move || async move {
                products.product(&key).await.map_err(|e| e.to_string())
            })
            .await
        {
            Ok(product) => product,
            Err(error) => {
                tracing::debug!(product = id, %error, "a pick left out: the catalog cannot say");
                None
            }
        }
    }

    /// The catalog's first page (of `category`), through the cache.
    async fn featured(&self, category: Option<&str>, limit: u32) -> Result<Vec<Value>, String> {
        let products = self.0.products.clone();
        let owned = category.map(str::to_owned);
        let key = format!("{}:{limit}", category.unwrap_or(""));
        self.0
            .featured
            .get_or_load(&key, move || async move {
                products
                    .featured(owned.as_deref(), limit)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            })
            .await
            .map(Option::unwrap_or_default)
            .map_err(|error| error.to_string())
    }

    /// Up to `limit` (1 to [`MAX_LIMIT`]) picks for `ask`, only of `category` when given.
    ///
    /// # Errors
    ///
    /// Nothing could be drawn from anything, the catalog's first page included (the catalog is
    /// down and nothing was cached).
    pub async fn recommend(
        &self,
        ask: &Ask,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Picks, String> {
        let limit = limit.clamp(1, MAX_LIMIT);
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        // The candidates, by basis, best first; a failed basis is skipped (logged).
        let mut bases: Vec<(Basis, Vec<Ranked>)> = Vec::new();
        let mut exclude: Vec<String> = Vec::new();
        // With a category, the picks may be far down each ranking.
        let scan = if category.is_some() {
            CATEGORY_SCAN
        } else {
            limit + 1
        };
        match ask {
            Ask::BoughtWith(product) => {
                exclude.push(product.clone());
                bases.push((
                    Basis::CoPurchase,
                    or_skip(self.bought_with(product, scan).await),
                ));
            }
            Ask::For(user) => {
                bases.push((Basis::History, or_skip(self.for_user(user, scan).await)));
            }
            Ask::Popular => {}
        }
        bases.push((Basis::Popular, or_skip(self.popular(scan).await)));
        let mut picks: Vec<Value> = Vec::new();
        let mut basis = None;
        let mut taken: Vec<String> = exclude;
        for (from, ranked) in bases {
            let wanted: Vec<String> = ranked
                .into_iter()
                .map(|ranked| ranked.product_id)
                .filter(|id| !taken.contains(id))
                .collect();
            // Looked up a page at a time: a category's picks may be far down the ranking.
            for chunk in wanted.chunks(limit_usize) {
                let found =
                    futures_util::future::join_all(chunk.iter().map(|id| self.product(id))).await;
                for (id, product) in chunk.iter().zip(found) {
                    let Some(product) = product else { continue };
                    if let Some(category) = category
                        && product.get("category_id").and_then(Value::as_str) != Some(category)
                    {
                        continue;
                    }
                    if picks.len() < limit_usize {
                        picks.push(product);
                        taken.push(id.clone());
                        basis.get_or_insert(from);
                    }
                }
                if picks.len() >= limit_usize {
                    break;
                }
            }
        }
        if picks.len() < limit_usize {
            match self.featured(category, limit).await {
                Ok(featured) => {
                    for product in featured {
                        let id = product.get("id").and_then(Value::as_str).unwrap_or("");
                        if picks.len() < limit_usize && !taken.iter().any(|t| t == id) {
                            taken.push(id.to_owned());
                            picks.push(product);
                            basis.get_or_insert(Basis::Catalog);
                        }
                    }
                }
                Err(error) if picks.is_empty() => return Err(error),
                Err(error) => tracing::debug!(%error, "picks not filled from the catalog"),
            }
        }
        Ok(Picks {
            items: picks,
            basis: basis.unwrap_or(Basis::Catalog),
        })
    }

    /// Forgets what the window no longer holds every hour, under `tasks`.
    pub fn prune_hourly(&self, tasks: &shop_common::tasks::Supervisor) {
        let this = self.clone();
        tasks.every(
            "recommendations-prune",
            Stage::Sweepers,
            Duration::from_secs(3600),
            move || {
                let this = this.clone();
                async move {
                    match this.0.store.prune(this.since()).await {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(rows, "pruned what the window left behind"),
                        Err(error) => tracing::warn!(%error, "pruning failed"),
                    }
                }
            },
        );
    }
}

/// A ranking, or none when the store failed and nothing was cached (logged: the next basis
/// fills in).
fn or_skip(ranked: Result<Vec<Ranked>, String>) -> Vec<Ranked> {
    ranked.unwrap_or_else(|error| {
        tracing::warn!(%error, "a ranking fell back: the store failed");
        Vec::new()
    })
}

/// Applies orders and views to the read model (see [`Recommendations::events`]): each
/// `OrderConfirmed` once per order (co-purchase pairs among its first [`MAX_PAIRED`] products,
/// an order for each product's popularity and the buyer's history); each `ProductsViewed`
/// batch's views to popularity and its viewers' histories. Other events, and events older than
/// the window, are acknowledged and not applied.
#[derive(Debug, Clone)]
pub struct Events {
    window: Duration,
}

fn check_id(what: &str, id: &str) -> Result<(), Poison> {
    if id_ok(id) {
        Ok(())
    } else {
        Err(Poison(format!(
            "a {what} id of {} bytes (1 to {MAX_ID} of a-z, 0-9 and -)",
            id.len()
        )))
    }
}

/// Applies an `OrderConfirmed`, within `tx`; whether it was new.
///
/// # Errors
///
/// The event is malformed (poison), or the database fails.
pub async fn apply_order(tx: &mut Tx, order: &OrderConfirmed) -> Result<bool, HandleError> {
    check_order_id(&order.order_id)?;
    if order.user_id.is_empty() || order.user_id.len() > 128 {
        return Err(Poison("a user id of 1 to 128 bytes".to_owned()).into());
    }
    if order.lines.len() > MAX_ORDER_LINES {
        return Err(Poison(format!("an order of {} lines", order.lines.len())).into());
    }
    let mut products: Vec<&str> = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        check_id("product", &line.product_id)?;
        products.push(&line.product_id);
    }
    products.sort_unstable();
    products.dedup();
    if !RecommendationStore::claim_order(tx, &order.order_id, &order.user_id, order.placed_at_ms)
        .await?
    {
        return Ok(false);
    }
    let at = order.placed_at_ms;
    for product in &products {
        RecommendationStore::add_popularity(tx, product, at, 1, 0).await?;
        RecommendationStore::add_history(tx, &order.user_id, product, 1, at).await?;
    }
    let paired = &products[..products.len().min(MAX_PAIRED)];
    for a in paired {
        for b in paired {
            if a != b {
                RecommendationStore::add_pair(tx, a, b, at).await?;
            }
        }
    }
    Ok(true)
}

/// Applies a `ProductsViewed` batch, within `tx`.
///
/// # Errors
///
/// The batch is malformed or larger than its bounds (poison), or the database fails.
pub async fn apply_views(tx: &mut Tx, batch: &ProductsViewed) -> Result<(), HandleError> {
    if batch.views.len() > MAX_VIEWED_PRODUCTS || batch.viewers.len() > MAX_VIEWERS {
        return Err(Poison(format!(
            "a batch of {} products and {} viewers",
            batch.views.len(),
            batch.viewers.len()
        ))
        .into());
    }
    for views in &batch.views {
        check_id("product", &views.product_id)?;
        RecommendationStore::add_popularity(
            tx,
            &views.product_id,
            batch.to_ms,
            0,
            i64::from(views.count),
        )
        .await?;
    }
    for viewer in &batch.viewers {
        check_id("product", &viewer.product_id)?;
        if viewer.user_id.is_empty() || viewer.user_id.len() > 128 {
            return Err(Poison("a viewer's user id of 1 to 128 bytes".to_owned()).into());
        }
        RecommendationStore::add_history(
            tx,
            &viewer.user_id,
            &viewer.product_id,
            0,
            viewer.viewed_at_ms,
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Handler for Events {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        // Older than the window: it counts no more, and what would remember that it was
        // counted (its order's claim) may be pruned by now.
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let horizon = shop_common::unix_millis().saturating_sub(window);
        if message.envelope.occurred_at_ms < horizon {
            return Ok(Outcome::Ack);
        }
        if message.is::<OrderConfirmed>() {
            let order: OrderConfirmed = message.decode()?;
            if order.placed_at_ms < horizon {
                return Ok(Outcome::Ack);
            }
            if !apply_order(tx, &order).await? {
                tracing::debug!(order_id = %order.order_id, "an order counted before");
            }
        } else if message.is::<ProductsViewed>() {
            apply_views(tx, &message.decode()?).await?;
        }
        Ok(Outcome::Ack)
    }
}

/// The recommendations service as its binary runs it, on `transport`, without serving: its kit
/// (to serve with `shop_common::serve`, or `serve_until` in the one-process system), its whole
/// app, and its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: RecommendationsConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Recommendations)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let store = open(&service.database)
        .await
        .map_err(std::io::Error::other)?;
    let catalog = HttpCatalog::at(
        config.catalog.clone(),
        config.service.request_timeout,
        config.attempt_timeout,
        &service.kit,
    );
    let recommendations = Recommendations::new(
        store,
        Arc::new(catalog),
        config.window,
        config.ranking_ttl,
        validator.clone(),
    );
    let (rankings, details) = recommendations.caches();
    service
        .kit
        .metrics
        .register_collector(Box::new(rankings.collector()));
    service
        .kit
        .metrics
        .register_collector(Box::new(details.collector()));
    recommendations.prune_hourly(&service.kit.tasks);
    service.consume(Recommendations::consumer_config(), recommendations.events());
    let (kit, app) = service.launch(router(recommendations.clone()), validator);
    Ok((kit, app, recommendations))
}

/// The read model on `database`, and the backbone's tables beside it, migrated.
///
/// # Errors
///
/// A migration fails.
pub async fn open(database: &Database) -> Result<RecommendationStore, StoreError> {
    let store = RecommendationStore::open(database).await?;
    shop_messaging::migrate(database).await?;
    Ok(store)
}
