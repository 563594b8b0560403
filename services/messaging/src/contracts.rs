//! The messages services exchange: their names, versions, subjects and keys, in one place
//! (ARCHITECTURE.md §4). A producer enqueues one; a consumer decodes it with
//! [`Inbound::decode`](crate::Inbound::decode).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// The catalog's events.
pub const CATALOG_EVENTS: &str = "catalog.events";

/// A product's price changed (written by the catalog in the transaction of the change). Caches
/// of the product drop it; carts show the new price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPriceChanged {
    /// The product.
    pub product_id: String,
    /// The price before, in minor units of `currency`.
    pub old_price_minor: i64,
    /// The price now, in minor units of `currency`.
    pub new_price_minor: i64,
    /// ISO 4217 code of the price now.
    pub currency: String,
    /// The product's version after the change.
    pub version: i64,
}

impl Message for ProductPriceChanged {
    const KIND: &'static str = "ProductPriceChanged";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(CATALOG_EVENTS)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.product_id)
    }
}

/// Product views, counted by the catalog: a batch every few seconds, never a message per view
/// (a subject of its own, so that the caches that drop everything on a [`CATALOG_EVENTS`]
/// message are not emptied by them).
pub const CATALOG_VIEWS: &str = "catalog.views";

/// The most products one [`ProductsViewed`] batch counts.
pub const MAX_VIEWED_PRODUCTS: usize = 1_000;

/// The most (user, product) pairs one [`ProductsViewed`] batch names.
pub const MAX_VIEWERS: usize = 1_000;

/// How often one product was viewed in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductViews {
    /// The product.
    pub product_id: String,
    /// How many views.
    pub count: u32,
}

/// A signed-in user viewed a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewer {
    /// Who.
    pub user_id: String,
    /// What.
    pub product_id: String,
    /// When (the last view in the batch), in milliseconds since the epoch.
    pub viewed_at_ms: i64,
}

/// The views one catalog replica served between `from_ms` and `to_ms` (at most
/// [`MAX_VIEWED_PRODUCTS`] products and [`MAX_VIEWERS`] viewers; what did not fit was dropped,
/// and counted in `dropped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductsViewed {
    /// The batch (its key: batches are independent of one another).
    pub batch_id: String,
    /// The first view's time, in milliseconds since the epoch.
    pub from_ms: i64,
    /// The last view's time, in milliseconds since the epoch.
    pub to_ms: i64,
    /// Views per product.
    pub views: Vec<ProductViews>,
    /// Which signed-in users viewed what.
    pub viewers: Vec<Viewer>,
    /// Views that did not fit the batch.
    pub dropped: u64,
}

impl Message for ProductsViewed {
    const KIND: &'static str = "ProductsViewed";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(CATALOG_VIEWS)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.batch_id)
    }
}

/// The users service's events.
pub const USERS_EVENTS: &str = "users.events";

/// The notifications service's commands: the mails other services ask it to send.
pub const NOTIFICATIONS_COMMANDS: &str = "notifications.commands";

/// The [`Message`] of each type: its kind is the type's name, its key the field `$key` (the
/// aggregate's id: an account, an order), so that one aggregate's messages keep their order.
macro_rules! keyed_messages {
    ($key:ident: $($message:ident on $subject:expr),* $(,)?) => {
        $(
            impl Message for $message {
                const KIND: &'static str = stringify!($message);
                const VERSION: u16 = 1;

                fn subject(&self) -> Cow<'static, str> {
                    Cow::Borrowed($subject)
                }

                fn key(&self) -> Cow<'_, str> {
                    Cow::Borrowed(&self.$key)
                }
            }
        )*
    };
}

keyed_messages!(
    user_id:
    UserRegistered on USERS_EVENTS,
    AddressClaimAttempted on USERS_EVENTS,
    EmailChangeRequested on USERS_EVENTS,
    EmailChanged on USERS_EVENTS,
    SendEmailConfirmation on NOTIFICATIONS_COMMANDS,
);

/// A new account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// The account's id.
    pub user_id: String,
    /// Its email address.
    pub email: String,
    /// Its name.
    pub name: String,
}

/// How an address was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimedBy {
    /// A registration with the address.
    Registration,
    /// Another account asked to move to the address.
    EmailChange,
}

/// Someone tried to register with, or move another account to, an address that already has an
/// account: mail its owner (who may have forgotten the account, or may be targeted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressClaimAttempted {
    /// The account that owns the address.
    pub user_id: String,
    /// The address.
    pub email: String,
    /// How it was claimed.
    pub by: ClaimedBy,
}

/// An account asked to change its email to a free address, pending confirmation. (Neither
/// the address nor the token: the mailer gets those in [`SendEmailConfirmation`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChangeRequested {
    /// The account.
    pub user_id: String,
    /// Unix seconds after which the change can no longer be confirmed.
    pub expires_at: i64,
}

/// A command on [`NOTIFICATIONS_COMMANDS`]: mail `email` the token that confirms the change
/// (`POST /email/confirm`).
///
/// The token is a secret of that mailbox, and this command rests in the users service's
/// outbox and in the broker's stream, where others can read. So it travels **sealed**
/// (`shop_common::seal`) with the mail key (`MAIL_TOKEN_KEY`) that the users service and the
/// mailer share, in the context [`SendEmailConfirmation::seal_context`]: only the mailer opens
/// it, and only for this account and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmailConfirmation {
    /// The account.
    pub user_id: String,
    /// The new address, to mail.
    pub email: String,
    /// The confirmation token, sealed (unpadded base64url).
    pub sealed_token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

impl SendEmailConfirmation {
    /// The context the token is sealed in: the account and the address, so that a sealed
    /// token cannot be moved to another mail.
    #[must_use]
    pub fn seal_context(user_id: &str, email: &str) -> Vec<u8> {
        format!("SendEmailConfirmation\n{user_id}\n{email}").into_bytes()
    }
}

/// An account's email changed (confirmed by the new address's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChanged {
    /// The account.
    pub user_id: String,
    /// The new address.
    pub email: String,
}

/// The longest order id a saga message may carry, in bytes.
pub const MAX_ORDER_ID: usize = 128;

/// Checks an order id a saga message carries: 1 to [`MAX_ORDER_ID`] bytes, no control
/// characters (PostgreSQL refuses a NUL in text: the message could never be handled).
///
/// # Errors
///
/// [`Poison`](crate::Poison): the message can never be handled.
pub fn check_order_id(order_id: &str) -> Result<(), crate::Poison> {
    if (1..=MAX_ORDER_ID).contains(&order_id.len()) && !order_id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(crate::Poison(format!(
            "an order id of {} bytes (1 to {MAX_ORDER_ID}, no control characters)",
            order_id.len()
        )))
    }
}

/// The inventory's commands: the checkout saga's steps on stock.
pub const INVENTORY_COMMANDS: &str = "inventory.commands";

/// The inventory's events.
pub const INVENTORY_EVENTS: &str = "inventory.events";

keyed_messages!(
    order_id:
    ReserveStock on INVENTORY_COMMANDS,
    ReleaseStock on INVENTORY_COMMANDS,
    CommitStock on INVENTORY_COMMANDS,
    ReturnStock on INVENTORY_COMMANDS,
    StockReserved on crate::saga::REPLIES,
    StockRejected on crate::saga::REPLIES,
    StockReleased on crate::saga::REPLIES,
    StockCommitted on crate::saga::REPLIES,
    StockReturned on crate::saga::REPLIES,
    ReservationExpired on INVENTORY_EVENTS,
);

/// One line of a reservation: a quantity of one stock-keeping unit (the catalog's product id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Holds every line of an order, or none: answered [`StockReserved`] or [`StockRejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    /// The order.
    pub order_id: String,
    /// What it takes.
    pub lines: Vec<StockLine>,
    /// How long the hold lasts unless committed, in milliseconds: past it, the inventory's
    /// sweeper releases it ([`ReservationExpired`]). Longer than the saga's deadline.
    pub hold_ms: u64,
}

/// Gives back what an order holds (a compensation): answered [`StockReleased`], also when it
/// holds nothing. A hold released before it was made refuses the reservation that comes later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    /// The order.
    pub order_id: String,
}

/// Takes what an order holds out of stock for good (after the payment's capture, the pivot):
/// answered [`StockCommitted`]. Retried until it succeeds; it cannot be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStock {
    /// The order.
    pub order_id: String,
}

/// Puts what an order took for good back on hand (a refunded order whose parcel never left):
/// answered [`StockReturned`], also when there is nothing to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnStock {
    /// The order.
    pub order_id: String,
}

/// Every line of the order is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The order.
    pub order_id: String,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockRejection {
    /// A line asks for more than is available (the lines are in [`StockRejected::short`]).
    OutOfStock,
    /// The order's hold was released (or expired) before this reservation came.
    Released,
}

/// Nothing of the order is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: StockRejection,
    /// The products there are too few of (for [`StockRejection::OutOfStock`]).
    pub short: Vec<String>,
}

/// The order holds nothing (any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    /// The order.
    pub order_id: String,
    /// Whether a hold was given back now (false: there was none, it was released before, or
    /// it was committed, in which case only a restock gives the stock back).
    pub released: bool,
}

/// What the order held is out of stock for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {
    /// The order.
    pub order_id: String,
}

/// What the order took is back on hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReturned {
    /// The order.
    pub order_id: String,
    /// Whether stock was put back now (false: it was before, or the order never took any).
    pub returned: bool,
}

/// The inventory's sweeper released an order's hold that outlived its `hold_ms` (its saga
/// died, or is late): the orchestrator treats the order's stock as gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationExpired {
    /// The order.
    pub order_id: String,
}

/// The payments service's commands: the checkout saga's steps on money.
pub const PAYMENTS_COMMANDS: &str = "payments.commands";

keyed_messages!(
    order_id:
    CapturePayment on PAYMENTS_COMMANDS,
    VoidPayment on PAYMENTS_COMMANDS,
    RefundPayment on PAYMENTS_COMMANDS,
    PaymentAuthorized on crate::saga::REPLIES,
    PaymentDeclined on crate::saga::REPLIES,
    PaymentCaptured on crate::saga::REPLIES,
    CaptureFailed on crate::saga::REPLIES,
    PaymentVoided on crate::saga::REPLIES,
    PaymentRefunded on crate::saga::REPLIES,
);

/// Authorises an order's amount on a card: answered [`PaymentAuthorized`] or
/// [`PaymentDeclined`]. The provider is asked under the key `<order_id>:authorize`, so that
/// asking again after a lost answer cannot authorise twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    /// The order.
    pub order_id: String,
    /// The amount, in minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The card (a test card number on this system; a provider's token in a real one),
    /// sealed by [`seal_card`] for the payments service alone: the outbox, the broker and a
    /// dead letter never hold it in clear.
    pub sealed_card: String,
}

/// Version 2: the card travels sealed (`sealed_card`); version 1 carried it in clear as
/// `card`. A payments service that reads version 1 refuses a version 2 command as newer than
/// it reads (a dead letter that says so) rather than failing to find `card`; this one refuses
/// a version 1 command, whose body lacks `sealed_card`, as poison: a card in clear is not
/// taken from the bus any more.
impl Message for AuthorizePayment {
    const KIND: &'static str = "AuthorizePayment";
    const VERSION: u16 = 2;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(PAYMENTS_COMMANDS)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.order_id)
    }
}

/// The file the card key is kept in when `CARD_SEAL_KEY` is not set, in the working directory,
/// created on first start: orders seals the card with it, payments opens it, so both must
/// read the same key (the one-process system hands both the same file).
pub const CARD_KEY_FILE: &str = "card-seal.key";

/// The longest card a checkout accepts, in bytes; [`AuthorizePayment::sealed_card`] is at most
/// [`MAX_SEALED_CARD`].
pub const MAX_CARD: usize = 19;

/// The longest sealed card: the nonce, the card and the tag, as unpadded base64url.
pub const MAX_SEALED_CARD: usize = (12 + MAX_CARD + 16).div_ceil(3) * 4;

/// `card` sealed with `key` for the order `order_id` (it opens for that order alone).
#[must_use]
pub fn seal_card(key: &shop_common::seal::SealKey, order_id: &str, card: &str) -> String {
    key.seal_text(card.as_bytes(), order_id.as_bytes())
}

/// What [`seal_card`] sealed for `order_id`.
///
/// # Errors
///
/// Sealed with another key or for another order, altered, or not a card.
pub fn open_card(
    key: &shop_common::seal::SealKey,
    order_id: &str,
    sealed: &str,
) -> Result<String, shop_common::seal::SealError> {
    let plain = key.open_text(sealed, order_id.as_bytes())?;
    String::from_utf8(plain).map_err(|_| shop_common::seal::SealError::Unopenable)
}

/// Captures what was authorised for an order (the saga's pivot): answered [`PaymentCaptured`],
/// or [`CaptureFailed`] when it can never succeed (the authorisation expired or was voided). A
/// provider that is down has it retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    /// The order.
    pub order_id: String,
}

/// Gives an authorisation up (a compensation): answered [`PaymentVoided`], also when there is
/// nothing to void. A void before its authorisation arrives refuses that authorisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidPayment {
    /// The order.
    pub order_id: String,
}

/// Gives a captured payment back (an order cancelled after it was paid): answered
/// [`PaymentRefunded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    /// The order.
    pub order_id: String,
}

/// The amount is authorised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    /// The order.
    pub order_id: String,
    /// The payment.
    pub payment_id: String,
}

/// Why a payment was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeclineReason {
    /// The card's issuer said no.
    Declined,
    /// Not a card number.
    InvalidCard,
    /// The order's payment was voided before this authorisation came.
    Voided,
}

/// The amount is not authorised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: DeclineReason,
}

/// The money is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    /// The order.
    pub order_id: String,
    /// The payment.
    pub payment_id: String,
    /// What was captured, in minor units.
    pub amount_minor: i64,
}

/// The capture can never succeed: the order must be compensated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFailed {
    /// The order.
    pub order_id: String,
    /// Why (the authorisation expired, was voided, or never was).
    pub reason: String,
}

/// The order holds no authorisation (any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {
    /// The order.
    pub order_id: String,
    /// Whether an authorisation was voided now (false: there was none, or it was captured, in
    /// which case only a refund gives the money back).
    pub voided: bool,
}

/// The captured money is given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: String,
    /// What was refunded, in minor units (0: nothing was captured).
    pub amount_minor: i64,
}

/// The shipping service's commands: the checkout saga's steps on delivery.
pub const SHIPPING_COMMANDS: &str = "shipping.commands";

/// The shipping service's events: what became of a shipment.
pub const SHIPPING_EVENTS: &str = "shipping.events";

keyed_messages!(
    order_id:
    CreateShipment on SHIPPING_COMMANDS,
    CancelShipment on SHIPPING_COMMANDS,
    ShipmentCreated on crate::saga::REPLIES,
    ShipmentRejected on crate::saga::REPLIES,
    ShipmentCancelled on crate::saga::REPLIES,
    OrderShipped on SHIPPING_EVENTS,
    OrderDelivered on SHIPPING_EVENTS,
);

/// Where an order goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Who receives it.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postcode: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// Books a shipment of an order's items to an address: answered [`ShipmentCreated`] or, for an
/// address the carrier does not deliver to, [`ShipmentRejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateShipment {
    /// The order.
    pub order_id: String,
    /// Where to.
    pub address: Address,
    /// How many items.
    pub items: u32,
}

/// Cancels an order's shipment (a compensation): answered [`ShipmentCancelled`], also when
/// there is none. A cancel before its shipment is booked refuses that booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelShipment {
    /// The order.
    pub order_id: String,
}

/// The shipment is booked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCreated {
    /// The order.
    pub order_id: String,
    /// The shipment.
    pub shipment_id: String,
    /// The carrier's tracking number.
    pub tracking_id: String,
    /// What it costs, in minor units.
    pub cost_minor: i64,
}

/// Why a shipment was not booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentRejection {
    /// The carrier does not deliver there.
    Undeliverable,
    /// The order's shipment was cancelled before this booking came.
    Cancelled,
}

/// The shipment is not booked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRejected {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: ShipmentRejection,
}

/// The order has no booked shipment (any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCancelled {
    /// The order.
    pub order_id: String,
    /// Whether a booked shipment was cancelled now (false: there was none, or it has left).
    pub cancelled: bool,
}

/// The order's parcel left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// The order.
    pub order_id: String,
    /// The carrier's tracking number.
    pub tracking_id: String,
}

/// The order's parcel was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDelivered {
    /// The order.
    pub order_id: String,
}

/// The carts service's events.
pub const CARTS_EVENTS: &str = "carts.events";

keyed_messages!(
    user_id:
    CartStarted on CARTS_EVENTS,
);

/// An empty cart got its first line (for the cart → order conversion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartStarted {
    /// Whose cart.
    pub user_id: String,
    /// When, in milliseconds since the epoch.
    pub started_at_ms: i64,
}

/// The notifications service's events: what became of a notification (for analytics and the
/// ops console: sends per channel, and the dead letters' depth).
pub const NOTIFICATIONS_EVENTS: &str = "notifications.events";

keyed_messages!(
    notification_id:
    NotificationSent on NOTIFICATIONS_EVENTS,
    NotificationDead on NOTIFICATIONS_EVENTS,
);

keyed_messages!(
    channel:
    NotificationsReplayed on NOTIFICATIONS_EVENTS,
);

/// A notification was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSent {
    /// The notification.
    pub notification_id: String,
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// What it told (`order_confirmed`, …).
    pub kind: String,
    /// After how many failed attempts.
    pub attempts: i32,
    /// When, in milliseconds since the epoch.
    pub sent_at_ms: i64,
}

/// A notification's attempts ran out, or it can never be sent: it is a dead letter until an
/// admin replays its channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDead {
    /// The notification.
    pub notification_id: String,
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// What it told.
    pub kind: String,
    /// Its failed attempts.
    pub attempts: i32,
    /// When, in milliseconds since the epoch.
    pub dead_at_ms: i64,
}

/// An admin replayed a channel's dead letters: `count` of them are queued again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsReplayed {
    /// `email`, `sms` or `push`.
    pub channel: String,
    /// How many.
    pub count: u64,
    /// When, in milliseconds since the epoch.
    pub replayed_at_ms: i64,
}

/// The orders service's events: what became of an order.
pub const ORDERS_EVENTS: &str = "orders.events";

keyed_messages!(
    order_id:
    OrderPlaced on ORDERS_EVENTS,
    OrderConfirmed on ORDERS_EVENTS,
    OrderRejected on ORDERS_EVENTS,
    OrderCancelled on ORDERS_EVENTS,
);

/// One line of an order, priced by the catalog when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// The catalog's price of one when the order was placed, in minor units.
    pub unit_price_minor: i64,
}

/// An order was placed: its checkout saga starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// Its total, in minor units of `currency`.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When, in milliseconds since the epoch.
    pub placed_at_ms: i64,
}

/// An order is paid, its stock taken and its shipment booked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// What it holds.
    pub lines: Vec<OrderLine>,
    /// Its total (what was captured), in minor units of `currency`.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was placed, in milliseconds since the epoch.
    pub placed_at_ms: i64,
}

/// An order's checkout failed; whatever it held was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    /// The order.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// Why: `OUT_OF_STOCK`, `PAYMENT_DECLINED`, `PAYMENT_TIMEOUT`, `UNDELIVERABLE`,
    /// `INVENTORY_TIMEOUT`, `SHIPPING_TIMEOUT` or `CAPTURE_FAILED`.
    pub reason: String,
    /// When it was placed, in milliseconds since the epoch.
    pub placed_at_ms: i64,
}

/// An order was cancelled by its owner; whatever it held or paid was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Whose.
    pub user_id: String,
    /// What was refunded, in minor units (0 when it was cancelled before it was paid).
    pub refunded_minor: i64,
}
