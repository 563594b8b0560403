//! The catalog API, the same suite on SQLite and on PostgreSQL.

use axum::Router;
use http::{Method, StatusCode, header};
use mainstay_auth::AccessClaims;
use serde_json::{Value, json};
use shop_catalog::{Catalog, CatalogConfig, EVENTS, router};
use shop_common::Kit;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::store::Database;
use shop_common::testing::Reply;
use shop_messaging::contracts::ProductPriceChanged;
use shop_messaging::{Envelope, Outbox};

struct Shop {
    app: Router,
    catalog: Catalog,
    admin: String,
    customer: String,
}

impl Shop {
    async fn start(database: &Database, url: &str) -> Self {
        Self::start_with(database, url, &[]).await
    }

    async fn start_with(database: &Database, url: &str, extra: &[(&str, &str)]) -> Self {
        let mut pairs = vec![("DATABASE_URL", url), ("SEED_DEMO_CATALOG", "true")];
        pairs.extend_from_slice(extra);
        let vars = Vars(|var: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        });
        let service = ServiceConfig::from_vars("catalog", 0, &vars).unwrap();
        let config = CatalogConfig::from_vars(service, &vars).unwrap();
        let (issuer, validator) = shop_common::testing::users_tokens();
        let catalog = Catalog::start(&config, database, validator).await.unwrap();
        let kit = Kit::new(config.service.clone())
            .with_idempotency(database)
            .await
            .unwrap();
        let token = |role: &str| {
            issuer
                .issue(&AccessClaims::new(format!("{role}-1")).role(role))
                .unwrap()
                .token
        };
        Self {
            app: kit.stack(router(catalog.clone())),
            admin: token("admin"),
            customer: token("customer"),
            catalog,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        header: Option<(&str, &str)>,
    ) -> Reply {
        shop_common::testing::call(&self.app, method, path, token, body, header).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, None, None).await
    }
}

shop_common::on_both_stores!(
    listing_pages_filters_and_sorts,
    invalid_listing_parameters_are_400_problems,
    a_product_is_served_through_the_cache_with_etags,
    search_finds_by_words_and_ignores_query_syntax,
    writes_need_the_admin_role_and_validate_their_fields,
    a_price_change_invalidates_the_cache_and_writes_its_event_with_it,
    with_redis_a_change_on_one_replica_reaches_the_others,
    a_price_changed_through_one_replica_is_listed_at_once_by_another,
    views_are_counted_and_announced_in_one_batch,
);

/// `id`'s price as its category's listing shows it.
async fn listed_price(shop: &Shop, id: &str) -> Value {
    let page = shop
        .get("/products?category=garden&per_page=100")
        .await
        .body;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()["price_minor"]
        .clone()
}

/// Two replicas, the local bus on their database: B's cached listing is dropped when A's change
/// is published, well before the page's 5 s (and 5 s stale) would let it go.
async fn a_price_changed_through_one_replica_is_listed_at_once_by_another(
    database: &Database,
    url: &str,
) {
    use std::time::Duration;
    let a = Shop::start(database, url).await;
    let b = Shop::start(database, url).await;
    let bus = std::sync::Arc::new(
        shop_messaging::LocalTransport::open(database.clone())
            .await
            .unwrap(),
    );
    let tasks = shop_common::tasks::Supervisor::new();
    b.catalog.follow_events(&tasks, bus.clone());
    let pages = || async {
        let cache = b.catalog.page_cache();
        cache.run_pending_tasks().await;
        cache.stats().entries
    };
    let cleared = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while pages().await > 0 {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    };
    let relay = shop_messaging::Relay::new(database.clone(), bus.clone());
    // Until B's subscription is open: a page cached, then a message (or the subscription's
    // opening gap) clears it.
    let mut probes = 0;
    loop {
        b.get("/products?sort=price_asc").await;
        assert_eq!(pages().await, 1);
        use shop_messaging::Publisher as _;
        let probe = shop_messaging::Pending {
            seq: 0,
            id: shop_messaging::MessageId::new(),
            subject: EVENTS.to_owned(),
            key: "probe".to_owned(),
            headers: std::collections::HashMap::new(),
            payload: b"{}".to_vec(),
            attempts: 0,
        };
        bus.publish(&[probe]).await.unwrap();
        if cleared().await {
            break;
        }
        probes += 1;
        assert!(probes < 5, "B never followed the events");
    }

    let before = listed_price(&b, "garden-001").await;
    assert_eq!(pages().await, 1, "cached");
    let mut changed = a.get("/products/garden-001").await.body;
    for field in ["version", "created_at", "updated_at"] {
        changed.as_object_mut().unwrap().remove(field);
    }
    changed["price_minor"] = json!(before.as_i64().unwrap() + 100);
    let reply = a
        .call(
            Method::PUT,
            "/products/garden-001",
            Some(&a.admin),
            Some(changed.clone()),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Not yet published: B still lists the old price from its page.
    assert_eq!(listed_price(&b, "garden-001").await, before);
    assert!(relay.relay_once().await.unwrap().published >= 1);
    assert!(cleared().await, "B kept its stale page");
    assert_eq!(listed_price(&b, "garden-001").await, changed["price_minor"]);
    tasks.shutdown(Duration::from_secs(5)).await;
}

/// Production mode: two replicas on one database and one Redis (a unique key prefix).
async fn with_redis_a_change_on_one_replica_reaches_the_others(database: &Database, url: &str) {
    let redis =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let reachable = redis::Client::open(redis.as_str())
        .ok()
        .map(|client| async move { client.get_multiplexed_async_connection().await.is_ok() });
    let reachable = match reachable {
        Some(check) => tokio::time::timeout(std::time::Duration::from_secs(2), check)
            .await
            .unwrap_or(false),
        None => false,
    };
    if !reachable {
        assert!(
            std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
            "Redis at {redis} is required"
        );
        eprintln!("skipping: Redis at {redis} cannot be used");
        return;
    }
    let prefix = format!("test-catalog-{}", uuid::Uuid::new_v4().simple());
    let extra = [
        ("REDIS_URL", redis.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let a = Shop::start_with(database, url, &extra).await;
    let b = Shop::start_with(database, url, &extra).await;
    let channel = format!("{prefix}:invalidate");
    mainstay_test_support::redis::wait_for_subscribers(&redis, &channel, 2).await;

    let first = a.get("/products/books-003").await.body;
    // B finds it in Redis: its loader never runs.
    assert_eq!(b.get("/products/books-003").await.body, first);
    let stats = b.catalog.product_cache().stats();
    assert_eq!((stats.l2_hits, stats.loads), (1, 0));

    let mut changed = first.clone();
    for field in ["version", "created_at", "updated_at"] {
        changed.as_object_mut().unwrap().remove(field);
    }
    changed["price_minor"] = json!(1);
    let reply = a
        .call(
            Method::PUT,
            "/products/books-003",
            Some(&a.admin),
            Some(changed),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // B's first-tier copy is dropped by the broadcast; its next read sees the new price.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = b.get("/products/books-003").await.body["price_minor"].clone();
        if seen == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "replica B kept serving the old price");
}

async fn listing_pages_filters_and_sorts(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    let page = shop.get("/products").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["total"], 120);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 20);
    // Shared caches (the gateway's) may keep a page as long as the catalog's own page cache.
    assert_eq!(page.headers["cache-control"], "public, max-age=5");

    let kitchen = shop.get("/products?category=kitchen&per_page=100").await;
    assert_eq!(kitchen.body["total"], 20);
    assert!(
        kitchen.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["category_id"] == "kitchen")
    );
    // Stock is the inventory service's: no product carries it.
    assert!(
        kitchen.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.get("stock").is_none())
    );

    let cheap_first = shop
        .get("/products?sort=price_asc&min_price=1000&max_price=5000&per_page=100")
        .await;
    let prices: Vec<i64> = cheap_first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price_minor"].as_i64().unwrap())
        .collect();
    assert!(!prices.is_empty());
    assert!(prices.windows(2).all(|w| w[0] <= w[1]));
    assert!(prices.iter().all(|p| (1000..=5000).contains(p)));
    assert_eq!(cheap_first.body["total"], prices.len());

    let dear_first = shop.get("/products?sort=price_desc&per_page=5").await;
    let prices: Vec<i64> = dear_first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["price_minor"].as_i64().unwrap())
        .collect();
    assert!(prices.windows(2).all(|w| w[0] >= w[1]));

    let beyond = shop.get("/products?page=7").await;
    assert_eq!(beyond.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(beyond.body["total"], 120);

    let categories = shop.get("/categories").await;
    assert_eq!(categories.body.as_array().unwrap().len(), 6);
}

async fn invalid_listing_parameters_are_400_problems(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    for (query, field) in [
        ("page=0", Some("page")),
        ("per_page=1000", Some("per_page")),
        ("min_price=-1", Some("min_price")),
        ("category=DROP%20TABLE%20products", Some("category")),
        ("sort=random", None),
        ("page=abc", None),
        ("colour=red", None),
    ] {
        let reply = shop.get(&format!("/products?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{query}"
        );
        if let Some(field) = field {
            assert_eq!(reply.body["errors"][0]["field"], field, "{query}");
        } else {
            assert!(
                reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{query}"
            );
        }
    }
    // A minimum above the maximum is a question with no answer, not a mistake.
    let empty = shop.get("/products?min_price=500&max_price=100").await;
    assert_eq!(
        (empty.status, empty.body["total"].clone()),
        (StatusCode::OK, json!(0))
    );
    for query in ["", "q=", "q=%20%20", "q=tea%00", "q=kettle&limit=0"] {
        assert_eq!(
            shop.get(&format!("/products/search?{query}")).await.status,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
    }
    // The table is still there.
    assert_eq!(shop.get("/products").await.body["total"], 120);
}

async fn a_product_is_served_through_the_cache_with_etags(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    let first = shop.get("/products/kitchen-000").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["name"], "Copper Kettle");
    let tag = first.headers[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(tag, "\"kitchen-000-1\"");
    shop.get("/products/kitchen-000").await;
    let stats = shop.catalog.product_cache().stats();
    assert_eq!((stats.loads, stats.hits), (1, 1));

    let not_modified = shop
        .call(
            Method::GET,
            "/products/kitchen-000",
            None,
            None,
            Some(("if-none-match", &tag)),
        )
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);

    let missing = shop.get("/products/no-such-thing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    shop.get("/products/no-such-thing").await;
    assert_eq!(
        shop.catalog.product_cache().stats().loads,
        2,
        "the 404 is remembered"
    );
}

async fn search_finds_by_words_and_ignores_query_syntax(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    let found = shop.get("/products/search?q=copper%20kettle").await;
    assert_eq!(found.status, StatusCode::OK);
    let ids: Vec<&str> = found.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kitchen-000"]);
    // Stemmed: "kettles" finds kettles.
    let plural = shop.get("/products/search?q=kettles").await;
    assert_eq!(plural.body["items"].as_array().unwrap().len(), 4);
    for hostile in [
        "name%3A*%20OR%20x",
        "%22unbalanced",
        "NEAR(a%20b)",
        "'%3B%20DROP%20TABLE%20products%3B--",
    ] {
        let reply = shop.get(&format!("/products/search?q={hostile}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{hostile}: {}", reply.body);
    }
    assert_eq!(shop.get("/products").await.body["total"], 120);
}

fn teapot() -> Value {
    json!({"id": "kitchen-teapot-x", "name": "Glass Teapot", "description": "See the leaves unfurl.",
           "category_id": "kitchen", "price_minor": 2999, "currency": "EUR"})
}

async fn writes_need_the_admin_role_and_validate_their_fields(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    assert_eq!(
        shop.call(Method::POST, "/products", None, Some(teapot()), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        shop.call(
            Method::POST,
            "/products",
            Some(&shop.customer),
            Some(teapot()),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    // Cached listings see writes at once on this replica.
    let kitchen = "/products?category=kitchen&per_page=100";
    assert_eq!(shop.get(kitchen).await.body["total"], 20);
    // A 404 remembered before the product exists does not hide it afterwards.
    assert_eq!(
        shop.get("/products/kitchen-teapot-x").await.status,
        StatusCode::NOT_FOUND
    );

    // Sent twice with one Idempotency-Key (a retry after a lost answer): created once, and
    // the retry gets the same 201 rather than a 409 for its own first attempt.
    let keyed = || {
        shop.call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(teapot()),
            Some(("idempotency-key", "new-teapot")),
        )
    };
    let created = keyed().await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let retried = keyed().await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert_eq!(retried.headers["idempotent-replayed"], "true");
    assert_eq!(retried.body, created.body);
    assert_eq!(
        created.headers[header::LOCATION],
        "/products/kitchen-teapot-x"
    );
    assert_eq!(
        shop.get("/products/kitchen-teapot-x").await.body["price_minor"],
        2999
    );
    assert_eq!(shop.get(kitchen).await.body["total"], 21);
    assert_eq!(
        shop.call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(teapot()),
            None
        )
        .await
        .status,
        StatusCode::CONFLICT
    );

    let mut unknown = teapot();
    unknown["id"] = json!("other-id");
    unknown["category_id"] = json!("spaceships");
    let reply = shop
        .call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(unknown),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["errors"][0]["field"], "category_id");

    let bad = json!({"id": "Bad Id", "name": "", "description": "", "category_id": "kitchen",
                     "price_minor": -5, "currency": "euro"});
    let reply = shop
        .call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(bad),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "price_minor", "currency", "id"]);
    // Stock is not the catalog's: a product that carries it is refused, not stored in part.
    let mut stocked = teapot();
    stocked["stock"] = json!(12);
    let reply = shop
        .call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(stocked),
            None,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    // A float price is the wrong shape, not a rounding.
    let mut float = teapot();
    float["price_minor"] = json!(29.99);
    assert_eq!(
        shop.call(
            Method::POST,
            "/products",
            Some(&shop.admin),
            Some(float),
            None
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    assert_eq!(
        shop.call(
            Method::DELETE,
            "/products/kitchen-teapot-x",
            Some(&shop.admin),
            None,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        shop.get("/products/kitchen-teapot-x").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        shop.call(
            Method::DELETE,
            "/products/kitchen-teapot-x",
            Some(&shop.admin),
            None,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

/// The events in the outbox, decoded.
async fn outbox(database: &Database) -> Vec<(String, String, ProductPriceChanged)> {
    Outbox::pending(database, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|pending| {
            let envelope: Envelope = serde_json::from_slice(&pending.payload).unwrap();
            let body = serde_json::from_str(envelope.body.get()).unwrap();
            (pending.subject, envelope.kind, body)
        })
        .collect()
}

async fn a_price_change_invalidates_the_cache_and_writes_its_event_with_it(
    database: &Database,
    url: &str,
) {
    let shop = Shop::start(database, url).await;
    let before = shop.get("/products/garden-001").await.body;
    let mut changed = before.clone();
    for field in ["version", "created_at", "updated_at"] {
        changed.as_object_mut().unwrap().remove(field);
    }
    changed["price_minor"] = json!(before["price_minor"].as_i64().unwrap() + 100);
    let reply = shop
        .call(
            Method::PUT,
            "/products/garden-001",
            Some(&shop.admin),
            Some(changed.clone()),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);

    let after = shop.get("/products/garden-001").await;
    assert_eq!(after.body["price_minor"], changed["price_minor"]);
    assert_eq!(after.headers[header::ETAG], "\"garden-001-2\"");

    // The event was written with the change, for the relay to publish.
    let events = outbox(database).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (subject, kind, event) = &events[0];
    assert_eq!(
        (subject.as_str(), kind.as_str()),
        (EVENTS, "ProductPriceChanged")
    );
    assert_eq!(event.product_id, "garden-001");
    assert_eq!(json!(event.old_price_minor), before["price_minor"]);
    assert_eq!(json!(event.new_price_minor), changed["price_minor"]);
    assert_eq!(event.version, 2);

    // A change that keeps the price publishes nothing.
    changed["name"] = json!("Renamed Watering Can");
    shop.call(
        Method::PUT,
        "/products/garden-001",
        Some(&shop.admin),
        Some(changed),
        None,
    )
    .await;
    assert_eq!(outbox(database).await.len(), 1, "no second event");
    // The body names another product than the path: a conflict between the two ids.
    assert_eq!(
        shop.call(
            Method::PUT,
            "/products/nope",
            Some(&shop.admin),
            Some(teapot()),
            None
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
}

async fn views_are_counted_and_announced_in_one_batch(database: &Database, url: &str) {
    let shop = Shop::start(database, url).await;
    let view = |id: &'static str, token: Option<String>| {
        let shop = &shop;
        async move {
            shop.call(
                Method::POST,
                &format!("/product-views/{id}"),
                token.as_deref(),
                None,
                None,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(view("garden-001", None).await.status, StatusCode::ACCEPTED);
    }
    let customer = Some(shop.customer.clone());
    for _ in 0..5 {
        // One signed-in customer reloading the page: counted once.
        assert_eq!(
            view("garden-002", customer.clone()).await.status,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        view("garden-999", None).await.status,
        StatusCode::NOT_FOUND,
        "no such product: not counted"
    );
    let forged = view("garden-001", Some("not-a-token".into())).await;
    assert_eq!(
        forged.status,
        StatusCode::UNAUTHORIZED,
        "a bad token is refused"
    );
    assert_eq!(outbox(database).await.len(), 0, "nothing written per view");

    assert!(shop.catalog.views().flush(database).await.unwrap());
    let pending = Outbox::pending(database, 100).await.unwrap();
    assert_eq!(pending.len(), 1, "one batch");
    assert_eq!(pending[0].subject, shop_messaging::contracts::CATALOG_VIEWS);
    let envelope: Envelope = serde_json::from_slice(&pending[0].payload).unwrap();
    let batch: shop_messaging::contracts::ProductsViewed =
        serde_json::from_str(envelope.body.get()).unwrap();
    let counts: Vec<(&str, u32)> = batch
        .views
        .iter()
        .map(|v| (v.product_id.as_str(), v.count))
        .collect();
    assert_eq!(counts, [("garden-001", 3), ("garden-002", 1)]);
    assert_eq!(batch.viewers.len(), 1);
    assert_eq!(batch.viewers[0].user_id, "customer-1");
    assert_eq!(batch.viewers[0].product_id, "garden-002");
    assert!(
        !shop.catalog.views().flush(database).await.unwrap(),
        "nothing new: no batch"
    );
}
