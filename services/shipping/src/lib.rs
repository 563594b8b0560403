//! The shipping service: quotes, and one shipment per order, booked and cancelled by the
//! checkout saga, shipped and delivered by the warehouse.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /quote?items=N&country=CC` | — | what shipping `N` items (1 to 1000) to a country costs |
//! | `GET /admin/shipments/{order_id}` | role `admin` | an order's shipment |
//! | `POST /admin/shipments/{order_id}/ship` | role `admin` | the parcel of a confirmed order left: `OrderShipped` on `shipping.events` |
//! | `POST /admin/shipments/{order_id}/deliver` | role `admin` | the parcel arrived: `OrderDelivered` |
//!
//! The saga's steps arrive on `shipping.commands`: `CreateShipment` books a shipment
//! (`ShipmentCreated`), or refuses an address the carrier does not deliver to
//! (`SHIPPING_UNDELIVERABLE_POSTCODES`: `ShipmentRejected`); `CancelShipment` cancels a booked
//! one, and a cancel that comes first refuses the late booking. Each step is carried out once.
//!
//! A shipment keeps the whole address the parcel goes to. The warehouse ships only what was
//! confirmed: `OrderConfirmed` on `orders.events` (the payment captured) releases a shipment,
//! and shipping one that was not is `409`.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use mainstay_auth::Validator;
use shop_common::store::{Database, StoreError, Tx};
use shop_messaging::contracts::{
    Address, CancelShipment, CreateShipment, ORDERS_EVENTS, OrderConfirmed, SHIPPING_COMMANDS,
    ShipmentCancelled, ShipmentCreated, ShipmentRejected, ShipmentRejection, check_order_id,
};
use shop_messaging::saga::{self, Participant, Reply};
use shop_messaging::{ConsumerConfig, HandleError, Handler, Inbound, Outcome, Poison, SagaRef};

pub use self::api::router;
pub use self::config::ShippingConfig;
use self::store::ShipmentStore;

/// The most items one shipment may carry.
pub const MAX_ITEMS: u32 = 1_000;

/// What shipping `items` items to `country` costs, in minor units: 4.99, and 1.00 per item
/// after the first, doubled outside the EU.
#[must_use]
pub fn quote(items: u32, country: &str) -> i64 {
    const EU: [&str; 27] = [
        "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
        "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
    ];
    let base = 499 + 100 * i64::from(items.saturating_sub(1));
    if EU.contains(&country) {
        base
    } else {
        base * 2
    }
}

/// Whether `country` is an ISO 3166-1 alpha-2 code's shape.
#[must_use]
pub fn country_ok(country: &str) -> bool {
    country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())
}

/// The service's state.
#[derive(Clone)]
pub struct Shipping(Arc<Inner>);

struct Inner {
    store: ShipmentStore,
    undeliverable: Vec<String>,
    validator: Validator,
}

impl std::fmt::Debug for Shipping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping")
            .field("undeliverable", &self.0.undeliverable)
            .finish_non_exhaustive()
    }
}

impl Shipping {
    /// Opens the store (and the backbone's tables beside it). Admin routes trust tokens
    /// `validator` accepts.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn start(
        config: &ShippingConfig,
        database: &Database,
        validator: Validator,
    ) -> Result<Self, StoreError> {
        let store = ShipmentStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        Ok(Self(Arc::new(Inner {
            store,
            undeliverable: config.undeliverable.clone(),
            validator,
        })))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &ShipmentStore {
        &self.0.store
    }

    /// The consumer of the saga's commands: `shipping` on [`SHIPPING_COMMANDS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("shipping", &[SHIPPING_COMMANDS])
    }

    /// The handler of those commands: each saga step carried out once, and replied to.
    #[must_use]
    pub fn participant(&self) -> saga::Steps<ShipmentParticipant> {
        saga::Steps::new("shipping", ShipmentParticipant(self.clone()))
    }

    /// The consumer of the orders' events: `shipping-orders` on [`ORDERS_EVENTS`].
    #[must_use]
    pub fn confirmations_config() -> ConsumerConfig {
        ConsumerConfig::new("shipping-orders", &[ORDERS_EVENTS])
    }

    /// The handler of those events: an `OrderConfirmed` releases its shipment to the
    /// warehouse (before it, the order's payment may still fail, and nothing may leave).
    #[must_use]
    pub fn confirmations(&self) -> Confirmations {
        Confirmations(())
    }
}

/// Marks shipments whose orders were confirmed (see [`Shipping::confirmations`]).
#[derive(Debug, Clone)]
pub struct Confirmations(());

#[async_trait]
impl Handler for Confirmations {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        if !message.is::<OrderConfirmed>() {
            return Ok(Outcome::Ack);
        }
        let confirmed: OrderConfirmed = message.decode()?;
        check_order_id(&confirmed.order_id)?;
        if !ShipmentStore::confirm(tx, &confirmed.order_id).await? {
            tracing::debug!(order_id = %confirmed.order_id, "a confirmation with nothing to mark");
        }
        Ok(Outcome::Ack)
    }
}

/// The shipping side of the checkout saga (see the crate's documentation).
#[derive(Debug, Clone)]
pub struct ShipmentParticipant(Shipping);

fn address_ok(address: &Address) -> Result<(), Poison> {
    let fields = [
        ("name", &address.name, 100),
        ("line1", &address.line1, 200),
        ("city", &address.city, 100),
        ("postcode", &address.postcode, 16),
    ];
    for (field, value, most) in fields {
        if value.trim().is_empty() || value.len() > most || value.chars().any(char::is_control) {
            return Err(Poison(format!(
                "an address {field} of {} bytes (1 to {most}, no control characters)",
                value.len()
            )));
        }
    }
    if !country_ok(&address.country) {
        return Err(Poison(
            "a country that is not an ISO 3166-1 alpha-2 code".to_owned(),
        ));
    }
    Ok(())
}

impl ShipmentParticipant {
    async fn create(&self, tx: &mut Tx, command: CreateShipment) -> Result<Reply, HandleError> {
        check_order_id(&command.order_id)?;
        address_ok(&command.address)?;
        if !(1..=MAX_ITEMS).contains(&command.items) {
            return Err(Poison(format!("{} items (1 to {MAX_ITEMS})", command.items)).into());
        }
        let order_id = command.order_id;
        let existing = match ShipmentStore::get_in(tx, &order_id).await? {
            Some(shipment) => shipment,
            None => {
                let address = &command.address;
                let undeliverable = self.0.0.undeliverable.contains(&address.postcode);
                let status = if undeliverable { "REJECTED" } else { "CREATED" };
                let cost = quote(command.items, &address.country);
                let recorded =
                    ShipmentStore::record(tx, &order_id, status, cost, Some(address)).await?;
                match recorded {
                    Some(shipment) => shipment,
                    // Another transaction recorded one meanwhile (a cancel that came first).
                    None => ShipmentStore::get_in(tx, &order_id).await?.ok_or_else(|| {
                        HandleError::Transient("the shipment was recorded meanwhile".into())
                    })?,
                }
            }
        };
        let rejected = |reason| {
            Reply::of(&ShipmentRejected {
                order_id: order_id.clone(),
                reason,
            })
        };
        Ok(match existing.status.as_str() {
            "REJECTED" => rejected(ShipmentRejection::Undeliverable)?,
            "CANCELLED" => rejected(ShipmentRejection::Cancelled)?,
            _ => Reply::of(&ShipmentCreated {
                order_id: order_id.clone(),
                shipment_id: existing.shipment_id,
                tracking_id: existing.tracking_id,
                cost_minor: existing.cost_minor,
            })?,
        })
    }

    async fn cancel(&self, tx: &mut Tx, order_id: String) -> Result<Reply, HandleError> {
        check_order_id(&order_id)?;
        // Claimed first: a booking of this order in flight is waited for, then cancelled; with
        // none, the claim refuses a late booking.
        let claimed = ShipmentStore::record(tx, &order_id, "CANCELLED", 0, None)
            .await?
            .is_some();
        let cancelled =
            !claimed && ShipmentStore::moved(tx, &order_id, "CREATED", "CANCELLED", false).await?;
        Ok(Reply::of(&ShipmentCancelled {
            order_id,
            cancelled,
        })?)
    }
}

#[async_trait]
impl Participant for ShipmentParticipant {
    async fn execute(
        &self,
        command: &Inbound,
        _: &SagaRef,
        tx: &mut Tx,
    ) -> Result<Reply, HandleError> {
        if command.is::<CreateShipment>() {
            self.create(tx, command.decode()?).await
        } else if command.is::<CancelShipment>() {
            let cancel: CancelShipment = command.decode()?;
            self.cancel(tx, cancel.order_id).await
        } else {
            Err(Poison(format!(
                "{} is not a shipping command",
                command.envelope.kind
            ))
            .into())
        }
    }
}

/// The the shipping service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: ShippingConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Shipping)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let shipping = Shipping::start(&config, &service.database, validator.clone())
        .await
        .map_err(std::io::Error::other)?;
    service.consume(Shipping::consumer_config(), shipping.participant());
    service.consume(Shipping::confirmations_config(), shipping.confirmations());
    let (kit, app) = service.launch(router(shipping.clone()), validator);
    Ok((kit, app, shipping))
}
