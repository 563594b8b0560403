//! The checkout end to end, through the gateway only, with every service in one process: on
//! the embedded default (SQLite files and the local bus) and in production mode (PostgreSQL and
//! NATS JetStream on this machine). After the scenarios, the saga's invariants hold.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::{Options, System, invariants};

mod console;

/// The knobs of these runs: short deadlines, and no rate limit in the way.
fn knobs(options: Options) -> Options {
    options
        .var("SAGA_DEADLINE_MS", "15000")
        .var("SAGA_SCAN_MS", "200")
        .var("STEP_RESEND_MS", "500")
        .var("PAYMENT_TIMEOUT_MS", "300")
        .var("RATE_LIMIT_PER_IP", "100000/1")
        .var("RATE_LIMIT_PER_PRINCIPAL", "100000/1")
        .var("LOGIN_PER_IP", "100000/1")
        .var("LOGIN_PER_ACCOUNT", "100000/1")
        .var("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .var("NOTIFICATIONS_MAX_ATTEMPTS", "3")
        .var("NOTIFICATIONS_RETRY_MS", "20")
        .var("NOTIFICATIONS_RETRY_MAX_MS", "100")
        .var("NOTIFICATIONS_FAILURE_KNOBS", "true")
}

const ADMIN_PASSWORD: &str = "e2e-admin-password";
const AMQP: &str = "amqp://127.0.0.1:5672/%2f";

/// A customer of the system, signed in through the gateway.
struct Customer {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Customer {
    async fn sign_in(system: &System) -> Self {
        Self::sign_in_as(system, "alice@example.com", "alice-in-wonderland").await
    }

    async fn sign_in_as(system: &System, email: &str, password: &str) -> Self {
        let http = reqwest::Client::new();
        let base = system.url();
        let login: Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"]
            .as_str()
            .expect("signed in")
            .to_owned();
        Self { http, base, token }
    }

    async fn checkout(&self, key: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/checkout", self.base))
            .bearer_auth(&self.token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (status, location, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// The cart's lines as a checkout's.
    async fn cart_lines(&self) -> Value {
        let (status, cart) = self.get("/api/v1/cart").await;
        assert_eq!(status, StatusCode::OK, "{cart}");
        cart["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| json!({"product_id": line["product_id"], "quantity": line["quantity"]}))
            .collect()
    }

    async fn available(&self, sku: &str) -> i64 {
        self.get(&format!("/api/v1/stock/{sku}")).await.1["available"]
            .as_i64()
            .unwrap()
    }

    /// Places an order and follows it to a settled status; the order.
    async fn order(&self, body: &Value) -> Value {
        let key = uuid::Uuid::new_v4().to_string();
        let (status, location, placed) = self.checkout(&key, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
        let location = location.expect("a Location");
        assert_eq!(
            location,
            format!("/api/v1/orders/{}", placed["order_id"].as_str().unwrap())
        );
        self.settled(&location).await
    }

    /// Follows an order until it settles (within 20 s).
    async fn settled(&self, location: &str) -> Value {
        self.settled_within(location, Duration::from_secs(20)).await
    }

    /// Follows an order until it settles, within `most`.
    async fn settled_within(&self, location: &str, most: Duration) -> Value {
        let settled = [
            "CONFIRMED",
            "REJECTED",
            "CANCELLED",
            "NEEDS_ATTENTION",
            "SHIPPED",
        ];
        let started = tokio::time::Instant::now();
        while started.elapsed() < most {
            let (status, order) = self.get(location).await;
            assert_eq!(status, StatusCode::OK, "{order}");
            if settled.contains(&order["status"].as_str().unwrap()) {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{location} never settled: {:?}", self.get(location).await.1);
    }
}

fn body(sku: &str, quantity: u32, card: &str, postcode: &str) -> Value {
    json!({
        "lines": [{"product_id": sku, "quantity": quantity}],
        "shipping_address": {"name": "Alice", "line1": "1 Rabbit Hole", "city": "Oxford",
            "postcode": postcode, "country": "GB"},
        "card": card,
    })
}

const APPROVES: &str = "4242424242424242";
const DECLINES: &str = "4000000000000002";
const HANGS: &str = "4000000000000119";

/// The caller's notifications of `order_id`, once `settled` holds of them (within 20 s).
async fn notifications_of(
    customer: &Customer,
    order_id: &str,
    settled: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..200 {
        let (status, page) = customer.get("/api/v1/notifications?limit=100").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let of_order: Vec<Value> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["order_id"] == order_id)
            .cloned()
            .collect();
        if settled(&of_order) {
            return of_order;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{order_id}: {:?}",
        customer.get("/api/v1/notifications").await.1
    );
}

fn status_of<'a>(notifications: &'a [Value], channel: &str) -> Option<&'a str> {
    notifications
        .iter()
        .find(|n| n["channel"] == channel && n["kind"] == "order_confirmed")
        .and_then(|n| n["status"].as_str())
}

/// Lines of the sink's file of `channel` that carry the notification `id`.
fn sent_lines(sent: &std::path::Path, channel: &str, id: &str) -> usize {
    std::fs::read_to_string(sent.join(format!("{channel}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).unwrap()["id"] == id)
        .count()
}

/// Every path of the checkout, through the gateway, then the invariants. `sent` is where the
/// notifications' sink writes.
async fn every_path(mut system: System, sent: &std::path::Path) {
    let alice = Customer::sign_in(&system).await;

    // Confirmed: paid, the stock taken, the history of every step.
    let before = alice.available("garden-001").await;
    let order = alice
        .order(&body("garden-001", 2, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["captured_minor"], order["total"]["amount_minor"]);
    assert_eq!(alice.available("garden-001").await, before - 2);
    let steps: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["step"].as_str())
        .collect();
    assert_eq!(steps, ["reserve", "authorize", "ship", "capture", "commit"]);

    // The same key and body again: the same order, not a second one.
    let key = uuid::Uuid::new_v4().to_string();
    let first = alice
        .checkout(&key, &body("books-001", 1, APPROVES, "OX1 1AA"))
        .await;
    let again = alice
        .checkout(&key, &body("books-001", 1, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(first.2["order_id"], again.2["order_id"]);
    let other = alice
        .checkout(&key, &body("books-001", 2, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
    alice.settled(&first.1.unwrap()).await;

    // Every rejection, with the stock given back.
    let before = alice.available("toys-001").await;
    for (body, reason) in [
        (body("kitchen-000", 1, APPROVES, "OX1 1AA"), "OUT_OF_STOCK"),
        (body("toys-001", 1, DECLINES, "OX1 1AA"), "PAYMENT_DECLINED"),
        (body("toys-001", 1, APPROVES, "00000"), "UNDELIVERABLE"),
        (body("toys-001", 1, HANGS, "OX1 1AA"), "PAYMENT_TIMEOUT"),
    ] {
        let order = alice.order(&body).await;
        assert_eq!(
            (order["status"].as_str(), order["reason"].as_str()),
            (Some("REJECTED"), Some(reason)),
            "{order}"
        );
    }
    assert_eq!(alice.available("toys-001").await, before);

    // The cart: priced by the catalog, checked out by its lines, kept when the order is
    // rejected, and what was bought taken out once it is confirmed.
    let (status, cart) = alice
        .send(
            reqwest::Method::PUT,
            "/api/v1/cart/items/toys-002",
            Some(json!({"quantity": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cart}");
    assert!(
        cart["lines"][0]["unit_price_minor"].as_i64().unwrap() > 0,
        "{cart}"
    );
    alice
        .send(
            reqwest::Method::PUT,
            "/api/v1/cart/items/garden-004",
            Some(json!({"quantity": 1})),
        )
        .await;
    let (_, home) = alice.get("/api/v1/home").await;
    assert_eq!(
        home["cart"]["lines"].as_array().map(Vec::len),
        Some(2),
        "{home}"
    );
    assert_eq!(home["degraded"], json!([]), "every part answered: {home}");
    assert!(
        !home["recommendations"].as_array().unwrap().is_empty(),
        "{home}"
    );
    let lines = alice.cart_lines().await;
    let mut from_cart = body("toys-002", 1, DECLINES, "OX1 1AA");
    from_cart["lines"] = lines.clone();
    let order = alice.order(&from_cart).await;
    assert_eq!(order["reason"], "PAYMENT_DECLINED", "{order}");
    assert_eq!(alice.cart_lines().await, lines, "kept on rejection");
    from_cart["card"] = json!(APPROVES);
    let order = alice.order(&from_cart).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let mut emptied = false;
    for _ in 0..100 {
        if alice.cart_lines().await == json!([]) {
            emptied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        emptied,
        "the confirmed order's lines left the cart: {}",
        alice.cart_lines().await
    );

    // Cancelled once confirmed: refunded in full, the stock back on hand.
    let before = alice.available("outdoor-001").await;
    let order = alice
        .order(&body("outdoor-001", 1, APPROVES, "OX1 1AA"))
        .await;
    let id = order["order_id"].as_str().unwrap();
    let cancel = alice
        .http
        .post(format!("{}/api/v1/orders/{id}/cancel", alice.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    let order = alice.settled(&format!("/api/v1/orders/{id}")).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["refunded_minor"], order["total"]["amount_minor"]);
    assert_eq!(alice.available("outdoor-001").await, before);

    // The capture fails transiently: past the pivot it is asked again until it succeeds, and
    // the money is taken once.
    system.cards.fail_captures(3);
    let order = alice
        .order(&body("books-002", 1, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(system.cards.failing_captures(), 0, "every failure was met");
    assert_eq!(order["captured_minor"], order["total"]["amount_minor"]);
    let id = order["order_id"].as_str().unwrap();
    let payment = system.payments.store().get(id).await.unwrap().unwrap();
    assert_eq!(
        (payment.status.as_str(), payment.captured_minor),
        ("CAPTURED", order["total"]["amount_minor"].as_i64().unwrap())
    );

    // The orchestrator restarted while checkouts are under way: each resumes from what it
    // stored, and the replies that came meanwhile wait on the bus.
    let mut placed = Vec::new();
    for _ in 0..5 {
        let key = uuid::Uuid::new_v4().to_string();
        let (status, location, order) = alice
            .checkout(&key, &body("books-003", 1, APPROVES, "OX1 1AA"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{order}");
        placed.push(location.unwrap());
    }
    system
        .restart("orders", Duration::from_secs(10))
        .await
        .unwrap();
    for location in &placed {
        let order = alice.settled(location).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }

    // Notifications: a confirmation told on each channel alice wants. Her SMS fails (the
    // channel's failure knob): tried, dead-lettered, then replayed by an admin, and sent once.
    let admin = Customer::sign_in_as(&system, "admin@example.com", ADMIN_PASSWORD).await;
    let knob = async |failing: bool| {
        let path = "/api/v1/admin/notifications/channels/sms";
        let (status, knob) = admin
            .send(
                reqwest::Method::PUT,
                path,
                Some(json!({"failing": failing})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{knob}");
    };
    knob(true).await;
    let everything = json!({"email": true, "sms": true, "push": true});
    let (status, _) = alice
        .send(
            reqwest::Method::PUT,
            "/api/v1/notifications/preferences",
            Some(everything),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let order = alice
        .order(&body("garden-001", 1, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    let told = notifications_of(&alice, &order_id, |n| {
        status_of(n, "email") == Some("SENT")
            && status_of(n, "push") == Some("SENT")
            && status_of(n, "sms") == Some("DEAD")
    })
    .await;
    let email = told.iter().find(|n| n["channel"] == "email").unwrap();
    assert_eq!(email["subject"], format!("Order {order_id} is confirmed"));
    let sms_id = told.iter().find(|n| n["channel"] == "sms").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, dead) = admin
        .get("/api/v1/admin/notifications/dead-letters?channel=sms")
        .await;
    assert!(
        dead["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == sms_id),
        "{dead}"
    );
    assert_eq!(sent_lines(sent, "sms", &sms_id), 0);
    knob(false).await;
    let (status, replayed) = admin
        .send(
            reqwest::Method::POST,
            "/api/v1/admin/notifications/dead-letters/replay?channel=sms",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert!(replayed["replayed"].as_u64().unwrap() >= 1, "{replayed}");
    notifications_of(&alice, &order_id, |n| status_of(n, "sms") == Some("SENT")).await;
    assert_eq!(sent_lines(sent, "sms", &sms_id), 1, "sent once");
    let (_, dead) = admin.get("/api/v1/admin/notifications/dead-letters").await;
    assert_eq!(dead["counts"]["sms"], 0, "{dead}");
    let defaults = json!({"email": true, "sms": false, "push": true});
    alice
        .send(
            reqwest::Method::PUT,
            "/api/v1/notifications/preferences",
            Some(defaults),
        )
        .await;

    // Analytics counted all of it: the orders and their outcomes, the dead letter and its
    // replay, the checkout latency.
    let mut figures = Value::Null;
    for _ in 0..100 {
        let (status, summary) = admin
            .get("/api/v1/admin/analytics/summary?window=15m")
            .await;
        assert_eq!(status, StatusCode::OK, "{summary}");
        figures = summary;
        if figures["outcomes"]["PAYMENT_DECLINED"].as_i64() >= Some(1)
            && figures["notifications_dead"]["sms"].as_i64() >= Some(1)
            && figures["orders"]["confirmed"].as_i64() >= Some(9)
            && figures["dead_letters"]["sms"] == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        figures["outcomes"]["PAYMENT_DECLINED"].as_i64() >= Some(1)
            && figures["notifications_dead"]["sms"].as_i64() >= Some(1)
            && figures["orders"]["confirmed"].as_i64() >= Some(9)
            && figures["dead_letters"]["sms"] == 0,
        "every order so far, each once; the SMS dead and then replayed: {figures}"
    );
    assert!(
        figures["checkout_latency_ms"]["count"].as_u64() >= Some(1),
        "{figures}"
    );
    assert!(
        figures["revenue_minor"]["EUR"].as_i64() > Some(0),
        "{figures}"
    );
    assert!(
        figures["conversion"]["carts_started"].as_i64() >= Some(1),
        "{figures}"
    );
    let (status, _) = alice.get("/api/v1/admin/analytics/summary").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admins only");

    // Many checkouts racing for scarce stock: exactly what there is gets sold.
    let sku = "electronics-007";
    let stock = alice.available(sku).await;
    assert_eq!(stock % 10, 0, "the demo stock");
    let racers: Vec<_> = (0..stock / 10 + 2)
        .map(|_| {
            let (http, base, token) = (alice.http.clone(), alice.base.clone(), alice.token.clone());
            tokio::spawn(async move {
                let alice = Customer { http, base, token };
                alice.order(&body(sku, 10, APPROVES, "OX1 1AA")).await
            })
        })
        .collect();
    let mut confirmed = 0;
    for racer in racers {
        let order = racer.await.unwrap();
        match order["status"].as_str() {
            Some("CONFIRMED") => confirmed += 1,
            _ => assert_eq!(order["reason"], "OUT_OF_STOCK", "{order}"),
        }
    }
    assert_eq!(confirmed, stock / 10);
    assert_eq!(alice.available(sku).await, 0);

    assert_eq!(
        sent_lines(sent, "sms", &sms_id),
        1,
        "still sent once, long after its replay"
    );

    // The demo, as `shop demo` runs it, passes against this system.
    let mut transcript = Vec::new();
    if let Err(error) =
        shop::demo::run(&system.url(), &mut transcript, false, Some(&mut system)).await
    {
        panic!("{error}\n{}", String::from_utf8_lossy(&transcript));
    }
    let transcript = String::from_utf8(transcript).unwrap();
    assert!(transcript.contains("CONFIRMED after"), "{transcript}");
    assert!(transcript.contains("e-mail sent: \"Order "), "{transcript}");
    assert!(transcript.contains("the breaker is open"), "{transcript}");
    assert!(transcript.contains("closed again"), "{transcript}");
    assert!(!transcript.contains("\x1b["), "no colour off a terminal");

    let now = shop_common::unix_millis();
    let violations = invariants::violations(&system, now).await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    // The checker sees a unit that appears from nowhere.
    let stock = system.inventory.store().database().clone();
    shop_common::on_db!(&stock, pool => sqlx::query(
        "UPDATE stock SET on_hand = on_hand + 1 WHERE sku = 'garden-002'"
    )
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))
    .unwrap();
    let violations = invariants::violations(&system, now).await.unwrap();
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(violations[0].contains("garden-002"), "{violations:#?}");
    system.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_default() {
    let dir = std::env::temp_dir().join(format!("shop-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let system = System::start(knobs(Options::embedded(&dir).unwrap()))
        .await
        .unwrap();
    every_path(system, &dir.join("sent")).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A production-mode system's own places on this machine's servers: a PostgreSQL database
/// per service, a NATS and RabbitMQ namespace, a keys directory; all removed by `remove`.
struct Production {
    databases: HashMap<&'static str, shop_common::testing::PgTestDb>,
    urls: HashMap<String, String>,
    namespace: String,
    keys: std::path::PathBuf,
}

impl Production {
    /// `None` when PostgreSQL is not there (and not required).
    async fn create(prefix: &str) -> Option<Self> {
        let mut databases = HashMap::new();
        for name in shop::SERVICES {
            let db = shop_common::testing::PgTestDb::create_or_skip(name).await?;
            databases.insert(name, db);
        }
        let urls = databases
            .iter()
            .map(|(name, db)| ((*name).to_owned(), db.url.clone()))
            .collect();
        let namespace = format!(
            "{prefix}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let keys = std::env::temp_dir().join(format!("shop-e2e-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&keys).unwrap();
        Some(Self {
            databases,
            urls,
            namespace,
            keys,
        })
    }

    /// The system's options, on NATS at `nats`, with RabbitMQ.
    fn options(&self, nats: &str) -> Options {
        Options::production(self.urls.clone(), nats, REDIS, &self.namespace, &self.keys)
            .unwrap()
            .var("AMQP_URL", AMQP)
    }

    /// Removes the run's streams (from the NATS at `nats`), queues, databases and keys.
    async fn remove(self, nats: &str) {
        shop_messaging::jetstream::JetStreamTransport::connect(nats, &self.namespace)
            .await
            .unwrap()
            .delete()
            .await
            .unwrap();
        shop_notifications::queue::Rabbit::connect(AMQP, &format!("{}.", self.namespace))
            .await
            .unwrap()
            .delete()
            .await
            .unwrap();
        for (_, db) in self.databases {
            db.drop_database().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.keys);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_mode() {
    let Some(production) = Production::create("e2e").await else {
        return;
    };
    let system = System::start(knobs(production.options(NATS)))
        .await
        .unwrap();
    every_path(system, &production.keys.join("sent")).await;
    production.remove(NATS).await;
}

/// The whole system stopped (as Ctrl-C stops it) while checkouts are under way, then started
/// again on its data (`options` makes the same system twice): every order placed before the
/// stop completes, none twice.
async fn stopped_mid_checkout(options: impl Fn() -> Options) {
    let start = |cards| {
        let mut options = knobs(options()).var("SAGA_DEADLINE_MS", "60000");
        options.cards = cards;
        System::start(options)
    };
    let system = start(None).await.unwrap();
    let alice = Customer::sign_in(&system).await;
    let mut placed = Vec::new();
    for n in 0..4 {
        let key = uuid::Uuid::new_v4().to_string();
        let sku = format!("kitchen-00{}", n + 1);
        let (status, location, order) = alice
            .checkout(&key, &body(&sku, 1, APPROVES, "OX1 1AA"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{order}");
        placed.push(location.unwrap());
    }
    // Stopped at once: the sagas are somewhere between their first and last steps. The card
    // processor is not the shop's: it keeps its authorisations meanwhile.
    let cards = system.cards.clone();
    system.stop(Duration::from_secs(10)).await;
    let system = start(Some(cards)).await.unwrap();
    let alice = Customer::sign_in(&system).await;
    // Within the consumers' ack_wait (30 s): JetStream may have handed a message to a pull
    // request of the stopped process, and hands it again only once that wait runs out.
    for location in &placed {
        let order = alice
            .settled_within(location, Duration::from_secs(45))
            .await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
        assert_eq!(order["captured_minor"], order["total"]["amount_minor"]);
    }
    let (_, page) = alice.get("/api/v1/orders?limit=100").await;
    let mine: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|order| {
            placed
                .iter()
                .any(|at| at.ends_with(order["order_id"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(mine.len(), placed.len(), "none twice: {page}");
    let now = shop_common::unix_millis();
    let violations = invariants::violations(&system, now).await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    system.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_system_stopped_mid_checkout_completes_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("shop-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    stopped_mid_checkout(|| Options::embedded(&dir).unwrap()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_mode_stopped_mid_checkout_completes_after_a_restart() {
    let Some(production) = Production::create("restart").await else {
        return;
    };
    stopped_mid_checkout(|| production.options(NATS)).await;
    production.remove(NATS).await;
}

const NATS: &str = "nats://127.0.0.1:4222";
const REDIS: &str = "redis://127.0.0.1:6379";

/// The broker stopped while customers check out, then restarted: every checkout is answered
/// (the order and its first command wait in the outbox), and every order is confirmed once
/// the broker is back, with the invariants holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_during_checkouts() {
    let Some(mut nats) = shop_messaging::testing::PrivateNats::start().await else {
        return;
    };
    let Some(production) = Production::create("down").await else {
        return;
    };
    let options = production.options(&nats.url());
    // A deadline longer than the outage: the orders wait for the broker, not give up.
    let system = System::start(knobs(options).var("SAGA_DEADLINE_MS", "60000"))
        .await
        .unwrap();
    let alice = Customer::sign_in(&system).await;
    let warm = alice
        .order(&body("garden-003", 1, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(warm["status"], "CONFIRMED", "{warm}");

    nats.stop().await;
    let mut placed = Vec::new();
    for n in 0..5 {
        let key = uuid::Uuid::new_v4().to_string();
        let sku = format!("books-00{n}");
        let (status, location, order) = alice
            .checkout(&key, &body(&sku, 1, APPROVES, "OX1 1AA"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{order}");
        placed.push(location.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for location in &placed {
        let (_, order) = alice.get(location).await;
        assert_eq!(
            order["status"], "PENDING",
            "nothing moves without the broker: {order}"
        );
    }

    nats.restart().await;
    for location in &placed {
        let order = alice.settled(location).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    let violations = invariants::violations(&system, shop_common::unix_millis())
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    system.stop(Duration::from_secs(10)).await;
    production.remove(&nats.url()).await;
}
