//! The orchestrator against in-memory participants, on both stores: every path of
//! ARCHITECTURE.md §4 ends where the design says, with the invariants holding; replies
//! delivered twice or after a crash change nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use http::{Method, StatusCode};
use mainstay_resilience::deadline::Deadline;
use serde_json::{Value, json};
use shop_common::store::Database;
use shop_common::testing::{Reply, call, users_tokens};
use shop_messaging::HandleError;
use shop_messaging::contracts::*;
use shop_messaging::{Envelope, Handler, Inbound, Message, Outbox, Outcome, SagaRef};
use shop_orders::catalog::{PriceError, Priced, Prices};
use shop_orders::flow::{Answer, Event, Status, Step};
use shop_orders::store::OrderRow;
use shop_orders::{Applied, Orders, SagaTiming};

/// The catalog of the tests: two products, and one that fails; it remembers the deadline of
/// each call.
#[derive(Default)]
struct Catalog {
    deadlines: std::sync::Mutex<Vec<Option<Deadline>>>,
}

#[async_trait]
impl Prices for Catalog {
    async fn price(
        &self,
        product_id: &str,
        deadline: Option<Deadline>,
    ) -> Result<Option<Priced>, PriceError> {
        self.deadlines.lock().unwrap().push(deadline);
        let priced = |price_minor| Priced {
            name: product_id.to_owned(),
            price_minor,
            currency: "EUR".into(),
        };
        match product_id {
            "mug" => Ok(Some(priced(1_250))),
            "kettle" => Ok(Some(priced(4_999))),
            "yen-thing" => Ok(Some(Priced {
                currency: "JPY".into(),
                ..priced(100)
            })),
            "flaky" => Err(PriceError("down".into())),
            _ => Ok(None),
        }
    }
}

/// Participants in memory, each answering a step once (as `saga::Steps` does), with knobs.
#[derive(Default)]
struct World {
    stock: HashMap<String, i64>,
    holds: HashMap<String, Vec<(String, i64)>>,
    committed: HashSet<String>,
    /// Orders whose committed stock went back on hand.
    returned: HashSet<String>,
    released: HashSet<String>,
    authorized: HashMap<String, i64>,
    captured: HashMap<String, i64>,
    voided: HashSet<String>,
    refunded: HashMap<String, i64>,
    shipments: HashMap<String, &'static str>,
    decline: bool,
    undeliverable: bool,
    capture_fails: bool,
    /// Participants that are down: their commands wait, in order, until they are up.
    down: HashSet<&'static str>,
    waiting: VecDeque<Envelope<Value>>,
    /// Each step's reply, by participant, order and step: a step is carried out once.
    done: HashMap<(String, String), (String, Value)>,
}

fn participant_of(subject: &str) -> &'static str {
    match subject {
        INVENTORY_COMMANDS => "inventory",
        PAYMENTS_COMMANDS => "payments",
        SHIPPING_COMMANDS => "shipping",
        other => panic!("not a command subject: {other}"),
    }
}

fn reply<M: Message>(message: M) -> (String, Value) {
    (M::KIND.to_owned(), serde_json::to_value(message).unwrap())
}

impl World {
    fn stocked() -> Self {
        Self {
            stock: HashMap::from([("mug".into(), 10), ("kettle".into(), 1)]),
            ..Self::default()
        }
    }

    /// Carries out a command; its reply.
    fn carry_out(&mut self, command: &Envelope<Value>) -> (String, Value) {
        let saga = command.saga.clone().expect("a saga step");
        let key = (saga.saga_id.clone(), saga.step.clone());
        if let Some(done) = self.done.get(&key) {
            return done.clone();
        }
        let order_id = saga.saga_id.clone();
        let body = command.body.clone();
        let answer = match command.kind.as_str() {
            "ReserveStock" => {
                let reserve: ReserveStock = serde_json::from_value(body).unwrap();
                let short: Vec<String> = reserve
                    .lines
                    .iter()
                    .filter(|line| self.stock[&line.sku] < i64::from(line.quantity))
                    .map(|line| line.sku.clone())
                    .collect();
                if self.released.contains(&order_id) {
                    reply(StockRejected {
                        order_id,
                        reason: StockRejection::Released,
                        short: vec![],
                    })
                } else if short.is_empty() {
                    let lines: Vec<(String, i64)> = reserve
                        .lines
                        .iter()
                        .map(|line| (line.sku.clone(), i64::from(line.quantity)))
                        .collect();
                    for (sku, quantity) in &lines {
                        *self.stock.get_mut(sku).unwrap() -= quantity;
                    }
                    self.holds.insert(order_id.clone(), lines);
                    reply(StockReserved { order_id })
                } else {
                    reply(StockRejected {
                        order_id,
                        reason: StockRejection::OutOfStock,
                        short,
                    })
                }
            }
            "ReleaseStock" => {
                self.released.insert(order_id.clone());
                let held = if self.committed.contains(&order_id) {
                    None
                } else {
                    self.holds.remove(&order_id)
                };
                for (sku, quantity) in held.iter().flatten() {
                    *self.stock.get_mut(sku).unwrap() += quantity;
                }
                reply(StockReleased {
                    order_id,
                    released: held.is_some(),
                })
            }
            "ReturnStock" => {
                assert!(
                    self.refunded.contains_key(&order_id),
                    "a return before the refund"
                );
                let returned =
                    self.committed.contains(&order_id) && self.returned.insert(order_id.clone());
                if returned {
                    for (sku, quantity) in &self.holds[&order_id] {
                        *self.stock.get_mut(sku).unwrap() += quantity;
                    }
                }
                reply(StockReturned { order_id, returned })
            }
            "CommitStock" => {
                assert!(self.holds.contains_key(&order_id), "a commit of no hold");
                self.committed.insert(order_id.clone());
                reply(StockCommitted { order_id })
            }
            "AuthorizePayment" => {
                let authorize: AuthorizePayment = serde_json::from_value(body).unwrap();
                if self.voided.contains(&order_id) {
                    reply(PaymentDeclined {
                        order_id,
                        reason: DeclineReason::Voided,
                    })
                } else if self.decline {
                    reply(PaymentDeclined {
                        order_id,
                        reason: DeclineReason::Declined,
                    })
                } else {
                    self.authorized
                        .insert(order_id.clone(), authorize.amount_minor);
                    reply(PaymentAuthorized {
                        order_id,
                        payment_id: "pay-1".into(),
                    })
                }
            }
            "CapturePayment" => match self.authorized.remove(&order_id) {
                Some(amount) if !self.capture_fails => {
                    self.captured.insert(order_id.clone(), amount);
                    reply(PaymentCaptured {
                        order_id,
                        payment_id: "pay-1".into(),
                        amount_minor: amount,
                    })
                }
                other => {
                    if let Some(amount) = other {
                        self.authorized.insert(order_id.clone(), amount);
                    }
                    reply(CaptureFailed {
                        order_id,
                        reason: "the authorisation expired".into(),
                    })
                }
            },
            "VoidPayment" => {
                self.voided.insert(order_id.clone());
                let voided = self.authorized.remove(&order_id).is_some();
                reply(PaymentVoided { order_id, voided })
            }
            "RefundPayment" => {
                let amount = self.captured.remove(&order_id).unwrap_or(0);
                self.refunded.insert(order_id.clone(), amount);
                reply(PaymentRefunded {
                    order_id,
                    amount_minor: amount,
                })
            }
            "CreateShipment" => {
                if self.shipments.get(&order_id) == Some(&"CANCELLED") {
                    reply(ShipmentRejected {
                        order_id,
                        reason: ShipmentRejection::Cancelled,
                    })
                } else if self.undeliverable {
                    reply(ShipmentRejected {
                        order_id,
                        reason: ShipmentRejection::Undeliverable,
                    })
                } else {
                    self.shipments.insert(order_id.clone(), "CREATED");
                    reply(ShipmentCreated {
                        order_id,
                        shipment_id: "shp-1".into(),
                        tracking_id: "TRK1".into(),
                        cost_minor: 0,
                    })
                }
            }
            "CancelShipment" => {
                let status = self.shipments.get(&order_id).copied();
                let cancelled = status == Some("CREATED");
                if status.is_none() || cancelled {
                    self.shipments.insert(order_id.clone(), "CANCELLED");
                }
                reply(ShipmentCancelled {
                    order_id,
                    cancelled,
                })
            }
            other => panic!("an unexpected command {other}"),
        };
        self.done.insert(key, answer.clone());
        answer
    }

    /// Nothing is held, authorised or booked for an order that did not go through; what an
    /// order that did took is exactly its total.
    fn check(&self, order: &OrderRow) {
        let id = &order.order_id;
        let status = Status::parse(&order.status).unwrap();
        assert!(status.settled(), "{id} is {status}");
        let held = self.holds.contains_key(id) && !self.committed.contains(id);
        match status {
            Status::Confirmed | Status::Shipped | Status::Delivered => {
                assert_eq!(self.captured.get(id), Some(&order.total_minor), "{id}");
                assert!(self.committed.contains(id), "{id}");
                assert_eq!(order.captured_minor, order.total_minor);
            }
            _ => {
                assert!(!held, "{id} still holds stock");
                assert!(!self.authorized.contains_key(id), "{id} still authorised");
                assert_eq!(self.captured.get(id), None, "{id} still captured");
                assert_ne!(
                    self.shipments.get(id),
                    Some(&"CREATED"),
                    "{id} still booked"
                );
                assert_eq!(
                    self.refunded.get(id).copied().unwrap_or(0),
                    order.captured_minor
                );
                // What was taken out of stock is back on hand.
                assert_eq!(
                    self.committed.contains(id),
                    self.returned.contains(id),
                    "{id}: the stock it took"
                );
            }
        }
    }
}

/// The orders service over in-memory participants.
struct Rig {
    orders: Orders,
    database: Database,
    app: Router,
    catalog: Arc<Catalog>,
    token: String,
    other_token: String,
    cursor: i64,
    /// Every command sent: kind and step.
    commands: Vec<(String, String)>,
    /// Every event of `orders.events`, by kind.
    events: Vec<String>,
    /// Deliver every reply twice.
    twice: bool,
    /// Roll back the first handling of every reply (a crash before its commit).
    crash_first: bool,
}

fn timing() -> SagaTiming {
    SagaTiming {
        deadline: std::time::Duration::from_secs(30),
        resend_after: std::time::Duration::from_secs(5),
        resend_max: std::time::Duration::from_secs(60),
        scan_every: std::time::Duration::from_secs(1),
    }
}

fn body(product: &str, quantity: u32) -> Value {
    json!({
        "lines": [{"product_id": product, "quantity": quantity}],
        "shipping_address": {
            "name": "Ada", "line1": "1 Main St", "city": "Paris", "postcode": "75001",
            "country": "FR"
        },
        "card": "4242424242424242"
    })
}

impl Rig {
    async fn new(database: &Database) -> Self {
        let (issuer, validator) = users_tokens();
        let catalog = Arc::new(Catalog::default());
        let card_key = shop_common::seal::SealKey::generate();
        let orders = Orders::start(database, catalog.clone(), validator, timing(), card_key)
            .await
            .unwrap();
        let app = shop_orders::router(orders.clone());
        let token = |user: &str| {
            issuer
                .issue(&mainstay_auth::AccessClaims::new(user))
                .unwrap()
                .token
        };
        // Where this rig's outbox starts (a database another rig used keeps its messages).
        let cursor = Outbox::pending(database, i64::MAX)
            .await
            .unwrap()
            .last()
            .map_or(0, |last| last.seq);
        Self {
            orders,
            catalog,
            database: database.clone(),
            app,
            token: token("user-1"),
            other_token: token("user-2"),
            cursor,
            commands: Vec::new(),
            events: Vec::new(),
            twice: false,
            crash_first: false,
        }
    }

    async fn checkout(&self, key: &str, body: Value) -> Reply {
        call(
            &self.app,
            Method::POST,
            "/checkout",
            Some(&self.token),
            Some(body),
            Some(("idempotency-key", key)),
        )
        .await
    }

    async fn place(&mut self, world: &mut World, body: Value) -> String {
        let reply = self.checkout(&uuid::Uuid::new_v4().to_string(), body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
        let id = reply.body["order_id"].as_str().unwrap().to_owned();
        assert_eq!(
            reply.headers["location"].to_str().unwrap(),
            format!("/orders/{id}")
        );
        self.pump(world).await;
        id
    }

    async fn order(&self, id: &str) -> OrderRow {
        self.orders.store().get(id).await.unwrap().unwrap()
    }

    async fn status(&self, id: &str) -> Status {
        Status::parse(&self.order(id).await.status).unwrap()
    }

    async fn deliver(&self, inbound: &Inbound) {
        let handler = self.orders.orchestrator();
        let mut tx = self.database.begin_read_committed().await.unwrap();
        assert_eq!(
            handler.handle(inbound, &mut tx).await.unwrap(),
            Outcome::Ack
        );
        tx.commit().await.unwrap();
    }

    async fn crash_while_handling(&self, inbound: &Inbound) {
        let handler = self.orders.orchestrator();
        let mut tx = self.database.begin_read_committed().await.unwrap();
        assert_eq!(
            handler.handle(inbound, &mut tx).await.unwrap(),
            Outcome::Ack
        );
        drop(tx);
    }

    /// Publishes what the outbox holds to the participants, and their replies to the
    /// orchestrator, until nothing more comes.
    async fn pump(&mut self, world: &mut World) {
        loop {
            // The participants that came back up take their waiting commands first, in order.
            let mut ready = Vec::new();
            let mut still = VecDeque::new();
            while let Some(command) = world.waiting.pop_front() {
                let participant = participant_of(&subject_of(&command));
                if world.down.contains(participant) {
                    still.push_back(command);
                } else {
                    ready.push(command);
                }
            }
            world.waiting = still;
            let pending = Outbox::pending(&self.database, i64::MAX).await.unwrap();
            let fresh: Vec<_> = pending
                .into_iter()
                .filter(|p| p.seq > self.cursor)
                .collect();
            if fresh.is_empty() && ready.is_empty() {
                return;
            }
            for message in fresh {
                self.cursor = message.seq;
                let mut envelope: Envelope<Value> =
                    serde_json::from_slice(&message.payload).unwrap();
                if message.subject == ORDERS_EVENTS {
                    self.events.push(envelope.kind.clone());
                    continue;
                }
                let step = envelope.saga.as_ref().unwrap().step.clone();
                self.commands.push((envelope.kind.clone(), step));
                // Where it was published, so that it can wait by its participant.
                envelope.body["__subject"] = Value::String(message.subject.clone());
                if world.down.contains(participant_of(&message.subject)) {
                    world.waiting.push_back(envelope);
                } else {
                    ready.push(envelope);
                }
            }
            for command in ready {
                let (kind, body) = world.carry_out(&command);
                let inbound = inbound(&kind, body, command.saga.clone().unwrap());
                if self.crash_first {
                    self.crash_while_handling(&inbound).await;
                }
                self.deliver(&inbound).await;
                if self.twice {
                    self.deliver(&inbound).await;
                }
            }
        }
    }

    /// The deadline scanner, `after_ms` from now.
    async fn scan(&mut self, world: &mut World, after_ms: i64) -> usize {
        let moved = self
            .orders
            .scan(shop_common::unix_millis() + after_ms)
            .await
            .unwrap();
        self.pump(world).await;
        moved
    }

    fn sent(&self) -> Vec<&str> {
        self.commands
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect()
    }
}

fn subject_of(command: &Envelope<Value>) -> String {
    command.body["__subject"].as_str().unwrap().to_owned()
}

/// A reply as the consumer hands it over: on `orders.replies`, for `saga`.
fn inbound(kind: &str, body: Value, saga: SagaRef) -> Inbound {
    let mut body = body;
    if let Some(map) = body.as_object_mut() {
        map.remove("__subject");
    }
    macro_rules! of {
        ($($t:ident),*) => {
            match kind {
                $(stringify!($t) => Inbound::of(&serde_json::from_value::<$t>(body).unwrap(), Some(saga)).unwrap(),)*
                other => panic!("{other}"),
            }
        };
    }
    let mut inbound = of!(
        StockReserved,
        StockRejected,
        StockReleased,
        StockCommitted,
        StockReturned,
        PaymentAuthorized,
        PaymentDeclined,
        PaymentCaptured,
        CaptureFailed,
        PaymentVoided,
        PaymentRefunded,
        ShipmentCreated,
        ShipmentRejected,
        ShipmentCancelled
    );
    inbound.subject = shop_messaging::saga::REPLIES.to_owned();
    inbound
}

const HAPPY: [&str; 5] = [
    "ReserveStock",
    "AuthorizePayment",
    "CreateShipment",
    "CapturePayment",
    "CommitStock",
];

async fn happy_path(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    let id = rig
        .place(
            &mut world,
            json!({
                "lines": [
                    {"product_id": "mug", "quantity": 2},
                    {"product_id": "kettle", "quantity": 1},
                    {"product_id": "mug", "quantity": 1}
                ],
                "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Paris",
                    "postcode": "75001", "country": "FR"},
                "card": "4242424242424242"
            }),
        )
        .await;
    let order = rig.order(&id).await;
    assert_eq!(order.status, "CONFIRMED");
    // Re-priced by the catalog: 3 mugs at 12.50 and a kettle at 49.99.
    assert_eq!(order.total_minor, 3 * 1_250 + 4_999);
    assert_eq!(order.captured_minor, order.total_minor);
    assert_eq!(order.card, "", "the card is forgotten once authorised");
    assert_eq!(order.card_last4, "4242");
    assert_eq!(order.due_at_ms, None);
    assert_eq!(rig.sent(), HAPPY);
    assert_eq!(rig.events, ["OrderPlaced", "OrderConfirmed"]);
    assert_eq!(world.stock["mug"], 7);
    world.check(&order);
    // Its view: lines merged by product, and a history of every step.
    let view = call(
        &rig.app,
        Method::GET,
        &format!("/orders/{id}"),
        Some(&rig.token),
        None,
        None,
    )
    .await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(view.body["lines"].as_array().unwrap().len(), 2);
    let notes: Vec<&str> = view.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        [
            "PENDING",
            "PENDING",
            "PENDING",
            "PAYING",
            "PAID",
            "CONFIRMED"
        ]
    );
    // Another user's token does not find it.
    let theirs = call(
        &rig.app,
        Method::GET,
        &format!("/orders/{id}"),
        Some(&rig.other_token),
        None,
        None,
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let list = call(
        &rig.app,
        Method::GET,
        "/orders",
        Some(&rig.token),
        None,
        None,
    )
    .await;
    assert_eq!(list.body["items"][0]["order_id"], id.as_str());
}

async fn every_rejection_ends_rejected_with_nothing_held(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    // Out of stock: one kettle in stock, two asked.
    let id = rig.place(&mut world, body("kettle", 2)).await;
    let order = rig.order(&id).await;
    assert_eq!(
        (order.status.as_str(), order.reason.as_deref()),
        ("REJECTED", Some("OUT_OF_STOCK"))
    );
    world.check(&order);
    assert_eq!(rig.sent(), ["ReserveStock"]);

    // Declined: the hold is released.
    world.decline = true;
    rig.commands.clear();
    let id = rig.place(&mut world, body("mug", 1)).await;
    let order = rig.order(&id).await;
    assert_eq!(order.reason.as_deref(), Some("PAYMENT_DECLINED"));
    assert_eq!(
        rig.sent(),
        ["ReserveStock", "AuthorizePayment", "ReleaseStock"]
    );
    world.check(&order);
    world.decline = false;

    // Undeliverable: the authorisation is voided, then the hold released.
    world.undeliverable = true;
    rig.commands.clear();
    let id = rig.place(&mut world, body("mug", 1)).await;
    let order = rig.order(&id).await;
    assert_eq!(order.reason.as_deref(), Some("UNDELIVERABLE"));
    assert_eq!(
        rig.sent(),
        [
            "ReserveStock",
            "AuthorizePayment",
            "CreateShipment",
            "VoidPayment",
            "ReleaseStock"
        ]
    );
    world.check(&order);
    world.undeliverable = false;

    // A capture that can never succeed: undone, and left for an operator.
    world.capture_fails = true;
    rig.commands.clear();
    let id = rig.place(&mut world, body("mug", 1)).await;
    let order = rig.order(&id).await;
    assert_eq!(
        (order.status.as_str(), order.reason.as_deref()),
        ("NEEDS_ATTENTION", Some("CAPTURE_FAILED"))
    );
    assert_eq!(
        rig.sent(),
        [
            "ReserveStock",
            "AuthorizePayment",
            "CreateShipment",
            "CapturePayment",
            "CancelShipment",
            "VoidPayment",
            "ReleaseStock"
        ]
    );
    world.check(&order);
    assert_eq!(world.stock["mug"], 10, "every unit is back");
    assert_eq!(
        rig.events
            .iter()
            .filter(|kind| *kind == "OrderRejected")
            .count(),
        4
    );
}

async fn a_participant_down_past_the_deadline(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    // Payments is down: the authorisation waits.
    world.down.insert("payments");
    let id = rig.place(&mut world, body("mug", 2)).await;
    assert_eq!(rig.status(&id).await, Status::Pending);
    // Before the deadline the scanner leaves it alone.
    assert_eq!(rig.scan(&mut world, 10_000).await, 0);
    // Past it, the saga is undone: the void waits for payments, the release goes through.
    assert_eq!(rig.scan(&mut world, 31_000).await, 1);
    assert_eq!(rig.status(&id).await, Status::Rejecting);
    assert_eq!(
        world.stock["mug"], 8,
        "the hold waits for the void to be answered first"
    );
    // Payments comes back: the late authorisation, then the void, in order.
    world.down.clear();
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(
        (order.status.as_str(), order.reason.as_deref()),
        ("REJECTED", Some("PAYMENT_TIMEOUT"))
    );
    assert!(world.voided.contains(&id));
    world.check(&order);
    assert_eq!(world.stock["mug"], 10);

    // Inventory down from the start: the reservation, then its release, after it returns.
    rig.commands.clear();
    world.down.insert("inventory");
    let id = rig.place(&mut world, body("mug", 3)).await;
    assert_eq!(rig.scan(&mut world, 31_000).await, 1);
    world.down.clear();
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(order.reason.as_deref(), Some("INVENTORY_TIMEOUT"));
    assert_eq!(rig.sent(), ["ReserveStock", "ReleaseStock"]);
    world.check(&order);
    assert_eq!(world.stock["mug"], 10);
}

async fn after_the_pivot_steps_are_sent_again_until_answered(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    let reply = rig.checkout("k-pivot", body("mug", 1)).await;
    let id = reply.body["order_id"].as_str().unwrap().to_owned();
    // Everything up to the capture is answered; then inventory falls over.
    for _ in 0..4 {
        rig.pump_one_step(&mut world).await;
    }
    assert_eq!(rig.status(&id).await, Status::Paid);
    world.down.insert("inventory");
    rig.pump(&mut world).await;
    // Sent again past each back-off, never undone.
    for after in [6_000, 16_000, 40_000] {
        assert_eq!(rig.scan(&mut world, after).await, 1, "{after}");
        assert_eq!(rig.status(&id).await, Status::Paid);
    }
    let order = rig.order(&id).await;
    assert_eq!(order.attempts, 3);
    world.down.clear();
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(order.status, "CONFIRMED");
    world.check(&order);
    let commits = rig
        .sent()
        .iter()
        .filter(|kind| **kind == "CommitStock")
        .count();
    assert_eq!(commits, 4, "the commit and three resends");
    assert!(!rig.sent().contains(&"ReleaseStock"));
}

impl Rig {
    /// Publishes one outbox message at a time (for stopping between steps).
    async fn pump_one_step(&mut self, world: &mut World) {
        let pending = Outbox::pending(&self.database, i64::MAX).await.unwrap();
        let Some(message) = pending
            .into_iter()
            .find(|p| p.seq > self.cursor && p.subject != ORDERS_EVENTS)
        else {
            return;
        };
        self.cursor = message.seq;
        let envelope: Envelope<Value> = serde_json::from_slice(&message.payload).unwrap();
        self.commands
            .push((envelope.kind.clone(), envelope.saga.clone().unwrap().step));
        let (kind, body) = world.carry_out(&envelope);
        self.deliver(&inbound(&kind, body, envelope.saga.clone().unwrap()))
            .await;
    }
}

async fn cancels_before_and_after_the_pivot(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    // Before the pivot, payments slow: undone in reverse.
    world.down.insert("payments");
    let id = rig.place(&mut world, body("mug", 2)).await;
    let cancel = |rig: &Rig, id: &str, token: &str| {
        let (app, path, token) = (
            rig.app.clone(),
            format!("/orders/{id}/cancel"),
            token.to_owned(),
        );
        async move { call(&app, Method::POST, &path, Some(&token), None, None).await }
    };
    let other = cancel(&rig, &id, &rig.other_token).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let reply = cancel(&rig, &id, &rig.token).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "CANCELLING");
    // Asked again: the same answer, nothing more sent.
    assert_eq!(
        cancel(&rig, &id, &rig.token).await.status,
        StatusCode::ACCEPTED
    );
    world.down.clear();
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(order.status, "CANCELLED");
    assert_eq!(
        rig.sent(),
        [
            "ReserveStock",
            "AuthorizePayment",
            "VoidPayment",
            "ReleaseStock"
        ]
    );
    world.check(&order);
    assert!(rig.events.contains(&"OrderCancelled".to_owned()));

    // After it is confirmed: the shipment cancelled, the money refunded.
    rig.commands.clear();
    let id = rig.place(&mut world, body("kettle", 1)).await;
    assert_eq!(rig.status(&id).await, Status::Confirmed);
    let reply = cancel(&rig, &id, &rig.token).await;
    assert_eq!(reply.body["status"], "REFUNDING");
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(order.status, "CANCELLED");
    assert_eq!(order.refunded_minor, 4_999);
    assert_eq!(
        &rig.sent()[5..],
        ["CancelShipment", "RefundPayment", "ReturnStock"]
    );
    world.check(&order);

    // Once it has left the warehouse, no cancel.
    let id = rig.place(&mut world, body("mug", 1)).await;
    let shipped = Inbound::of(
        &OrderShipped {
            order_id: id.clone(),
            tracking_id: "TRK1".into(),
        },
        None,
    )
    .unwrap();
    rig.deliver(&shipped).await;
    assert_eq!(rig.status(&id).await, Status::Shipped);
    let refused = cancel(&rig, &id, &rig.token).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.headers["content-type"], "application/problem+json");

    // While it is being paid: try again shortly.
    let reply = rig.checkout("k-paying", body("mug", 1)).await;
    let id = reply.body["order_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        rig.pump_one_step(&mut world).await;
    }
    assert_eq!(rig.status(&id).await, Status::Paying);
    let refused = cancel(&rig, &id, &rig.token).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.headers["retry-after"], "1");
}

async fn replies_twice_or_after_a_crash_change_nothing(database: &Database, _: &str) {
    for (twice, crash_first) in [(true, false), (false, true)] {
        let mut rig = Rig::new(database).await;
        rig.twice = twice;
        rig.crash_first = crash_first;
        let mut world = World::stocked();
        let id = rig.place(&mut world, body("mug", 1)).await;
        assert_eq!(rig.status(&id).await, Status::Confirmed);
        assert_eq!(rig.sent(), HAPPY);
        world.check(&rig.order(&id).await);
        world.undeliverable = true;
        rig.commands.clear();
        let id = rig.place(&mut world, body("mug", 1)).await;
        assert_eq!(
            rig.sent(),
            [
                "ReserveStock",
                "AuthorizePayment",
                "CreateShipment",
                "VoidPayment",
                "ReleaseStock"
            ]
        );
        world.check(&rig.order(&id).await);
        // Each order's history has one entry per move, duplicates and crashes aside.
        let history = rig.orders.store().history(&id).await.unwrap();
        assert_eq!(history.len(), 6, "{history:?}");
    }
}

async fn idempotency_keys_and_bad_checkouts(database: &Database, _: &str) {
    let rig = Rig::new(database).await;
    // The catalog is asked by the checkout's deadline (the server stack sets it from the
    // caller's x-request-deadline, or the service's own budget), and without one by none.
    let deadline = Deadline::after(std::time::Duration::from_millis(1_500));
    let request = http::Request::builder()
        .method(Method::POST)
        .uri("/checkout")
        .header(http::header::AUTHORIZATION, format!("Bearer {}", rig.token))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "key-with-deadline")
        .extension(deadline)
        .body(axum::body::Body::from(body("mug", 1).to_string()))
        .unwrap();
    assert_eq!(
        shop_common::testing::send(&rig.app, request).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(*rig.catalog.deadlines.lock().unwrap(), [Some(deadline)]);
    rig.checkout("key-without-deadline", body("mug", 1)).await;
    assert_eq!(
        *rig.catalog.deadlines.lock().unwrap(),
        [Some(deadline), None]
    );
    rig.catalog.deadlines.lock().unwrap().clear();
    let missing = call(
        &rig.app,
        Method::POST,
        "/checkout",
        Some(&rig.token),
        Some(body("mug", 1)),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(
        missing.body["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let first = rig.checkout("key-1", body("mug", 1)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = rig.checkout("key-1", body("mug", 1)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["order_id"], first.body["order_id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = rig.checkout("key-1", body("mug", 2)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    // One order for the key, however asked (and the two above).
    assert_eq!(rig.orders.store().all().await.unwrap().len(), 3);
    // Another user's same key is their own.
    let theirs = call(
        &rig.app,
        Method::POST,
        "/checkout",
        Some(&rig.other_token),
        Some(body("mug", 1)),
        Some(("idempotency-key", "key-1")),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED);
    assert_ne!(theirs.body["order_id"], first.body["order_id"]);

    for (bad, status) in [
        (body("no-such-thing", 1), StatusCode::UNPROCESSABLE_ENTITY),
        (body("mug", 0), StatusCode::UNPROCESSABLE_ENTITY),
        (body("mug", 101), StatusCode::UNPROCESSABLE_ENTITY),
        (body("Mug!", 1), StatusCode::UNPROCESSABLE_ENTITY),
        (body("flaky", 1), StatusCode::SERVICE_UNAVAILABLE),
        (
            json!({"lines": [], "shipping_address": body("mug", 1)["shipping_address"], "card": "4242424242424242"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"lines": [{"product_id": "mug", "quantity": 1}, {"product_id": "yen-thing", "quantity": 1}], "shipping_address": body("mug", 1)["shipping_address"], "card": "4242424242424242"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"lines": [{"product_id": "mug", "quantity": 1}], "shipping_address": body("mug", 1)["shipping_address"], "card": "4242-4242"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"lines": [{"product_id": "mug", "quantity": 1, "price_minor": 1}], "shipping_address": body("mug", 1)["shipping_address"], "card": "4242424242424242"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let reply = rig
            .checkout(&uuid::Uuid::new_v4().to_string(), bad.clone())
            .await;
        assert_eq!(reply.status, status, "{bad} → {:?}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let mut address = body("mug", 1);
    address["shipping_address"]["name"] = json!("a\u{0}b");
    assert_eq!(
        rig.checkout("k-nul", address).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Nothing of the refused ones was stored (the three above and the other user's).
    assert_eq!(rig.orders.store().all().await.unwrap().len(), 4);
    // Not signed in: 401.
    let anonymous = call(
        &rig.app,
        Method::POST,
        "/checkout",
        None,
        Some(body("mug", 1)),
        Some(("idempotency-key", "k")),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let bad_id = call(
        &rig.app,
        Method::GET,
        "/orders/not-a-uuid",
        Some(&rig.token),
        None,
        None,
    )
    .await;
    assert_eq!(bad_id.status, StatusCode::NOT_FOUND);
}

async fn racing_checkouts_with_one_key_place_one_order(database: &Database, _: &str) {
    let rig = Rig::new(database).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, token) = (rig.app.clone(), rig.token.clone());
            tokio::spawn(async move {
                call(
                    &app,
                    Method::POST,
                    "/checkout",
                    Some(&token),
                    Some(body("mug", 1)),
                    Some(("idempotency-key", "same")),
                )
                .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
        ids.insert(reply.body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(rig.orders.store().all().await.unwrap().len(), 1);
    let reserves = Outbox::pending(&rig.database, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.subject == INVENTORY_COMMANDS)
        .count();
    assert_eq!(reserves, 1, "one saga started");
}

async fn replies_that_do_not_fit_are_ignored_or_poison(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    world.down.insert("payments");
    let id = rig.place(&mut world, body("mug", 1)).await;
    let step = |step: &str| SagaRef {
        saga_id: id.clone(),
        step: step.to_owned(),
    };
    // An answer to a step the saga is not awaiting: acknowledged, nothing moves.
    let stale = inbound("StockReserved", json!({"order_id": id}), step("reserve"));
    rig.deliver(&stale).await;
    assert_eq!(rig.order(&id).await.step.as_deref(), Some("authorize"));
    // A reply for no order: acknowledged.
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let unknown = inbound(
        "StockReserved",
        json!({"order_id": unknown_id}),
        SagaRef {
            saga_id: unknown_id.clone(),
            step: "reserve".into(),
        },
    );
    rig.deliver(&unknown).await;
    // A reply whose body names another order than its saga: poison.
    let crossed = inbound(
        "PaymentAuthorized",
        json!({"order_id": "other", "payment_id": "p"}),
        step("authorize"),
    );
    let mut tx = database.begin().await.unwrap();
    let error = rig
        .orders
        .orchestrator()
        .handle(&crossed, &mut tx)
        .await
        .unwrap_err();
    assert!(
        matches!(error, shop_messaging::HandleError::Poison(_)),
        "{error}"
    );
    drop(tx);
    // A step this saga does not have: acknowledged, nothing moves.
    let strange = inbound(
        "PaymentAuthorized",
        json!({"order_id": id, "payment_id": "p"}),
        step("teleport"),
    );
    let mut tx = database.begin().await.unwrap();
    assert!(
        rig.orders
            .orchestrator()
            .handle(&strange, &mut tx)
            .await
            .is_ok()
    );
    drop(tx);
    assert_eq!(rig.status(&id).await, Status::Pending);
}

async fn two_movers_of_one_order_at_once(database: &Database, _: &str) {
    // SQLite's writers queue for the database (`BEGIN IMMEDIATE`): this race is PostgreSQL's.
    let Database::Postgres(_) = database else {
        return;
    };
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    world.down.insert("payments");
    let id = rig.place(&mut world, body("mug", 1)).await;
    // A cancel moves the order in a transaction still open...
    let mut first = database.begin_read_committed().await.unwrap();
    let cancelled = rig
        .orders
        .apply(&mut first, &id, &Event::CancelAsked)
        .await
        .unwrap();
    assert_eq!(cancelled, Applied::Moved(Status::Cancelling));
    // ... while the authorisation's answer arrives.
    let (orders, db, order_id) = (rig.orders.clone(), database.clone(), id.clone());
    let authorized = Event::Answered(Step::Authorize, Answer::Authorized);
    let second = tokio::spawn(async move {
        let mut tx = db.begin_read_committed().await.unwrap();
        orders.apply(&mut tx, &order_id, &authorized).await
    });
    shop_common::testing::until_one_waits_on_a_lock(database, &second, "the answer did not wait")
        .await;
    first.commit().await.unwrap();
    // The answer read the order before the cancel committed: it is told to try again...
    let raced = second.await.unwrap();
    assert!(matches!(raced, Err(HandleError::Transient(_))), "{raced:?}");
    // ... and, tried again, finds the saga moved past it.
    let mut tx = database.begin_read_committed().await.unwrap();
    let again = rig
        .orders
        .apply(
            &mut tx,
            &id,
            &Event::Answered(Step::Authorize, Answer::Authorized),
        )
        .await
        .unwrap();
    assert!(matches!(again, Applied::Stayed(_)), "{again:?}");
    tx.commit().await.unwrap();
    world.down.clear();
    rig.pump(&mut world).await;
    let order = rig.order(&id).await;
    assert_eq!(order.status, "CANCELLED");
    world.check(&order);
}

async fn the_status_streams_as_the_order_moves(database: &Database, _: &str) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    world.down.insert("payments");
    let id = rig.place(&mut world, body("mug", 1)).await;
    let app = rig.app.clone();
    let open = |token: &str| {
        let request = http::Request::get(format!("/orders/{id}/events"))
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };
    let response = open(&rig.token).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.into_body();
    let mut next_event = async || loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), stream.frame())
            .await
            .expect("an event within the poll interval")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            let text = String::from_utf8(data.to_vec()).unwrap();
            if text.starts_with("event: status") {
                return text;
            }
        }
    };
    assert!(next_event().await.contains(r#""status":"PENDING""#));
    // Moved by the orchestrator in this process: told at once.
    world.down.clear();
    rig.pump(&mut world).await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|event: &String| event.contains("CONFIRMED"))
    {
        seen.push(next_event().await);
    }
    // Another user cannot follow it; one user holds at most a few streams.
    let theirs = open(&rig.other_token).await.unwrap();
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let mut held = Vec::new();
    for _ in 1..shop_orders::MAX_STREAMS_PER_USER {
        held.push(open(&rig.token).await.unwrap());
    }
    assert_eq!(
        open(&rig.token).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(held);
    drop(stream);
    assert_eq!(open(&rig.token).await.unwrap().status(), StatusCode::OK);
}

shop_common::on_both_stores!(
    the_status_streams_as_the_order_moves,
    two_movers_of_one_order_at_once,
    happy_path,
    every_rejection_ends_rejected_with_nothing_held,
    a_participant_down_past_the_deadline,
    after_the_pivot_steps_are_sent_again_until_answered,
    cancels_before_and_after_the_pivot,
    replies_twice_or_after_a_crash_change_nothing,
    idempotency_keys_and_bad_checkouts,
    racing_checkouts_with_one_key_place_one_order,
    replies_that_do_not_fit_are_ignored_or_poison,
    cards_kept_in_clear_before_sealing_are_sealed_at_start,
);

/// An order placed before cards were sealed keeps its card in clear: the store seals it at
/// start, for that order, so that nothing stays in clear and the order can still pay.
async fn cards_kept_in_clear_before_sealing_are_sealed_at_start(database: &Database, _: &str) {
    let mut rig = Rig::new(database).await;
    let mut world = World::stocked();
    let id = rig.place(&mut world, body("mug", 1)).await;
    let store = rig.orders.store();
    let set_card = async |card: &str| {
        shop_common::on_db!(store.database(), pool => sqlx::query(
            "UPDATE orders SET card = $2 WHERE order_id = $1",
        )
        .bind(&id)
        .bind(card)
        .execute(pool)
        .await
        .map(drop))
        .unwrap();
    };
    let card = async || -> String {
        shop_common::on_db!(store.database(), pool => sqlx::query_scalar(
            "SELECT card FROM orders WHERE order_id = $1",
        )
        .bind(&id)
        .fetch_one(pool)
        .await)
        .unwrap()
    };
    set_card("4242424242424242").await;
    let key = rig.orders.card_key();
    let seal = |order_id: &str, card: &str| seal_card(key, order_id, card);
    assert_eq!(store.seal_clear_cards(seal).await.unwrap(), 1);
    let sealed = card().await;
    assert_ne!(sealed, "4242424242424242");
    assert_eq!(open_card(key, &id, &sealed).unwrap(), "4242424242424242");
    assert_eq!(
        store.seal_clear_cards(seal).await.unwrap(),
        0,
        "sealed once"
    );
    // A blank card (its authorisation was asked) stays blank.
    set_card("").await;
    assert_eq!(store.seal_clear_cards(seal).await.unwrap(), 0);
    assert_eq!(card().await, "");
}
