//! The shipping service, the same suites on SQLite and on PostgreSQL: the saga's bookings and
//! cancels, once per step; undeliverable addresses; a cancel that comes first; and the HTTP
//! API (quotes, and the warehouse's ship and deliver, each announced).

use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use serde_json::json;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::contracts::{
    Address, CancelShipment, CreateShipment, OrderConfirmed, ShipmentCancelled, ShipmentCreated,
    ShipmentRejected, ShipmentRejection,
};
use shop_messaging::saga::testing::reply_to;
use shop_messaging::{Envelope, HandleError, Handler, Inbound, Message, Outbox, Outcome};
use shop_shipping::{Shipping, ShippingConfig, router};

shop_common::on_both_stores!(
    a_shipment_is_booked_once_and_cancelled_once,
    undeliverable_addresses_and_early_cancels_refuse_the_booking,
    the_warehouse_ships_and_delivers_and_says_so,
);

async fn start(database: &Database, url: &str) -> (Shipping, mainstay_auth::TokenIssuer) {
    let pairs = [
        ("DATABASE_URL", url),
        ("SHIPPING_UNDELIVERABLE_POSTCODES", "00000, 99999"),
    ];
    let vars = Vars(|var: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    });
    let service = ServiceConfig::from_vars("shipping", 0, &vars).unwrap();
    let config = ShippingConfig::from_vars(service, &vars).unwrap();
    let (issuer, validator) = shop_common::testing::users_tokens();
    let shipping = Shipping::start(&config, database, validator).await.unwrap();
    (shipping, issuer)
}

async fn step<M: Message, R: Message + serde::de::DeserializeOwned>(
    shipping: &Shipping,
    message: &M,
    step: &str,
) -> Result<R, HandleError> {
    let database = shipping.store().database();
    reply_to(&shipping.participant(), database, message, step).await
}

fn create(order_id: &str, postcode: &str) -> CreateShipment {
    CreateShipment {
        order_id: order_id.to_owned(),
        address: Address {
            name: "Alice Liddell".into(),
            line1: "1 Rabbit Hole".into(),
            city: "Oxford".into(),
            postcode: postcode.to_owned(),
            country: "NL".into(),
        },
        items: 3,
    }
}

async fn a_shipment_is_booked_once_and_cancelled_once(database: &Database, url: &str) {
    let (shipping, _) = start(database, url).await;
    let booked: ShipmentCreated = step(&shipping, &create("o", "1012AB"), "create")
        .await
        .unwrap();
    assert_eq!(
        booked.cost_minor, 699,
        "4.99 and 1.00 for each item after the first"
    );
    let again: ShipmentCreated = step(&shipping, &create("o", "1012AB"), "create-again")
        .await
        .unwrap();
    assert_eq!(again, booked, "one shipment per order");
    let cancel = CancelShipment {
        order_id: "o".into(),
    };
    let cancelled: ShipmentCancelled = step(&shipping, &cancel, "cancel").await.unwrap();
    assert!(cancelled.cancelled);
    let twice: ShipmentCancelled = step(&shipping, &cancel, "cancel-again").await.unwrap();
    assert!(!twice.cancelled);
    let late: ShipmentRejected = step(&shipping, &create("o", "1012AB"), "create-late")
        .await
        .unwrap();
    assert_eq!(late.reason, ShipmentRejection::Cancelled);
    // Malformed: poison.
    let mut bad = create("b", "1012AB");
    bad.address.country = "Netherlands".into();
    assert!(matches!(
        step::<_, ShipmentCreated>(&shipping, &bad, "create").await,
        Err(HandleError::Poison(_))
    ));
    let mut none = create("n", "1012AB");
    none.items = 0;
    assert!(matches!(
        step::<_, ShipmentCreated>(&shipping, &none, "create").await,
        Err(HandleError::Poison(_))
    ));
}

async fn undeliverable_addresses_and_early_cancels_refuse_the_booking(
    database: &Database,
    url: &str,
) {
    let (shipping, _) = start(database, url).await;
    let refused: ShipmentRejected = step(&shipping, &create("u", "99999"), "create")
        .await
        .unwrap();
    assert_eq!(refused.reason, ShipmentRejection::Undeliverable);
    // Its compensation finds nothing booked.
    let cancel = CancelShipment {
        order_id: "u".into(),
    };
    let cancelled: ShipmentCancelled = step(&shipping, &cancel, "cancel").await.unwrap();
    assert!(!cancelled.cancelled);
    // Cancelled before it was booked (the saga's deadline passed): the late booking is refused.
    let early = CancelShipment {
        order_id: "e".into(),
    };
    let cancelled: ShipmentCancelled = step(&shipping, &early, "cancel").await.unwrap();
    assert!(!cancelled.cancelled);
    let late: ShipmentRejected = step(&shipping, &create("e", "1012AB"), "create")
        .await
        .unwrap();
    assert_eq!(late.reason, ShipmentRejection::Cancelled);
}

async fn the_warehouse_ships_and_delivers_and_says_so(database: &Database, url: &str) {
    let (shipping, issuer) = start(database, url).await;
    let booked: ShipmentCreated = step(&shipping, &create("o", "1012AB"), "create")
        .await
        .unwrap();
    let app = router(shipping.clone());
    let token = |role: &str| {
        issuer
            .issue(&AccessClaims::new(format!("{role}-1")).role(role))
            .unwrap()
            .token
    };
    let admin = token("admin");
    let send = async |method: Method, path: &str, token: Option<&str>| {
        call(&app, method, path, token, None, None).await
    };

    let quote = send(Method::GET, "/quote?items=2&country=US", None).await;
    assert_eq!(quote.status, StatusCode::OK);
    assert_eq!(
        quote.body,
        json!({"items": 2, "country": "US", "cost_minor": 1198})
    );
    for bad in [
        "/quote?items=0&country=NL",
        "/quote?items=2&country=nl",
        "/quote?items=x&country=NL",
        "/quote",
    ] {
        let refused = send(Method::GET, bad, None).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(refused.headers["content-type"], "application/problem+json");
    }

    assert_eq!(
        send(Method::POST, "/admin/shipments/o/ship", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            Method::POST,
            "/admin/shipments/o/ship",
            Some(&token("customer"))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(Method::POST, "/admin/shipments/o/deliver", Some(&admin))
            .await
            .status,
        StatusCode::CONFLICT,
        "not shipped yet"
    );
    // The whole address is kept, for the warehouse.
    let kept = send(Method::GET, "/admin/shipments/o", Some(&admin)).await;
    assert_eq!(
        (
            &kept.body["recipient"],
            &kept.body["line1"],
            &kept.body["city"],
            &kept.body["postcode"],
            &kept.body["country"],
        ),
        (
            &json!("Alice Liddell"),
            &json!("1 Rabbit Hole"),
            &json!("Oxford"),
            &json!("1012AB"),
            &json!("NL")
        )
    );
    // Nothing leaves before the order is confirmed (its payment could still fail).
    let early = send(Method::POST, "/admin/shipments/o/ship", Some(&admin)).await;
    assert_eq!(early.status, StatusCode::CONFLICT);
    assert!(
        early.body["detail"]
            .as_str()
            .unwrap()
            .contains("not confirmed")
    );
    let confirmed = OrderConfirmed {
        order_id: "o".into(),
        user_id: "u".into(),
        lines: vec![],
        total_minor: 1_000,
        currency: "EUR".into(),
        placed_at_ms: 0,
    };
    for _ in 0..2 {
        // Redelivered: the same.
        let mut tx = database.begin().await.unwrap();
        let handled = shipping
            .confirmations()
            .handle(&Inbound::of(&confirmed, None).unwrap(), &mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(handled, Outcome::Ack);
    }
    let confirmed_at = send(Method::GET, "/admin/shipments/o", Some(&admin)).await;
    assert!(confirmed_at.body["confirmed_at_ms"].as_i64().unwrap() > 0);
    let shipped = send(Method::POST, "/admin/shipments/o/ship", Some(&admin)).await;
    assert_eq!(shipped.status, StatusCode::OK, "{:?}", shipped.body);
    assert_eq!(shipped.body["status"], "SHIPPED");
    assert_eq!(
        send(Method::POST, "/admin/shipments/o/ship", Some(&admin))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let delivered = send(Method::POST, "/admin/shipments/o/deliver", Some(&admin)).await;
    assert_eq!(delivered.body["status"], "DELIVERED");
    assert_eq!(
        send(Method::GET, "/admin/shipments/none", Some(&admin))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // A shipped order can no longer be cancelled.
    let cancel = CancelShipment {
        order_id: "o".into(),
    };
    let cancelled: ShipmentCancelled = step(&shipping, &cancel, "cancel").await.unwrap();
    assert!(!cancelled.cancelled);

    let kinds: Vec<(String, serde_json::Value)> = Outbox::pending(database, 100)
        .await
        .unwrap()
        .iter()
        .map(|pending| {
            let envelope: Envelope<serde_json::Value> =
                serde_json::from_slice(&pending.payload).unwrap();
            (envelope.kind, envelope.body)
        })
        .filter(|(kind, _)| kind.starts_with("Order"))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "OrderShipped".to_owned(),
                json!({"order_id": "o", "tracking_id": booked.tracking_id})
            ),
            ("OrderDelivered".to_owned(), json!({"order_id": "o"})),
        ]
    );
}
