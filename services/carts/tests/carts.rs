//! The carts service, the same suite on both stores (in memory, and Redis at
//! `127.0.0.1:6379` or `TEST_REDIS_URL`): lines priced from the catalog when shown, limits,
//! each user's own cart, the catalog down, and confirmed orders taking what they bought, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use mainstay_resilience::deadline::Deadline;
use serde_json::{Value, json};
use shop_carts::store::{CartStore, Lines, MemoryCarts, RedisCarts};
use shop_carts::{Carts, MAX_LINES, router};
use shop_common::catalog::{PriceError, Priced, Prices};
use shop_common::store::Database;
use shop_common::testing::{Reply, call};
use shop_messaging::contracts::{OrderConfirmed, OrderLine, OrderRejected};
use shop_messaging::{Handler, Inbound, Outcome};

/// A catalog in memory: prices by product, and a switch that makes it fail.
#[derive(Default)]
struct Catalog {
    prices: Mutex<HashMap<String, i64>>,
    down: std::sync::atomic::AtomicBool,
}

impl Catalog {
    fn with(products: &[(&str, i64)]) -> Arc<Self> {
        let catalog = Self::default();
        for (id, price) in products {
            catalog
                .prices
                .lock()
                .unwrap()
                .insert((*id).to_owned(), *price);
        }
        Arc::new(catalog)
    }
}

#[async_trait]
impl Prices for Catalog {
    async fn price(&self, id: &str, _: Option<Deadline>) -> Result<Option<Priced>, PriceError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PriceError("down".into()));
        }
        Ok(self.prices.lock().unwrap().get(id).map(|price| Priced {
            name: format!("The {id}"),
            price_minor: *price,
            currency: "EUR".into(),
        }))
    }
}

struct Rig {
    carts: Carts,
    app: axum::Router,
    catalog: Arc<Catalog>,
    issuer: mainstay_auth::TokenIssuer,
    validator: mainstay_auth::Validator,
}

impl Rig {
    fn new(store: Arc<dyn CartStore>) -> Self {
        let catalog = Catalog::with(&[("mug", 1_250), ("tea", 499), ("pen", 100)]);
        let (issuer, validator) = shop_common::testing::users_tokens();
        let carts = Carts::new(
            store,
            catalog.clone(),
            Duration::from_secs(5),
            validator.clone(),
        );
        Self {
            app: router(carts.clone()),
            carts,
            catalog,
            issuer,
            validator,
        }
    }

    fn token(&self, user: &str) -> String {
        self.issuer
            .issue(&AccessClaims::new(user).role("customer"))
            .unwrap()
            .token
    }

    async fn send(&self, method: Method, path: &str, user: &str, body: Option<Value>) -> Reply {
        call(&self.app, method, path, Some(&self.token(user)), body, None).await
    }

    async fn put(&self, user: &str, product: &str, quantity: u64) -> Reply {
        self.send(
            Method::PUT,
            &format!("/cart/items/{product}"),
            user,
            Some(json!({ "quantity": quantity })),
        )
        .await
    }

    /// The user's cart as another replica shows it: same store and catalog, an empty price
    /// cache.
    async fn fresh_replica_cart(&self, user: &str) -> Reply {
        let replica = router(Carts::new(
            self.carts.store().clone(),
            self.catalog.clone(),
            Duration::from_secs(5),
            self.validator.clone(),
        ));
        call(
            &replica,
            Method::GET,
            "/cart",
            Some(&self.token(user)),
            None,
            None,
        )
        .await
    }

    async fn quantities(&self, user: &str) -> Vec<(String, u64)> {
        let cart = self.send(Method::GET, "/cart", user, None).await;
        assert_eq!(cart.status, StatusCode::OK, "{:?}", cart.body);
        cart.body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| {
                (
                    line["product_id"].as_str().unwrap().to_owned(),
                    line["quantity"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Carts in Redis under a prefix of their own, or `None` (the test skips) when there is no
/// Redis and `MAINSTAY_REQUIRE_SERVERS` is unset.
async fn redis_store(ttl: Duration) -> Option<RedisCarts> {
    let prefix = format!("carts-test-{}", uuid::Uuid::new_v4());
    match RedisCarts::connect(&redis_url(), &prefix, ttl).await {
        Ok(store) => Some(store),
        Err(error) => {
            assert!(
                std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                "Redis at {} is required (MAINSTAY_REQUIRE_SERVERS is set): {error}",
                redis_url()
            );
            None
        }
    }
}

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod in_memory {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(std::sync::Arc::new(shop_carts::store::MemoryCarts::default())).await;
            })*
        }
        mod on_redis {
            $(#[tokio::test]
            async fn $scenario() {
                if let Some(store) = super::redis_store(shop_carts::store::CART_TTL).await {
                    super::$scenario(std::sync::Arc::new(store)).await;
                }
            })*
        }
    };
}

on_both_stores!(
    lines_are_priced_when_shown_and_limited,
    each_user_has_their_own_cart_and_must_sign_in,
    the_catalog_down_keeps_the_cart_and_refuses_what_it_cannot_check,
    a_confirmed_order_takes_what_it_bought_once_and_a_rejected_one_nothing,
    the_first_line_of_an_empty_cart_starts_it_and_is_announced,
);

async fn the_first_line_of_an_empty_cart_starts_it_and_is_announced(store: Arc<dyn CartStore>) {
    use shop_carts::store::Set;
    let user = format!("u-{}", uuid::Uuid::new_v4());
    assert_eq!(
        store.set(&user, "mug", 1, MAX_LINES).await.unwrap(),
        Set::Started
    );
    assert_eq!(
        store.set(&user, "mug", 2, MAX_LINES).await.unwrap(),
        Set::Done
    );
    assert_eq!(
        store.set(&user, "tea", 1, MAX_LINES).await.unwrap(),
        Set::Done
    );
    store.clear(&user).await.unwrap();
    assert_eq!(
        store.set(&user, "tea", 1, MAX_LINES).await.unwrap(),
        Set::Started,
        "emptied, then started again"
    );

    // Through the API, announced in the outbox: once per cart started.
    let database = Database::connect("sqlite::memory:").await.unwrap();
    shop_messaging::migrate(&database).await.unwrap();
    let mut rig = Rig::new(store);
    let carts = Carts::new(
        rig.carts.store().clone(),
        rig.catalog.clone(),
        Duration::from_secs(5),
        rig.validator.clone(),
    )
    .announcing_to(database.clone());
    rig.app = router(carts);
    let other = format!("v-{}", uuid::Uuid::new_v4());
    rig.put(&other, "mug", 1).await;
    rig.put(&other, "tea", 1).await;
    let pending = shop_messaging::Outbox::pending(&database, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "one cart started");
    assert_eq!(pending[0].subject, shop_messaging::contracts::CARTS_EVENTS);
    let envelope: shop_messaging::Envelope = serde_json::from_slice(&pending[0].payload).unwrap();
    let started: shop_messaging::contracts::CartStarted =
        serde_json::from_str(envelope.body.get()).unwrap();
    assert_eq!(started.user_id, other);
}

async fn lines_are_priced_when_shown_and_limited(store: Arc<dyn CartStore>) {
    let rig = Rig::new(store);
    let empty = rig.send(Method::GET, "/cart", "u1", None).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body["lines"], json!([]));
    assert_eq!(empty.body["totals"], json!({}));

    let added = rig.put("u1", "mug", 2).await;
    assert_eq!(added.status, StatusCode::OK, "{:?}", added.body);
    assert_eq!(
        added.body["lines"],
        json!([{"product_id": "mug", "quantity": 2, "name": "The mug", "unit_price_minor": 1250,
                "line_total_minor": 2500, "currency": "EUR"}])
    );
    rig.put("u1", "tea", 1).await;
    // Setting again sets, not adds.
    let cart = rig.put("u1", "mug", 3).await;
    assert_eq!(cart.body["totals"], json!({"EUR": 3 * 1250 + 499}));
    assert_eq!(
        rig.quantities("u1").await,
        [("mug".to_owned(), 3), ("tea".to_owned(), 1)]
    );

    for (product, quantity, status) in [
        ("mug", 0, StatusCode::UNPROCESSABLE_ENTITY),
        ("mug", 101, StatusCode::UNPROCESSABLE_ENTITY),
        (
            "mug",
            u64::from(u32::MAX) + 1,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("no-such-thing", 1, StatusCode::UNPROCESSABLE_ENTITY),
        ("Mug!", 1, StatusCode::BAD_REQUEST),
    ] {
        let refused = rig.put("u1", product, quantity).await;
        assert_eq!(
            refused.status, status,
            "{product} × {quantity}: {:?}",
            refused.body
        );
        assert_eq!(refused.headers["content-type"], "application/problem+json");
    }
    let long = "a".repeat(65);
    assert_eq!(
        rig.put("u1", &long, 1).await.status,
        StatusCode::BAD_REQUEST
    );
    let unknown_field = rig
        .send(
            Method::PUT,
            "/cart/items/mug",
            "u1",
            Some(json!({"quantity": 1, "price_minor": 1})),
        )
        .await;
    assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        rig.quantities("u1").await,
        [("mug".to_owned(), 3), ("tea".to_owned(), 1)],
        "nothing refused changed the cart"
    );

    // At most MAX_LINES products; those in it can still change.
    for n in 0..MAX_LINES {
        rig.catalog
            .prices
            .lock()
            .unwrap()
            .insert(format!("p{n}"), 1);
    }
    for n in 0..MAX_LINES - 2 {
        assert_eq!(
            rig.put("u1", &format!("p{n}"), 1).await.status,
            StatusCode::OK
        );
    }
    let full = rig.put("u1", &format!("p{}", MAX_LINES - 2), 1).await;
    assert_eq!(full.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(full.body["detail"].as_str().unwrap().contains("at most"));
    assert_eq!(rig.put("u1", "mug", 1).await.status, StatusCode::OK);

    let removed = rig
        .send(Method::DELETE, "/cart/items/mug", "u1", None)
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(
        removed.body["lines"].as_array().unwrap().len(),
        MAX_LINES - 1
    );
    let again = rig
        .send(Method::DELETE, "/cart/items/mug", "u1", None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let cleared = rig.send(Method::DELETE, "/cart", "u1", None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(rig.quantities("u1").await, []);
}

async fn each_user_has_their_own_cart_and_must_sign_in(store: Arc<dyn CartStore>) {
    let rig = Rig::new(store);
    rig.put("alice", "mug", 1).await;
    rig.put("bob", "tea", 4).await;
    assert_eq!(rig.quantities("alice").await, [("mug".to_owned(), 1)]);
    assert_eq!(rig.quantities("bob").await, [("tea".to_owned(), 4)]);
    rig.send(Method::DELETE, "/cart", "bob", None).await;
    assert_eq!(rig.quantities("alice").await, [("mug".to_owned(), 1)]);
    for (method, path) in [
        (Method::GET, "/cart"),
        (Method::PUT, "/cart/items/mug"),
        (Method::DELETE, "/cart/items/mug"),
        (Method::DELETE, "/cart"),
    ] {
        let anonymous = call(
            &rig.app,
            method,
            path,
            None,
            Some(json!({"quantity": 1})),
            None,
        )
        .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(rig.quantities("alice").await, [("mug".to_owned(), 1)]);
}

async fn the_catalog_down_keeps_the_cart_and_refuses_what_it_cannot_check(
    store: Arc<dyn CartStore>,
) {
    let rig = Rig::new(store);
    rig.put("u", "mug", 2).await;
    rig.catalog
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Known prices are shown from the cache a while.
    let cached = rig.send(Method::GET, "/cart", "u", None).await;
    assert_eq!(cached.body["lines"][0]["unit_price_minor"], 1250);
    // A product never priced cannot be checked: 503, and the cart is unchanged.
    let unchecked = rig.put("u", "tea", 1).await;
    assert_eq!(unchecked.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rig.quantities("u").await, [("mug".to_owned(), 2)]);
    // A product the catalog dropped is shown as unavailable (once its price is not cached).
    rig.catalog
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    rig.put("u", "pen", 1).await;
    rig.catalog.prices.lock().unwrap().remove("pen");
    // Another replica, whose cache never held it.
    let shown = rig.fresh_replica_cart("u").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["unavailable"], json!(["pen"]));
    assert_eq!(shown.body["lines"].as_array().unwrap().len(), 2);
    assert_eq!(shown.body["totals"], json!({"EUR": 2500}));
    assert_eq!(shown.body["prices_unavailable"], false);
    // The catalog down for a product never priced: the line is kept, without its price.
    rig.catalog
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let degraded = rig.fresh_replica_cart("u").await;
    assert_eq!(degraded.status, StatusCode::OK);
    assert_eq!(degraded.body["prices_unavailable"], true);
    assert_eq!(degraded.body["lines"][0]["quantity"], 2);
    assert_eq!(degraded.body["lines"][0]["unit_price_minor"], Value::Null);
}

async fn a_confirmed_order_takes_what_it_bought_once_and_a_rejected_one_nothing(
    store: Arc<dyn CartStore>,
) {
    let rig = Rig::new(store);
    let database = Database::connect("sqlite::memory:").await.unwrap();
    rig.put("u", "mug", 3).await;
    rig.put("u", "tea", 1).await;
    let handle = async |message: Inbound| {
        let mut tx = database.begin().await.unwrap();
        let outcome = rig.carts.confirmations().handle(&message, &mut tx).await;
        tx.commit().await.unwrap();
        outcome.unwrap()
    };
    let rejected = OrderRejected {
        order_id: "o-0".into(),
        user_id: "u".into(),
        reason: "PAYMENT_DECLINED".into(),
        placed_at_ms: 0,
    };
    assert_eq!(
        handle(Inbound::of(&rejected, None).unwrap()).await,
        Outcome::Ack
    );
    assert_eq!(
        rig.quantities("u").await,
        [("mug".to_owned(), 3), ("tea".to_owned(), 1)],
        "kept on rejection"
    );
    let confirmed = OrderConfirmed {
        order_id: "o-1".into(),
        user_id: "u".into(),
        lines: vec![
            OrderLine {
                product_id: "mug".into(),
                quantity: 2,
                unit_price_minor: 1250,
            },
            OrderLine {
                product_id: "tea".into(),
                quantity: 1,
                unit_price_minor: 499,
            },
        ],
        total_minor: 2999,
        currency: "EUR".into(),
        placed_at_ms: 0,
    };
    for _ in 0..2 {
        // Delivered again: nothing more is taken.
        assert_eq!(
            handle(Inbound::of(&confirmed, None).unwrap()).await,
            Outcome::Ack
        );
        assert_eq!(rig.quantities("u").await, [("mug".to_owned(), 1)]);
    }
    // Bought again by another order: taken.
    let mut second = confirmed.clone();
    second.order_id = "o-2".into();
    handle(Inbound::of(&second, None).unwrap()).await;
    assert_eq!(rig.quantities("u").await, []);
    // Another user's cart is not touched.
    rig.put("v", "mug", 1).await;
    let mut third = confirmed.clone();
    third.order_id = "o-3".into();
    handle(Inbound::of(&third, None).unwrap()).await;
    assert_eq!(rig.quantities("v").await, [("mug".to_owned(), 1)]);
    let direct: Lines = rig.carts.store().lines("v").await.unwrap();
    assert_eq!(direct, Lines::from([("mug".to_owned(), 1)]));
}

/// Prices are never stored: a change in the catalog shows once the cached one is past its
/// time (and its stale grace).
#[tokio::test(start_paused = true)]
async fn a_price_change_shows_once_the_cached_price_is_old() {
    let rig = Rig::new(Arc::new(MemoryCarts::default()));
    rig.put("u", "mug", 2).await;
    rig.catalog.prices.lock().unwrap().insert("mug".into(), 999);
    let cached = rig.send(Method::GET, "/cart", "u", None).await;
    assert_eq!(cached.body["lines"][0]["unit_price_minor"], 1250);
    tokio::time::advance(Duration::from_secs(11)).await;
    let changed = rig.send(Method::GET, "/cart", "u", None).await;
    assert_eq!(changed.body["lines"][0]["unit_price_minor"], 999);
    assert_eq!(changed.body["totals"], json!({"EUR": 1998}));
}

/// In Redis a cart is a hash with the time to live refreshed by every write.
#[tokio::test]
async fn in_redis_a_cart_is_a_hash_that_expires() {
    let ttl = Duration::from_secs(600);
    let Some(store) = redis_store(ttl).await else {
        return;
    };
    store.set("u", "mug", 2, MAX_LINES).await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", store.prefix()))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let kind: String = redis::cmd("TYPE")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(kind, "hash");
    let left: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((590..=600).contains(&left), "{left}");
    // A write sets it again (here: from a shorter one).
    let _: bool = redis::cmd("EXPIRE")
        .arg(&keys[0])
        .arg(5)
        .query_async(&mut connection)
        .await
        .unwrap();
    store.set("u", "tea", 1, MAX_LINES).await.unwrap();
    let left: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(left > 5, "{left}");
    store.clear("u").await.unwrap();
}
