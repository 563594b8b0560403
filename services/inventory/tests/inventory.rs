//! The inventory, the same suites on SQLite and on PostgreSQL: all-or-nothing reservations
//! under concurrency, release and commit, the sweeper, the saga's commands, and the HTTP API;
//! after each, the ledger agrees with the stock.

use std::sync::Arc;

use axum::Router;
use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use serde_json::json;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::store::Database;
use shop_common::testing::call;
use shop_inventory::store::{Commitment, Ending, Level, Reservation, StockStore};
use shop_inventory::{Inventory, InventoryConfig, router};
use shop_messaging::contracts::{
    CommitStock, ReleaseStock, ReservationExpired, ReserveStock, ReturnStock, StockLine,
    StockRejected, StockRejection, StockReserved,
};
use shop_messaging::{Envelope, Handler, Inbound, Message, Outbox, Outcome, SagaRef};

shop_common::on_both_stores!(
    a_reservation_holds_every_line_or_none,
    release_and_commit_move_a_hold_once,
    of_many_orders_for_the_last_unit_one_gets_it,
    the_sweeper_releases_holds_past_their_time,
    the_saga_commands_are_answered_once_per_step,
    the_http_api_reads_stock_and_admins_restock,
);

async fn start(database: &Database, url: &str) -> (Inventory, InventoryConfig) {
    let pairs = [("DATABASE_URL", url), ("SEED_DEMO_STOCK", "false")];
    let vars = Vars(|var: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    });
    let service = ServiceConfig::from_vars("inventory", 0, &vars).unwrap();
    let config = InventoryConfig::from_vars(service, &vars).unwrap();
    let (_, validator) = shop_common::testing::users_tokens();
    let inventory = Inventory::start(&config, database, validator)
        .await
        .unwrap();
    (inventory, config)
}

async fn stocked(database: &Database, url: &str, stock: &[(&str, i64)]) -> Inventory {
    let (inventory, _) = start(database, url).await;
    for (sku, on_hand) in stock {
        inventory
            .store()
            .restock(sku, *on_hand, "test")
            .await
            .unwrap()
            .unwrap();
    }
    inventory
}

fn lines(lines: &[(&str, i64)]) -> Vec<(String, i64)> {
    lines.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()
}

async fn level(inventory: &Inventory, sku: &str) -> (i64, i64) {
    let Level {
        on_hand, reserved, ..
    } = inventory.store().level(sku).await.unwrap().unwrap();
    (on_hand, reserved)
}

async fn audited(inventory: &Inventory) {
    assert_eq!(
        inventory.store().audit().await.unwrap(),
        Vec::<String>::new()
    );
}

async fn reserve(inventory: &Inventory, order: &str, wanted: &[(&str, i64)]) -> Reservation {
    let mut tx = inventory.store().database().begin().await.unwrap();
    let done = StockStore::reserve(&mut tx, order, &lines(wanted), i64::MAX)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    done
}

async fn a_reservation_holds_every_line_or_none(database: &Database, url: &str) {
    let inventory = stocked(database, url, &[("kettle", 3), ("teapot", 1)]).await;
    // One short line: nothing is held, and the short line is named.
    assert_eq!(
        reserve(&inventory, "o1", &[("kettle", 2), ("teapot", 2)]).await,
        Reservation::Short(vec!["teapot".to_owned()])
    );
    assert_eq!(level(&inventory, "kettle").await, (3, 0));
    // A product with no stock at all is short too.
    assert_eq!(
        reserve(&inventory, "o2", &[("kettle", 1), ("ghost", 1)]).await,
        Reservation::Short(vec!["ghost".to_owned()])
    );
    // Lines of one product are merged: 1 + 2 of 3.
    assert_eq!(
        reserve(
            &inventory,
            "o3",
            &[("kettle", 1), ("teapot", 1), ("kettle", 2)]
        )
        .await,
        Reservation::Reserved
    );
    assert_eq!(level(&inventory, "kettle").await, (3, 3));
    assert_eq!(level(&inventory, "teapot").await, (1, 1));
    // The same order again holds nothing more.
    assert_eq!(
        reserve(&inventory, "o3", &[("kettle", 1)]).await,
        Reservation::Reserved
    );
    assert_eq!(level(&inventory, "kettle").await, (3, 3));
    audited(&inventory).await;
}

async fn release_and_commit_move_a_hold_once(database: &Database, url: &str) {
    let inventory = stocked(database, url, &[("kettle", 5)]).await;
    assert_eq!(
        reserve(&inventory, "paid", &[("kettle", 2)]).await,
        Reservation::Reserved
    );
    assert_eq!(
        reserve(&inventory, "cancelled", &[("kettle", 2)]).await,
        Reservation::Reserved
    );
    let mut tx = database.begin().await.unwrap();
    assert_eq!(
        StockStore::commit(&mut tx, "paid").await.unwrap(),
        Commitment::Committed
    );
    assert!(
        StockStore::release(&mut tx, "cancelled", Ending::Released)
            .await
            .unwrap()
    );
    // Again: nothing more happens.
    assert_eq!(
        StockStore::commit(&mut tx, "paid").await.unwrap(),
        Commitment::Committed
    );
    assert!(
        !StockStore::release(&mut tx, "cancelled", Ending::Released)
            .await
            .unwrap()
    );
    // A committed hold is not released; a release before the reservation refuses it.
    assert!(
        !StockStore::release(&mut tx, "paid", Ending::Released)
            .await
            .unwrap()
    );
    assert!(
        !StockStore::release(&mut tx, "early", Ending::Released)
            .await
            .unwrap()
    );
    assert_eq!(
        StockStore::commit(&mut tx, "never").await.unwrap(),
        Commitment::Nothing
    );
    tx.commit().await.unwrap();
    assert_eq!(level(&inventory, "kettle").await, (3, 0));
    assert_eq!(
        reserve(&inventory, "early", &[("kettle", 1)]).await,
        Reservation::Released
    );
    assert_eq!(level(&inventory, "kettle").await, (3, 0));
    audited(&inventory).await;
}

async fn of_many_orders_for_the_last_unit_one_gets_it(database: &Database, url: &str) {
    let inventory = stocked(database, url, &[("kettle", 1), ("teapot", 8)]).await;
    // Eight orders at once, each for the last kettle and a teapot: one gets both, the others
    // nothing (their teapots are given back in the same transaction).
    let racing: Vec<_> = (0..8)
        .map(|n| {
            let inventory = inventory.clone();
            tokio::spawn(async move {
                let order = format!("o{n}");
                reserve(&inventory, &order, &[("teapot", 1), ("kettle", 1)]).await
            })
        })
        .collect();
    let mut reserved = 0;
    for race in racing {
        match race.await.unwrap() {
            Reservation::Reserved => reserved += 1,
            Reservation::Short(short) => assert_eq!(short, ["kettle"]),
            Reservation::Released => panic!("nothing was released"),
        }
    }
    assert_eq!(reserved, 1);
    assert_eq!(level(&inventory, "kettle").await, (1, 1));
    assert_eq!(level(&inventory, "teapot").await, (8, 1));
    audited(&inventory).await;
}

async fn the_sweeper_releases_holds_past_their_time(database: &Database, url: &str) {
    let inventory = stocked(database, url, &[("kettle", 2)]).await;
    let now = shop_common::unix_millis();
    let mut tx = database.begin().await.unwrap();
    for (order, expires) in [("late", now - 1), ("young", now + 60_000)] {
        StockStore::reserve(&mut tx, order, &lines(&[("kettle", 1)]), expires)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(inventory.sweep(now).await.unwrap(), 1);
    assert_eq!(inventory.sweep(now).await.unwrap(), 0, "once");
    assert_eq!(level(&inventory, "kettle").await, (2, 1));
    let pending = Outbox::pending(database, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let envelope: Envelope<ReservationExpired> =
        serde_json::from_slice(&pending[0].payload).unwrap();
    assert_eq!(envelope.body.order_id, "late");

    // Its payment captured after all, the late order commits from what is available; an order
    // whose hold expired when nothing is left cannot commit, and nothing changes.
    let mut tx = database.begin().await.unwrap();
    assert_eq!(
        StockStore::commit(&mut tx, "late").await.unwrap(),
        Commitment::Committed
    );
    tx.commit().await.unwrap();
    assert_eq!(level(&inventory, "kettle").await, (1, 1));
    assert_eq!(inventory.sweep(now + 120_000).await.unwrap(), 1);
    assert_eq!(level(&inventory, "kettle").await, (1, 0));
    assert_eq!(
        reserve(&inventory, "other", &[("kettle", 1)]).await,
        Reservation::Reserved
    );
    let mut tx = database.begin().await.unwrap();
    assert_eq!(
        StockStore::commit(&mut tx, "young").await.unwrap(),
        Commitment::Short(vec!["kettle".to_owned()])
    );
    tx.commit().await.unwrap();
    assert_eq!(level(&inventory, "kettle").await, (1, 1));
    audited(&inventory).await;
}

fn command<M: Message>(message: &M, step: &str) -> Inbound {
    let saga = SagaRef {
        saga_id: message.key().into_owned(),
        step: step.to_owned(),
    };
    Inbound::of(message, Some(saga)).unwrap()
}

/// Hands `inbound` to the participant in a transaction of its own, and returns the reply it
/// enqueued (its kind and body).
async fn handled(
    inventory: &Inventory,
    database: &Database,
    inbound: &Inbound,
) -> Result<(String, serde_json::Value), shop_messaging::HandleError> {
    let participant = inventory.participant();
    let mut tx = database.begin().await.unwrap();
    let outcome = participant.handle(inbound, &mut tx).await;
    match outcome {
        Ok(Outcome::Ack) => tx.commit().await.unwrap(),
        Ok(other) => panic!("{other:?}"),
        Err(error) => return Err(error),
    }
    let pending = Outbox::pending(database, 100).await.unwrap();
    let last = pending.last().unwrap();
    let envelope: Envelope<serde_json::Value> = serde_json::from_slice(&last.payload).unwrap();
    Ok((envelope.kind, envelope.body))
}

async fn the_saga_commands_are_answered_once_per_step(database: &Database, url: &str) {
    let inventory = stocked(database, url, &[("kettle", 1)]).await;
    let reserve = ReserveStock {
        order_id: "o1".into(),
        lines: vec![StockLine {
            sku: "kettle".into(),
            quantity: 1,
        }],
        hold_ms: 60_000,
    };
    let first = command(&reserve, "reserve-stock");
    let (kind, body) = handled(&inventory, database, &first).await.unwrap();
    assert_eq!(kind, StockReserved::KIND);
    assert_eq!(body, json!({"order_id": "o1"}));
    // The same step again (a new message id): the same reply, no second hold.
    let again = command(&reserve, "reserve-stock");
    assert_eq!(
        handled(&inventory, database, &again).await.unwrap().0,
        StockReserved::KIND
    );
    assert_eq!(level(&inventory, "kettle").await, (1, 1));
    // Another order for it: refused, naming the product.
    let other = ReserveStock {
        order_id: "o2".into(),
        ..reserve.clone()
    };
    let (kind, body) = handled(&inventory, database, &command(&other, "reserve-stock"))
        .await
        .unwrap();
    assert_eq!(kind, StockRejected::KIND);
    let rejected: StockRejected = serde_json::from_value(body).unwrap();
    assert_eq!(rejected.reason, StockRejection::OutOfStock);
    assert_eq!(rejected.short, ["kettle"]);
    // Commit o1; release o2 (it holds nothing).
    let commit = command(
        &CommitStock {
            order_id: "o1".into(),
        },
        "commit-stock",
    );
    assert_eq!(
        handled(&inventory, database, &commit).await.unwrap().0,
        "StockCommitted"
    );
    let release = command(
        &ReleaseStock {
            order_id: "o2".into(),
        },
        "release-stock",
    );
    assert_eq!(
        handled(&inventory, database, &release).await.unwrap(),
        (
            "StockReleased".to_owned(),
            json!({"order_id": "o2", "released": false})
        )
    );
    assert_eq!(level(&inventory, "kettle").await, (0, 0));
    // o1 refunded: its kettle back on hand, once however often it is asked.
    let give_back = |order: &str, step: &str| {
        command(
            &ReturnStock {
                order_id: order.into(),
            },
            step,
        )
    };
    let returned = |order: &str, now: bool| {
        (
            "StockReturned".to_owned(),
            json!({"order_id": order, "returned": now}),
        )
    };
    let first = give_back("o1", "return-stock");
    assert_eq!(
        handled(&inventory, database, &first).await.unwrap(),
        returned("o1", true)
    );
    assert_eq!(level(&inventory, "kettle").await, (1, 0));
    // Redelivered (a new message id, the same step): the same answer, nothing more.
    assert_eq!(
        handled(&inventory, database, &give_back("o1", "return-stock"))
            .await
            .unwrap(),
        returned("o1", true)
    );
    // Asked again by another step: nothing is left to put back.
    assert_eq!(
        handled(&inventory, database, &give_back("o1", "return-stock-again"))
            .await
            .unwrap(),
        returned("o1", false)
    );
    // o2 never took anything.
    assert_eq!(
        handled(&inventory, database, &give_back("o2", "return-stock"))
            .await
            .unwrap(),
        returned("o2", false)
    );
    assert_eq!(level(&inventory, "kettle").await, (1, 0));
    audited(&inventory).await;
    // Out of bounds: poison, before anything is touched.
    let mut too_many = reserve.clone();
    too_many.order_id = "o3".into();
    too_many.lines[0].quantity = shop_inventory::MAX_QUANTITY + 1;
    assert!(matches!(
        handled(&inventory, database, &command(&too_many, "reserve-stock")).await,
        Err(shop_messaging::HandleError::Poison(_))
    ));
    // A hold too short to mean anything is poison.
    let mut instant = reserve.clone();
    instant.order_id = "o4".into();
    instant.hold_ms = 0;
    assert!(matches!(
        handled(&inventory, database, &command(&instant, "reserve-stock")).await,
        Err(shop_messaging::HandleError::Poison(_))
    ));
    // A NUL in an id (PostgreSQL would refuse it for ever) is poison.
    let nul = command(
        &CommitStock {
            order_id: "o\u{0}".into(),
        },
        "commit-stock",
    );
    assert!(matches!(
        handled(&inventory, database, &nul).await,
        Err(shop_messaging::HandleError::Poison(_))
    ));
    // Committing what an order never held is poison too.
    let never = command(
        &CommitStock {
            order_id: "o9".into(),
        },
        "commit-stock",
    );
    assert!(matches!(
        handled(&inventory, database, &never).await,
        Err(shop_messaging::HandleError::Poison(_))
    ));
    audited(&inventory).await;
}

async fn the_http_api_reads_stock_and_admins_restock(database: &Database, url: &str) {
    let (issuer, validator) = shop_common::testing::users_tokens();
    let pairs = [("DATABASE_URL", url), ("SEED_DEMO_STOCK", "true")];
    let vars = Vars(|var: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    });
    let service = ServiceConfig::from_vars("inventory", 0, &vars).unwrap();
    let config = InventoryConfig::from_vars(service, &vars).unwrap();
    let inventory = Inventory::start(&config, database, validator)
        .await
        .unwrap();
    let app: Router = router(inventory.clone());
    let token = |role: &str| {
        issuer
            .issue(&AccessClaims::new(format!("{role}-1")).role(role))
            .unwrap()
            .token
    };
    let (admin, customer) = (token("admin"), token("customer"));
    let app = Arc::new(app);
    let get = async |path: &str, token: Option<&str>| {
        call(&*app, Method::GET, path, token, None, None).await
    };
    let restock = async |sku: &str, body: serde_json::Value, token: Option<&str>| {
        let path = format!("/admin/stock/{sku}/restock");
        call(&*app, Method::POST, &path, token, Some(body), None).await
    };

    // The demo stock: 120 products, the kettle out of stock.
    assert_eq!(inventory.store().count().await.unwrap(), 120);
    let kettle = get("/stock/kitchen-000", None).await;
    assert_eq!(kettle.status, StatusCode::OK);
    assert_eq!(kettle.body, json!({"sku": "kitchen-000", "available": 0}));
    assert_eq!(get("/stock/kitchen-001", None).await.body["available"], 50);
    let missing = get("/stock/nothing", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers["content-type"], "application/problem+json");
    let long = format!("/stock/{}", "x".repeat(65));
    assert_eq!(get(&long, None).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get("/stock/a%00b", None).await.status,
        StatusCode::BAD_REQUEST
    );

    // Only an admin sees the whole level and restocks.
    assert_eq!(
        get("/admin/stock/kitchen-000", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        restock("kitchen-000", json!({"quantity": 5}), Some(&customer))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let restocked = restock("kitchen-000", json!({"quantity": 5}), Some(&admin)).await;
    assert_eq!(restocked.status, StatusCode::OK, "{:?}", restocked.body);
    assert_eq!(
        restocked.body,
        json!({"sku": "kitchen-000", "on_hand": 5, "reserved": 0, "available": 5})
    );
    for bad in [
        json!({"quantity": 0}),
        json!({"quantity": 1_000_001}),
        json!({"quantity": "x"}),
        json!({"qty": 1}),
    ] {
        let refused = restock("kitchen-000", bad.clone(), Some(&admin)).await;
        assert!(
            refused.status == StatusCode::BAD_REQUEST
                || refused.status == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {:?}",
            refused.status
        );
        assert_eq!(refused.headers["content-type"], "application/problem+json");
    }
    assert_eq!(
        get("/admin/stock/kitchen-000", Some(&admin)).await.body["on_hand"],
        5
    );
    audited(&inventory).await;
}

/// A release racing the reservation it compensates (PostgreSQL): it waits for the reservation's
/// claim on the order, then releases what it holds, rather than finding nothing and answering
/// "released" while the hold stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_its_reservation_waits_and_releases_it() {
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("inv_race").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    let inventory = stocked(&database, &db.url, &[("kettle", 1)]).await;
    let mut reserving = database.begin().await.unwrap();
    let reserved = StockStore::reserve(&mut reserving, "r", &lines(&[("kettle", 1)]), i64::MAX)
        .await
        .unwrap();
    assert_eq!(reserved, Reservation::Reserved);
    let releasing = {
        let database = database.clone();
        tokio::spawn(async move {
            let mut tx = database.begin().await.unwrap();
            let released = StockStore::release(&mut tx, "r", Ending::Released)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            released
        })
    };
    shop_common::testing::until_one_waits_on_a_lock(
        &database,
        &releasing,
        "the release did not wait",
    )
    .await;
    reserving.commit().await.unwrap();
    assert!(releasing.await.unwrap(), "it released the hold");
    assert_eq!(level(&inventory, "kettle").await, (1, 0));
    audited(&inventory).await;
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}
