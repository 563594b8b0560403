//! The carts service: one cart per user, its lines priced from the catalog whenever it is
//! shown (a price is never stored as truth), kept in Redis in production and in memory on the
//! embedded default.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /cart` | signed in | the caller's cart, each line at the catalog's price now, totals per currency |
//! | `PUT /cart/items/{product}` | signed in | `{"quantity": n}` (1 to [`MAX_QUANTITY`]) of a product the catalog has; at most [`MAX_LINES`] products |
//! | `DELETE /cart/items/{product}` | signed in | takes the product out |
//! | `DELETE /cart` | signed in | empties the cart |
//!
//! A cart lives [`CART_TTL`](store::CART_TTL) (7 days) after its last write. Checking out is
//! the orders service's `POST /checkout` with the cart's lines (the gateway's
//! `POST /api/v1/checkout`); when the order is confirmed (`OrderConfirmed` on `orders.events`)
//! what it bought leaves the cart, once, and whatever was added meanwhile stays. A rejected
//! order leaves the cart as it was, to try again. The first line of an empty cart announces
//! `CartStarted` on `carts.events` (analytics' cart → order conversion).

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mainstay_auth::Validator;
use mainstay_cache::Cache;
use shop_common::catalog::{HttpCatalog, Priced, Prices};
use shop_common::store::{Database, Tx};
use shop_messaging::contracts::{ORDERS_EVENTS, OrderConfirmed, check_order_id};
use shop_messaging::{ConsumerConfig, HandleError, Handler, Inbound, Outcome};

pub use self::api::router;
pub use self::config::CartsConfig;
use self::store::{CartStore, Lines, MemoryCarts, RedisCarts};

/// The most products one cart holds (as one order).
pub const MAX_LINES: usize = 50;

/// The most of one product a cart holds (as one order).
pub const MAX_QUANTITY: u32 = 100;

/// The service's state.
#[derive(Clone)]
pub struct Carts(Arc<Inner>);

struct Inner {
    store: Arc<dyn CartStore>,
    prices: Arc<dyn Prices>,
    cached: Cache<String, Priced>,
    validator: Validator,
    events: Option<Database>,
}

impl std::fmt::Debug for Carts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carts").finish_non_exhaustive()
    }
}

impl Carts {
    /// Carts in `store`, priced by `prices` (each product's price shown from a cache for
    /// `price_ttl`); routes trust tokens `validator` accepts.
    #[must_use]
    pub fn new(
        store: Arc<dyn CartStore>,
        prices: Arc<dyn Prices>,
        price_ttl: Duration,
        validator: Validator,
    ) -> Self {
        let cached = Cache::builder("cart_prices")
            .max_capacity(50_000)
            .ttl(price_ttl)
            .stale_while_revalidate(price_ttl)
            // A product the catalog does not have, remembered briefly.
            .negative_ttl(price_ttl)
            .build();
        Self(Arc::new(Inner {
            store,
            prices,
            cached,
            validator,
            events: None,
        }))
    }

    /// Announces each cart started (`CartStarted` on `carts.events`) through the outbox of
    /// `database`. Only the announcement is written there: the cart itself is in its store, so
    /// an announcement can be lost (the cart written, the database down), never made up.
    ///
    /// # Panics
    ///
    /// When called on a clone that shares its state (call it before cloning).
    #[must_use]
    pub fn announcing_to(mut self, database: Database) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("announcing_to is called before the carts are shared")
            .events = Some(database);
        self
    }

    /// Announces that `user`'s cart started, when announcing (see
    /// [`announcing_to`](Self::announcing_to)); a failure is logged.
    pub(crate) async fn started(&self, user: &str) {
        let Some(database) = &self.0.events else {
            return;
        };
        let event = shop_messaging::contracts::CartStarted {
            user_id: user.to_owned(),
            started_at_ms: shop_common::unix_millis(),
        };
        let written = async {
            let mut tx = database.begin().await?;
            shop_messaging::Outbox::enqueue(&mut tx, &event).await?;
            tx.commit().await?;
            Ok::<_, shop_messaging::OutboxError>(())
        };
        if let Err(error) = written.await {
            tracing::warn!(%error, "a cart started, not announced");
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn CartStore> {
        &self.0.store
    }

    /// The product's price now, from the cache or the catalog; `None` when the catalog has no
    /// such product.
    ///
    /// # Errors
    ///
    /// The catalog cannot say.
    pub async fn price(
        &self,
        product_id: &str,
    ) -> Result<Option<Priced>, mainstay_cache::CacheError> {
        let prices = self.0.prices.clone();
        let id = product_id.to_owned();
        self.0
            .cached
            .get_or_load(&product_id.to_owned(), move || async move {
                prices.price(&id, None).await
            })
            .await
    }

    /// The consumer of the orders' events: `carts` on [`ORDERS_EVENTS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("carts", &[ORDERS_EVENTS])
    }

    /// The handler of those events: an `OrderConfirmed` takes what it bought out of its
    /// user's cart.
    #[must_use]
    pub fn confirmations(&self) -> Confirmations {
        Confirmations(self.clone())
    }
}

/// Takes confirmed orders' lines out of their carts (see [`Carts::confirmations`]).
#[derive(Debug, Clone)]
pub struct Confirmations(Carts);

#[async_trait]
impl Handler for Confirmations {
    async fn handle(&self, message: &Inbound, _: &mut Tx) -> Result<Outcome, HandleError> {
        if !message.is::<OrderConfirmed>() {
            return Ok(Outcome::Ack);
        }
        let confirmed: OrderConfirmed = message.decode()?;
        check_order_id(&confirmed.order_id)?;
        let mut bought = Lines::new();
        for line in &confirmed.lines {
            let quantity = bought.entry(line.product_id.clone()).or_default();
            *quantity = quantity.saturating_add(line.quantity);
        }
        // Once per order whatever the inbox says: the store remembers the orders it took.
        self.0
            .store()
            .ordered(&confirmed.user_id, &confirmed.order_id, &bought)
            .await
            .map_err(|error| HandleError::Transient(error.into()))?;
        Ok(Outcome::Ack)
    }
}

/// The carts service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database, Redis or the transport cannot be opened, or the service cannot start on
/// them.
pub async fn launch(
    config: CartsConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Carts)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    shop_messaging::migrate(&service.database)
        .await
        .map_err(std::io::Error::other)?;
    let catalog = HttpCatalog::at(
        config.catalog.clone(),
        config.service.request_timeout,
        config.attempt_timeout,
        &service.kit,
    );
    let store: Arc<dyn CartStore> = match &config.redis_url {
        Some(url) => Arc::new(
            RedisCarts::connect(url.expose(), &config.redis_prefix, config.cart_ttl)
                .await
                .map_err(std::io::Error::other)?,
        ),
        None => Arc::new(MemoryCarts::new(1_000_000, config.cart_ttl)),
    };
    let carts = Carts::new(
        store,
        Arc::new(catalog),
        config.price_ttl,
        validator.clone(),
    )
    .announcing_to(service.database.clone());
    service.consume(Carts::consumer_config(), carts.confirmations());
    let (kit, app) = service.launch(router(carts.clone()), validator);
    Ok((kit, app, carts))
}
