//! The recommendations service, the same suites on SQLite and on PostgreSQL: the read model
//! rebuilt from a replayed stream equals the one built as events came (duplicates ignored,
//! order of arrival irrelevant); the window; picks and their fallbacks (an empty store, a
//! failed store, a catalog that is down); and the HTTP API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use serde_json::{Value, json};
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::contracts::{OrderConfirmed, OrderLine, ProductViews, ProductsViewed, Viewer};
use shop_messaging::{Handler, Inbound, Inbox, Message};
use shop_recommendations::{Ask, Basis, Products, ProductsError, Recommendations, open, router};

shop_common::on_both_stores!(
    a_replayed_stream_rebuilds_the_same_model,
    the_window_forgets_and_prunes,
    picks_by_basis_and_their_fallbacks,
    the_api_bounds_what_it_is_asked,
);

/// A catalog in memory, which can be made to fail.
#[derive(Default)]
struct Catalog {
    products: Mutex<HashMap<String, Value>>,
    down: AtomicBool,
}

impl Catalog {
    fn with(products: &[(&str, &str)]) -> Arc<Self> {
        let catalog = Self::default();
        for (id, category) in products {
            catalog.products.lock().unwrap().insert(
                (*id).to_owned(),
                json!({"id": id, "name": id, "category_id": category, "price_minor": 100}),
            );
        }
        Arc::new(catalog)
    }
}

#[async_trait]
impl Products for Catalog {
    async fn product(&self, id: &str) -> Result<Option<Value>, ProductsError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ProductsError("down".into()));
        }
        Ok(self.products.lock().unwrap().get(id).cloned())
    }

    async fn featured(
        &self,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Value>, ProductsError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ProductsError("down".into()));
        }
        let mut all: Vec<Value> = self
            .products
            .lock()
            .unwrap()
            .values()
            .filter(|p| category.is_none_or(|c| p["category_id"] == c))
            .cloned()
            .collect();
        all.sort_by_key(|p| p["id"].as_str().unwrap().to_owned());
        all.truncate(usize::try_from(limit).unwrap());
        Ok(all)
    }
}

const HOUR: i64 = 3_600_000;

fn now() -> i64 {
    shop_common::unix_millis()
}

fn order(id: &str, user: &str, products: &[&str], at: i64) -> OrderConfirmed {
    OrderConfirmed {
        order_id: id.to_owned(),
        user_id: user.to_owned(),
        lines: products
            .iter()
            .map(|p| OrderLine {
                product_id: (*p).to_owned(),
                quantity: 1,
                unit_price_minor: 100,
            })
            .collect(),
        total_minor: 100,
        currency: "EUR".into(),
        placed_at_ms: at,
    }
}

fn views(counts: &[(&str, u32)], viewers: &[(&str, &str)], at: i64) -> ProductsViewed {
    ProductsViewed {
        batch_id: uuid::Uuid::new_v4().to_string(),
        from_ms: at - 1_000,
        to_ms: at,
        views: counts
            .iter()
            .map(|(p, n)| ProductViews {
                product_id: (*p).to_owned(),
                count: *n,
            })
            .collect(),
        viewers: viewers
            .iter()
            .map(|(u, p)| Viewer {
                user_id: (*u).to_owned(),
                product_id: (*p).to_owned(),
                viewed_at_ms: at,
            })
            .collect(),
        dropped: 0,
    }
}

/// Delivers `message` as the consumer does: once per message id (the inbox), in one
/// transaction with its effect.
async fn deliver(recommendations: &Recommendations, message: &Inbound) {
    let database = recommendations.store().database();
    let mut tx = database.begin().await.unwrap();
    if Inbox::first_time(&mut tx, "recommendations", message.envelope.id)
        .await
        .unwrap()
    {
        recommendations
            .events()
            .handle(message, &mut tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn start(database: &Database, catalog: Arc<Catalog>) -> Recommendations {
    let store = open(database).await.unwrap();
    let (_, validator) = shop_common::testing::users_tokens();
    Recommendations::new(
        store,
        catalog,
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_millis(1),
        validator,
    )
}

fn inbound<M: Message + serde::Serialize>(message: &M) -> Inbound {
    Inbound::of(message, None).unwrap()
}

/// `message` delivered again.
fn copy(message: &Inbound) -> Inbound {
    let envelope = serde_json::to_string(&message.envelope).unwrap();
    Inbound {
        envelope: serde_json::from_str(&envelope).unwrap(),
        subject: message.subject.clone(),
        delivered: message.delivered + 1,
    }
}

/// A stream of orders and views over two days, with redeliveries and an order announced twice.
fn stream() -> Vec<Inbound> {
    let t = now() - 30 * HOUR;
    let mut messages = vec![
        inbound(&order("o1", "alice", &["kettle", "mug", "tea"], t)),
        inbound(&order("o2", "bob", &["kettle", "mug"], t + HOUR)),
        inbound(&views(
            &[("kettle", 5), ("lamp", 2)],
            &[("carol", "lamp")],
            t + 2 * HOUR,
        )),
        inbound(&order(
            "o3",
            "carol",
            &["lamp", "bulb", "bulb"],
            t + 26 * HOUR,
        )),
        inbound(&order("o4", "alice", &["mug", "spoon"], t + 27 * HOUR)),
        inbound(&views(&[("mug", 1)], &[("alice", "tea")], t + 28 * HOUR)),
    ];
    // The same message twice (redelivered), and the same order under another message id.
    let again = copy(&messages[0]);
    messages.push(again);
    messages.push(inbound(&order("o2", "bob", &["kettle", "mug"], t + HOUR)));
    messages
}

async fn a_replayed_stream_rebuilds_the_same_model(database: &Database, _: &str) {
    let catalog = Catalog::with(&[]);
    let incremental = start(database, catalog.clone()).await;
    let stream = stream();
    for message in &stream {
        deliver(&incremental, message).await;
    }
    let built = incremental.store().dump().await.unwrap();
    assert_eq!(built.orders.len(), 4, "each order once: {:?}", built.orders);
    let pair = |a: &str, b: &str| -> i64 {
        built
            .pairs
            .iter()
            .filter(|(_, p, o, _)| p == a && o == b)
            .map(|(_, _, _, n)| n)
            .sum()
    };
    assert_eq!(pair("kettle", "mug"), 2, "o1 and o2, each once");
    assert_eq!(pair("mug", "kettle"), 2, "both ways");
    assert_eq!(
        pair("bulb", "lamp"),
        1,
        "a product twice in an order pairs once"
    );
    assert_eq!(pair("bulb", "bulb"), 0, "never with itself");
    let kettle_views: i64 = built
        .popularity
        .iter()
        .filter(|(_, p, _, _)| p == "kettle")
        .map(|(_, _, _, v)| v)
        .sum();
    assert_eq!(kettle_views, 5);

    // Replayed in reverse into an empty store (SQLite in memory, whatever the dialect above),
    // every message once: the same model.
    let fresh = Database::connect("sqlite::memory:").await.unwrap();
    let replayed = start(&fresh, catalog).await;
    for message in stream.iter().rev() {
        deliver(&replayed, &copy(message)).await;
    }
    assert_eq!(replayed.store().dump().await.unwrap(), built);
}

async fn the_window_forgets_and_prunes(database: &Database, _: &str) {
    let catalog = Catalog::with(&[("old", "x"), ("new", "x")]);
    let recommendations = start(database, catalog).await;
    let long_ago = now() - 8 * 24 * HOUR; // beyond the 7-day window
    // Delivered now (late, or replayed from a dead letter): older than the window, not applied.
    deliver(
        &recommendations,
        &inbound(&order("o0", "u", &["old", "new"], long_ago)),
    )
    .await;
    assert!(
        recommendations
            .store()
            .dump()
            .await
            .unwrap()
            .orders
            .is_empty()
    );
    // Applied when it was recent: it is in the store, and the window leaves it behind.
    let database = recommendations.store().database();
    let mut tx = database.begin().await.unwrap();
    let old = order("o1", "u", &["old", "new"], long_ago);
    assert!(
        shop_recommendations::apply_order(&mut tx, &old)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    deliver(
        &recommendations,
        &inbound(&order("o2", "u", &["new"], now())),
    )
    .await;
    let store = recommendations.store();
    let since = now() - 7 * 24 * HOUR;
    let popular = store.popular(since, 10).await.unwrap();
    assert_eq!(
        popular
            .iter()
            .map(|r| r.product_id.as_str())
            .collect::<Vec<_>>(),
        ["new"],
        "the old order counts no more"
    );
    assert_eq!(popular[0].score, 10);
    assert!(
        store
            .bought_with(&["new".to_owned()], since, 10)
            .await
            .unwrap()
            .is_empty(),
        "nor does its pair"
    );
    let pruned = store.prune(since).await.unwrap();
    assert_eq!(
        pruned,
        2 + 2 + 1 + 1,
        "the old hour's two products, the pair both ways, the history of the old product only \
         (the new one's was bought since), and the old order"
    );
    let left = store.dump().await.unwrap();
    assert_eq!(left.orders.len(), 1);
    assert!(left.pairs.is_empty());
}

async fn picks_by_basis_and_their_fallbacks(database: &Database, _: &str) {
    let catalog = Catalog::with(&[
        ("kettle", "kitchen"),
        ("mug", "kitchen"),
        ("tea", "pantry"),
        ("spoon", "kitchen"),
        ("lamp", "home"),
    ]);
    let recommendations = start(database, catalog.clone()).await;
    let ids = |picks: &shop_recommendations::Picks| -> Vec<String> {
        picks
            .items
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Cold start: nothing bought or viewed, the catalog's first page.
    let cold = recommendations
        .recommend(&Ask::Popular, None, 3)
        .await
        .unwrap();
    assert_eq!(cold.basis, Basis::Catalog);
    assert_eq!(ids(&cold), ["kettle", "lamp", "mug"]);

    let t = now() - HOUR;
    for message in [
        inbound(&order("o1", "alice", &["kettle", "mug"], t)),
        inbound(&order("o2", "bob", &["kettle", "mug", "tea"], t)),
        inbound(&order("o3", "carol", &["kettle", "tea", "ghost"], t)),
        inbound(&order("o4", "dave", &["kettle", "mug"], t)),
        inbound(&views(&[("lamp", 25)], &[("erin", "spoon")], t)),
    ] {
        deliver(&recommendations, &message).await;
    }
    // What was ranked before is stale now (served while it refreshes): forgotten, as if it
    // had expired.
    recommendations.caches().0.invalidate_local();

    let with = recommendations
        .recommend(&Ask::BoughtWith("kettle".into()), None, 3)
        .await
        .unwrap();
    assert_eq!(with.basis, Basis::CoPurchase);
    assert_eq!(
        ids(&with),
        ["mug", "tea", "lamp"],
        "bought with the kettle (3 and 2 orders; the ghost the catalog no longer has left \
         out), then the most popular (25 views)"
    );

    let popular = recommendations
        .recommend(&Ask::Popular, None, 2)
        .await
        .unwrap();
    assert_eq!(popular.basis, Basis::Popular);
    assert_eq!(ids(&popular), ["kettle", "mug"], "40 and 30 against 25");

    let kitchen = recommendations
        .recommend(&Ask::Popular, Some("home"), 2)
        .await
        .unwrap();
    assert_eq!(ids(&kitchen), ["lamp"], "a category's popular, none other");

    let pantry = recommendations
        .recommend(&Ask::BoughtWith("kettle".into()), Some("pantry"), 3)
        .await
        .unwrap();
    assert_eq!(
        ids(&pantry),
        ["tea"],
        "bought with the kettle, of the pantry only"
    );
    assert_eq!(pantry.basis, Basis::CoPurchase);

    let erin = recommendations
        .recommend(&Ask::For("erin".into()), None, 2)
        .await
        .unwrap();
    assert_eq!(
        erin.basis,
        Basis::Popular,
        "nothing was bought with the spoon she viewed"
    );
    let alice = recommendations
        .recommend(&Ask::For("alice".into()), None, 2)
        .await
        .unwrap();
    assert_eq!(alice.basis, Basis::History);
    assert_eq!(
        ids(&alice)[0],
        "tea",
        "bought with her kettle and mug, and not bought by her"
    );

    // The store fails: what was ranked is served from the cache; what was not falls back to
    // the catalog.
    match database {
        Database::Sqlite(pool) => pool.close().await,
        Database::Postgres(pool) => pool.close().await,
    }
    let stale = recommendations
        .recommend(&Ask::BoughtWith("kettle".into()), None, 3)
        .await
        .unwrap();
    assert_eq!(stale.basis, Basis::CoPurchase, "the ranking, stale");
    let unknown = recommendations
        .recommend(&Ask::BoughtWith("lamp".into()), None, 2)
        .await
        .unwrap();
    assert_eq!(unknown.basis, Basis::Popular, "the cached popular ranking");

    // And the catalog is down too: products already looked up are served from the cache;
    // with nothing at all, a 503's error.
    catalog.down.store(true, Ordering::SeqCst);
    let stale = recommendations
        .recommend(&Ask::BoughtWith("kettle".into()), None, 3)
        .await
        .unwrap();
    assert!(!stale.items.is_empty());
    assert!(
        recommendations
            .recommend(&Ask::Popular, Some("nowhere"), 3)
            .await
            .is_err(),
        "nothing ranked, nothing cached, the catalog down"
    );
}

async fn the_api_bounds_what_it_is_asked(database: &Database, _: &str) {
    let catalog = Catalog::with(&[("kettle", "kitchen"), ("mug", "kitchen"), ("tea", "pantry")]);
    let recommendations = start(database, catalog).await;
    deliver(
        &recommendations,
        &inbound(&order("o1", "alice", &["kettle", "mug"], now())),
    )
    .await;
    // Bought with alice's mug by someone else: her personal pick.
    deliver(
        &recommendations,
        &inbound(&order("o2", "bob", &["mug", "tea"], now())),
    )
    .await;
    let (issuer, validator) = shop_common::testing::users_tokens();
    // The router trusts the issuer above.
    let recommendations = Recommendations::new(
        recommendations.store().clone(),
        Catalog::with(&[("kettle", "kitchen"), ("mug", "kitchen"), ("tea", "pantry")]),
        Duration::from_secs(7 * 24 * 3600),
        Duration::from_millis(1),
        validator,
    );
    let app = router(recommendations);
    let token = issuer.issue(&AccessClaims::new("alice")).unwrap().token;

    let with = call(
        &app,
        Method::GET,
        "/recommendations?product=kettle&limit=1",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(with.status, StatusCode::OK, "{:?}", with.body);
    assert_eq!(with.body["basis"], "co-purchase");
    assert_eq!(with.body["items"][0]["id"], "mug");
    assert_eq!(with.headers["cache-control"], "public, max-age=10");

    let mine = call(
        &app,
        Method::GET,
        "/recommendations/me",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(mine.status, StatusCode::OK, "{:?}", mine.body);
    assert_eq!(mine.headers["cache-control"], "private, no-store");
    let signed_in = call(
        &app,
        Method::GET,
        "/recommendations",
        Some(&token),
        None,
        None,
    )
    .await;
    assert_eq!(signed_in.status, StatusCode::OK);
    assert_eq!(
        signed_in.body["basis"], mine.body["basis"],
        "signed in: personal"
    );
    let anonymous = call(&app, Method::GET, "/recommendations", None, None, None).await;
    assert_eq!(anonymous.body["basis"], "popular");

    for bad in [
        "/recommendations?limit=0",
        "/recommendations?limit=21",
        "/recommendations?product=a%2Fb",
        "/recommendations?category=Kitchen",
        "/recommendations?surprise=1",
        &format!("/recommendations?product={}", "p".repeat(65)),
    ] {
        let refused = call(&app, Method::GET, bad, None, None, None).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            refused.body
        );
        assert_eq!(
            refused.headers["content-type"], "application/problem+json",
            "{bad}"
        );
    }
    let unsigned = call(&app, Method::GET, "/recommendations/me", None, None, None).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
}
