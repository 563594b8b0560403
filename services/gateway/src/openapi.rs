//! The `OpenAPI` description of the public API (`/api/v1/openapi.json`) and Swagger UI over it
//! (`/docs`).
//!
//! The gateway proxies most routes, so the operations below are described by functions that
//! are never called: they exist for `utoipa` to read.
#![allow(dead_code, reason = "the functions here only describe proxied routes")]

use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::home::Home;

use shop_common::PROBLEM_JSON;

/// An RFC 9457 problem: every error of the API, with extension members where a problem type
/// has them (`errors`, `service`). The schema of `mainstay_problem::Problem`, which writes every
/// error of the system (a test below holds the two together).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong with this request.
    detail: Option<String>,
    /// A URI naming this occurrence.
    instance: Option<String>,
}

/// A new account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    /// The account's email address.
    #[schema(max_length = 254)]
    email: String,
    /// The password: 12 to 128 characters.
    #[schema(min_length = 12, max_length = 128)]
    password: String,
    /// The name shown on the account: 1 to 100 characters, not all white space.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
}

/// What every registration is answered, whether or not the email was free.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Registered {
    /// Always `accepted`.
    status: String,
    /// What to do next.
    detail: String,
}

/// Credentials.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    /// The account's email address.
    #[schema(max_length = 254)]
    email: String,
    /// The password.
    #[schema(max_length = 128)]
    password: String,
}

/// A refresh token, exchanged once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The refresh token of the last login or refresh.
    refresh_token: String,
}

/// An account as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct User {
    /// Its id.
    id: String,
    /// Its email address.
    email: String,
    /// Its name.
    name: String,
    /// `customer` or `admin`.
    role: String,
    /// Unix seconds.
    created_at: i64,
    /// A new email waiting for its confirmation by the address's owner (`PATCH /me` only).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_email: Option<String>,
}

/// The token mailed to a new address, confirming an email change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailConfirmation {
    /// The token, as mailed.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    token: String,
}

/// A change to the caller's profile: at least one field.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub(crate) struct ProfileChange {
    /// A new name: 1 to 100 characters, not all white space.
    #[schema(nullable = false, min_length = 1, max_length = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// A new email address: it applies once the address's owner confirms it
    /// (`/api/v1/auth/email/confirm`, with the token mailed there).
    #[schema(nullable = false, max_length = 254)]
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
}

/// A page of accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct UserPage {
    /// The accounts of this page.
    items: Vec<User>,
    /// Accounts in all.
    total: i64,
}

/// Tokens issued at login and refresh.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Tokens {
    /// A JWT for `Authorization: Bearer`.
    access_token: String,
    /// Exchanged once for new tokens at `/api/v1/auth/token/refresh`.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until the access token expires.
    expires_in: u64,
}

/// A product.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Product {
    /// Its id (a slug).
    id: String,
    /// Its name.
    name: String,
    /// A sentence or two about it.
    description: String,
    /// Its category's id.
    category_id: String,
    /// Its price in minor units of `currency`.
    price_minor: i64,
    /// ISO 4217 currency code.
    currency: String,
    /// Incremented by every change (the `ETag` is `"<id>-<version>"`).
    version: i64,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds.
    updated_at: i64,
}

/// A product to create or replace (admin).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductInput {
    /// Its id (a slug of 1 to 64 lower-case letters, digits and hyphens); on creation, one is
    /// made when it is missing.
    #[schema(nullable = false, pattern = "^[a-z0-9-]{1,64}$")]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Its name: 1 to 200 characters, not all white space.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// At most 5,000 characters.
    #[schema(max_length = 5000)]
    description: String,
    /// An existing category's id.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    category_id: String,
    /// Its price in minor units, from 0 to 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    price_minor: i64,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
}

/// The orders of a product listing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Sort {
    /// By name, A to Z.
    Name,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// Newest first.
    Newest,
}

/// A page of products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ProductPage {
    /// The products of this page.
    items: Vec<Product>,
    /// Products matching the filters, all pages together.
    total: i64,
    /// The page number, from 1.
    page: i64,
    /// Products per page.
    per_page: i64,
}

/// A line of a checkout: a product and how many. Its price is the catalog's, never the
/// client's.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckoutLine {
    /// The product's id.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    product_id: String,
    /// How many: lines of one product are added up, to at most 100.
    #[schema(minimum = 1, maximum = 100)]
    quantity: u32,
}

/// How many of a product the cart holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CartQuantity {
    /// 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    quantity: u32,
}

/// A line of a cart, priced now by the catalog.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CartLine {
    /// The product's id.
    product_id: String,
    /// How many.
    quantity: u32,
    /// The product's name; `null` while the catalog cannot say.
    name: Option<String>,
    /// The price of one now, in minor units; `null` while the catalog cannot say.
    unit_price_minor: Option<i64>,
    /// The price of the line, in minor units.
    line_total_minor: Option<i64>,
    /// ISO 4217 code.
    currency: Option<String>,
}

/// The caller's cart. Check it out by sending its lines to `POST /api/v1/checkout`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Cart {
    /// One per product, in product order.
    lines: Vec<CartLine>,
    /// The sum of the priced lines, per currency.
    totals: std::collections::BTreeMap<String, i64>,
    /// Products the catalog no longer has (they cannot be ordered).
    unavailable: Vec<String>,
    /// Whether some prices are missing because the catalog did not answer.
    prices_unavailable: bool,
}

/// A message sent (or to be sent) to the caller about an order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Notification {
    /// Its id: the event's and the channel's.
    id: String,
    /// Whose.
    user_id: String,
    /// `email`, `sms` or `push`.
    channel: String,
    /// `order_confirmed`, `order_rejected`, `order_shipped` or `order_delivered`.
    kind: String,
    /// The order it is about.
    order_id: Option<String>,
    /// Its subject.
    subject: String,
    /// Its text.
    body: String,
    /// `QUEUED`, `SENDING`, `SENT` or `DEAD` (its attempts ran out; an admin can replay it).
    status: String,
    /// When it was made, in milliseconds since the epoch.
    created_at_ms: i64,
    /// When it was sent.
    sent_at_ms: Option<i64>,
}

/// A notification whose attempts ran out, as operators see it: with what went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeadNotification {
    /// The notification.
    #[serde(flatten)]
    notification: Notification,
    /// Failed attempts.
    attempts: i32,
    /// Why the last attempt failed.
    last_error: Option<String>,
}

/// The caller's notifications, the newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct NotificationPage {
    /// At most `limit`.
    items: Vec<Notification>,
}

/// The channels a user wants to be told on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotificationPreferences {
    /// E-mail (on by default).
    email: bool,
    /// SMS (off by default).
    sms: bool,
    /// Push messages (on by default).
    push: bool,
}

/// Dead notifications: how many per channel, and the oldest of them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DeadLetters {
    /// By channel: `email`, `sms`, `push`.
    counts: std::collections::BTreeMap<String, i64>,
    /// At most 100, the oldest first.
    items: Vec<DeadNotification>,
}

/// Recommended products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Recommendations {
    /// The products, the best first.
    items: Vec<Product>,
    /// What the first was drawn from: `co-purchase` (bought with the product asked about),
    /// `history` (bought with what the caller bought or viewed lately), `popular` (the most
    /// bought and viewed lately) or `catalog` (the catalog's first page: nothing to rank yet).
    #[schema(pattern = "^(co-purchase|history|popular|catalog)$")]
    basis: String,
}

/// Checkout latency percentiles, in milliseconds (submit → confirmed).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CheckoutLatency {
    /// How many checkouts.
    count: u64,
    /// The median.
    p50: u64,
    /// The 90th percentile.
    p90: u64,
    /// The 95th percentile.
    p95: u64,
    /// The 99th percentile.
    p99: u64,
    /// The slowest.
    max: u64,
}

/// Orders and revenue in one step of a window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AnalyticsPoint {
    /// The step's start, in milliseconds since the epoch.
    at_ms: i64,
    /// Orders confirmed.
    orders: i64,
    /// Revenue by currency, in minor units.
    revenue_minor: std::collections::BTreeMap<String, i64>,
}

/// What the shop did in a window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AnalyticsSummary {
    /// The window, as asked.
    window: String,
    /// Its first minute's start, in milliseconds since the epoch.
    from_ms: i64,
    /// Now.
    to_ms: i64,
    /// Orders by what became of them: `placed`, `confirmed`, `rejected`, `cancelled`.
    orders: std::collections::BTreeMap<String, i64>,
    /// Confirmed orders' revenue by currency, in minor units.
    revenue_minor: std::collections::BTreeMap<String, i64>,
    /// What cancellations refunded, in minor units.
    refunded_minor: i64,
    /// How checkouts ended: `CONFIRMED` or the rejection's reason.
    outcomes: std::collections::BTreeMap<String, i64>,
    /// Payments by what became of them.
    payments: std::collections::BTreeMap<String, i64>,
    /// Parcels `shipped` and `delivered`.
    shipping: std::collections::BTreeMap<String, i64>,
    /// Notifications sent, by channel.
    notifications_sent: std::collections::BTreeMap<String, i64>,
    /// Notifications dead, by channel.
    notifications_dead: std::collections::BTreeMap<String, i64>,
    /// Dead notifications per channel now.
    dead_letters: std::collections::BTreeMap<String, i64>,
    /// Checkout latency of the confirmed orders.
    checkout_latency_ms: CheckoutLatency,
    /// Carts started against orders confirmed (`carts_started`, `orders_confirmed`, `rate`: a
    /// ratio, above 1 when orders came from carts started before the window).
    #[schema(value_type = Object)]
    conversion: serde_json::Value,
    /// Each step's length, in milliseconds.
    step_ms: i64,
    /// Orders and revenue per step, the oldest first.
    series: Vec<AnalyticsPoint>,
}

/// How many dead notifications were queued again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Replayed {
    /// How many.
    replayed: u64,
}

/// A channel's failure knob: while on, every send on the channel fails.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelKnob {
    /// Whether sends fail.
    failing: bool,
}

/// Where an order goes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Address {
    /// Who receives it.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Street and number.
    #[schema(min_length = 1, max_length = 200)]
    line1: String,
    /// City.
    #[schema(min_length = 1, max_length = 100)]
    city: String,
    /// Postal code.
    #[schema(min_length = 1, max_length = 16)]
    postcode: String,
    /// ISO 3166-1 alpha-2 code.
    #[schema(pattern = "^[A-Z]{2}$")]
    country: String,
}

/// A checkout: what to order, where to, and the card to pay with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Checkout {
    /// 1 to 50 products.
    #[schema(min_items = 1)]
    lines: Vec<CheckoutLine>,
    /// Where to.
    shipping_address: Address,
    /// The card number (test cards: `4242424242424242` approves, `4000000000000002` declines,
    /// `4000000000000119` never answers).
    #[schema(pattern = "^[0-9]{12,19}$")]
    card: String,
}

/// An amount of money.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Amount {
    /// Minor units (cents).
    amount_minor: i64,
    /// ISO 4217 code.
    currency: String,
}

/// An order, as lists show it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OrderSummary {
    /// Its id.
    order_id: String,
    /// `PENDING`, `PAYING`, `PAID`, `CONFIRMED`, `SHIPPED`, `DELIVERED`, `REJECTING`,
    /// `REJECTED`, `CANCELLING`, `REFUNDING`, `CANCELLED` or `NEEDS_ATTENTION`.
    status: String,
    /// Why it was rejected or cancelled: `OUT_OF_STOCK`, `PAYMENT_DECLINED`, `PAYMENT_TIMEOUT`,
    /// `UNDELIVERABLE`, `INVENTORY_TIMEOUT`, `SHIPPING_TIMEOUT`, `CAPTURE_FAILED` or
    /// `CANCELLED_BY_USER`.
    reason: Option<String>,
    /// The step of the checkout in progress.
    step: Option<String>,
    /// Its total, as the catalog priced it.
    total: Amount,
    /// What was taken from the card, in minor units.
    captured_minor: i64,
    /// What was given back, in minor units.
    refunded_minor: i64,
    /// The card's last four digits.
    card_last4: String,
    /// How many items.
    items: i64,
    /// Milliseconds since the epoch.
    created_at_ms: i64,
    /// Milliseconds since the epoch.
    updated_at_ms: i64,
}

/// A line of an order, priced when it was placed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OrderLine {
    /// The product.
    product_id: String,
    /// Its name then.
    name: String,
    /// How many.
    quantity: i64,
    /// Its price then, in minor units.
    unit_price_minor: i64,
}

/// A move of an order's checkout.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OrderEvent {
    /// Its place in the history, from 1.
    seq: i64,
    /// Milliseconds since the epoch.
    at_ms: i64,
    /// The status after it.
    status: String,
    /// The step in progress after it.
    step: Option<String>,
    /// What happened.
    note: String,
}

/// An order in full.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Order {
    #[serde(flatten)]
    summary: OrderSummary,
    /// Its lines.
    lines: Vec<OrderLine>,
    /// Where to.
    shipping_address: Address,
    /// Every move of its checkout, oldest first.
    history: Vec<OrderEvent>,
}

/// A page of orders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OrderPage {
    /// The orders of this page, newest first.
    items: Vec<OrderSummary>,
    /// `before` for the next page; `null` on the last.
    next_before: Option<String>,
}

/// A product's stock, as customers see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Stock {
    /// The product.
    sku: String,
    /// How many can be ordered now.
    available: i64,
}

/// A product's stock, as admins see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct StockLevel {
    /// The product.
    sku: String,
    /// On the shelves.
    on_hand: i64,
    /// Held for orders in checkout.
    reserved: i64,
    /// How many can be ordered now.
    available: i64,
}

/// Units put on the shelves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Restock {
    /// How many: 1 to 1 000 000.
    #[schema(minimum = 1, maximum = 1_000_000)]
    quantity: i64,
}

/// Everyone's latest orders, with their step history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct LatestOrders {
    /// The newest first.
    #[schema(value_type = Vec<Object>)]
    items: Vec<serde_json::Value>,
}

/// What shipping costs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Quote {
    /// How many items.
    items: u32,
    /// Where to.
    country: String,
    /// The cost, in minor units.
    cost_minor: i64,
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Registration,
    responses((status = 202, description = "Accepted: the same answer whether or not the email had an account", body = Registered),
              (status = 422, description = "Invalid fields"),
              (status = 429, description = "Too many registrations from this address"),
              (status = 503, description = "Too many registrations at once")))]
fn register() {}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "Signed in", body = Tokens),
              (status = 401, description = "Wrong email or password"),
              (status = 422, description = "Invalid fields"),
              (status = 429, description = "Too many attempts")))]
fn login() {}

#[utoipa::path(post, path = "/api/v1/auth/token/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, description = "New tokens", body = Tokens),
              (status = 401, description = "Unknown, expired or reused refresh token")))]
fn refresh() {}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Signed out")))]
fn logout() {}

#[utoipa::path(get, path = "/api/v1/auth/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The public keys tokens are signed with")))]
fn jwks() {}

#[utoipa::path(get, path = "/api/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller's profile", body = User),
              (status = 401, description = "No valid token")))]
fn me() {}

#[utoipa::path(patch, path = "/api/v1/me", tag = "users", security(("bearer" = [])), request_body = ProfileChange,
    responses((status = 200, description = "The changed profile; a new email is `pending_email` until confirmed, whether or not the address has an account", body = User),
              (status = 401, description = "No valid token"),
              (status = 422, description = "Invalid fields, or nothing to change")))]
fn update_me() {}

#[utoipa::path(post, path = "/api/v1/auth/email/confirm", tag = "auth", request_body = EmailConfirmation,
    responses((status = 200, description = "The profile, with its new email", body = User),
              (status = 400, description = "Not the shape of a token"),
              (status = 404, description = "No email change waits for this token: used, replaced or expired"),
              (status = 409, description = "Another account took the address meanwhile")))]
fn confirm_email() {}

#[utoipa::path(get, path = "/api/v1/admin/users", tag = "users", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 50)"),
           ("offset" = Option<i64>, Query, minimum = 0, description = "Accounts to skip")),
    responses((status = 200, description = "A page of accounts", body = UserPage),
              (status = 400, description = "A bad parameter"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin")))]
fn list_users() {}

#[utoipa::path(post, path = "/api/v1/admin/keys/rotate", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The new signing key's id; the old key is served until its tokens expire"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin")))]
fn rotate_keys() {}

#[utoipa::path(get, path = "/api/v1/products", tag = "catalog",
    params(("page" = Option<i64>, Query, minimum = 1, description = "Page number, from 1"),
           ("per_page" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 20)"),
           ("category" = Option<String>, Query, pattern = "^[a-z0-9-]{1,64}$", description = "Only this category"),
           ("min_price" = Option<i64>, Query, minimum = 0, description = "Lowest price, minor units"),
           ("max_price" = Option<i64>, Query, minimum = 0, description = "Highest price, minor units"),
           ("sort" = Option<Sort>, Query, description = "The order (default `name`)")),
    responses((status = 200, description = "A page of products", body = ProductPage),
              (status = 400, description = "A bad parameter")))]
fn products() {}

#[utoipa::path(post, path = "/api/v1/products", tag = "catalog", security(("bearer" = [])), request_body = ProductInput,
    responses((status = 201, description = "Created", body = Product),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 409, description = "A product with this id exists, or there is no such category"),
              (status = 422, description = "Invalid fields")))]
fn create_product() {}

#[utoipa::path(get, path = "/api/v1/products/search", tag = "catalog",
    params(("q" = String, Query, min_length = 1, max_length = 100, description = "Words to search for (1 to 100 characters, not all white space, no control characters)"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 50, description = "1 to 50 (default 20)")),
    responses((status = 200, description = "Matching products"),
              (status = 400, description = "No usable search text, or a bad limit")))]
fn search() {}

#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 200, description = "The product", body = Product),
              (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
              (status = 404, description = "No such product")))]
fn product() {}

#[utoipa::path(post, path = "/api/v1/product-views/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 202, description = "The view is counted, and announced to recommendations within seconds (a signed-in caller's repeated views of one product count once per batch of a few seconds; views weigh little against orders, and at most two orders' worth a product an hour)"),
              (status = 401, description = "A token that is not valid (none is needed)"),
              (status = 404, description = "No such product")))]
fn view_product() {}

#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "catalog", security(("bearer" = [])), request_body = ProductInput,
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 200, description = "Replaced", body = Product),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 404, description = "No such product"),
              (status = 409, description = "The body's id is not the path's, or there is no such category"),
              (status = 422, description = "Invalid fields")))]
fn replace_product() {}

#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 204, description = "Deleted"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 404, description = "No such product")))]
fn delete_product() {}

#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog",
    responses((status = 200, description = "Every category, with its product count")))]
fn categories() {}

#[utoipa::path(get, path = "/api/v1/cart", tag = "carts", security(("bearer" = [])),
    responses((status = 200, description = "The caller's cart, each line at the catalog's price now", body = Cart),
              (status = 401, description = "No valid token")))]
fn cart() {}

#[utoipa::path(delete, path = "/api/v1/cart", tag = "carts", security(("bearer" = [])),
    responses((status = 204, description = "The cart is empty"),
              (status = 401, description = "No valid token")))]
fn clear_cart() {}

#[utoipa::path(put, path = "/api/v1/cart/items/{product_id}", tag = "carts", security(("bearer" = [])),
    params(("product_id" = String, Path, description = "The product", pattern = "^[a-z0-9-]{1,64}$")),
    request_body = CartQuantity,
    responses((status = 200, description = "The cart, with the product at that quantity", body = Cart),
              (status = 400, description = "Not a product id"),
              (status = 401, description = "No valid token"),
              (status = 422, description = "A quantity out of range, a product the catalog does not have, or a cart already holding 50 other products"),
              (status = 503, description = "The catalog cannot say now whether the product exists")))]
fn set_cart_item() {}

#[utoipa::path(delete, path = "/api/v1/cart/items/{product_id}", tag = "carts", security(("bearer" = [])),
    params(("product_id" = String, Path, description = "The product", pattern = "^[a-z0-9-]{1,64}$")),
    responses((status = 200, description = "The cart without the product", body = Cart),
              (status = 400, description = "Not a product id"),
              (status = 401, description = "No valid token"),
              (status = 404, description = "The cart does not hold the product")))]
fn remove_cart_item() {}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "At most this many (default 20)")),
    responses((status = 200, description = "The caller's notifications, the newest first", body = NotificationPage),
              (status = 400, description = "A limit out of range"),
              (status = 401, description = "No valid token")))]
fn notifications() {}

#[utoipa::path(get, path = "/api/v1/notifications/preferences", tag = "notifications", security(("bearer" = [])),
    responses((status = 200, description = "The channels the caller is told on", body = NotificationPreferences),
              (status = 401, description = "No valid token")))]
fn notification_preferences() {}

#[utoipa::path(put, path = "/api/v1/notifications/preferences", tag = "notifications", security(("bearer" = [])),
    request_body = NotificationPreferences,
    responses((status = 200, description = "The channels, as set", body = NotificationPreferences),
              (status = 400, description = "Not three booleans"),
              (status = 401, description = "No valid token"),
              (status = 422, description = "Not three booleans")))]
fn set_notification_preferences() {}

#[utoipa::path(get, path = "/api/v1/admin/notifications/dead-letters", tag = "notifications", security(("bearer" = [])),
    params(("channel" = Option<String>, Query, pattern = "^(email|sms|push)$", description = "Only this channel's"),
           ("limit" = Option<u32>, Query, minimum = 0, maximum = 100, description = "At most this many items (default 100; 0: the counts alone)")),
    responses((status = 200, description = "The dead notifications", body = DeadLetters),
              (status = 400, description = "Not a channel, or a limit out of range"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin")))]
fn dead_notifications() {}

#[utoipa::path(post, path = "/api/v1/admin/notifications/dead-letters/replay", tag = "notifications", security(("bearer" = [])),
    params(("channel" = Option<String>, Query, pattern = "^(email|sms|push)$", description = "Only this channel's")),
    responses((status = 200, description = "The dead notifications are queued again, their attempts reset", body = Replayed),
              (status = 400, description = "Not a channel"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin")))]
fn replay_notifications() {}

#[utoipa::path(put, path = "/api/v1/admin/notifications/channels/{channel}", tag = "notifications", security(("bearer" = [])),
    params(("channel" = String, Path, pattern = "^(email|sms|push)$", description = "The channel")),
    request_body = ChannelKnob,
    responses((status = 200, description = "The knob, as set", body = ChannelKnob),
              (status = 400, description = "Not a knob"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 404, description = "No such channel"),
              (status = 422, description = "Not a knob")))]
fn notification_knob() {}

#[utoipa::path(get, path = "/api/v1/recommendations", tag = "recommendations",
    params(("product" = Option<String>, Query, pattern = "^[a-z0-9-]{1,64}$", description = "What was bought with this product"),
           ("category" = Option<String>, Query, pattern = "^[a-z0-9-]{1,64}$", description = "Only products of this category"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 20, description = "At most this many (default 8)")),
    responses((status = 200, description = "Picks: with `product`, bought with it; signed in, from the caller's history; otherwise the most popular. A short list is filled from the popular, then the catalog", body = Recommendations),
              (status = 400, description = "A bad id or a limit out of range"),
              (status = 401, description = "A token that is not valid (none is needed)"),
              (status = 503, description = "Nothing can be recommended now (the catalog is down and nothing is cached)")))]
fn recommendations() {}

#[utoipa::path(get, path = "/api/v1/recommendations/me", tag = "recommendations", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 20, description = "At most this many (default 8)")),
    responses((status = 200, description = "Picks from the caller's history, filled from the popular", body = Recommendations),
              (status = 400, description = "A limit out of range"),
              (status = 401, description = "No valid token"),
              (status = 503, description = "Nothing can be recommended now")))]
fn my_recommendations() {}

#[utoipa::path(get, path = "/api/v1/admin/analytics/summary", tag = "analytics", security(("bearer" = [])),
    params(("window" = Option<String>, Query, pattern = "^([1-9][0-9]{0,3}m|100[0-7][0-9]m|10080m|([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|[1-7]d)$", description = "The last `15m`, `1h`, `24h`, `7d` (default `1h`; at most the retention, 7 days by default)")),
    responses((status = 200, description = "What the shop did in the window", body = AnalyticsSummary),
              (status = 400, description = "Not a window"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 503, description = "The figures cannot be read now")))]
fn analytics_summary() {}

#[utoipa::path(post, path = "/api/v1/checkout", tag = "orders", security(("bearer" = [])), request_body = Checkout,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "Required: a fresh UUID per order. Sent again with the same key and body, the same order is answered (`Idempotent-Replayed: true`); with another body, 422")),
    responses((status = 202, description = "The order is placed and its checkout runs in the background; `Location` is the order. Follow it with `GET` or with `/events`", body = OrderSummary,
               headers(("Location" = String, description = "The order: `/api/v1/orders/{id}`"))),
              (status = 400, description = "No `Idempotency-Key`, or not 1 to 255 visible ASCII characters"),
              (status = 401, description = "No valid token"),
              (status = 409, description = "A request with this `Idempotency-Key` is still being processed (`Retry-After`)"),
              (status = 422, description = "Invalid fields, a product that does not exist, products in different currencies, or the key was used with another body"),
              (status = 503, description = "The catalog cannot price the order now")))]
fn checkout() {}

#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 20)"),
           ("before" = Option<String>, Query, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "The last order of the previous page (`next_before`)")),
    responses((status = 200, description = "The caller's orders, newest first", body = OrderPage),
              (status = 400, description = "A bad parameter"),
              (status = 401, description = "No valid token"),
              (status = 404, description = "`before` names none of the caller's orders")))]
fn orders() {}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "The order's id")),
    responses((status = 200, description = "The order, its lines and the history of its checkout", body = Order),
              (status = 401, description = "No valid token"),
              (status = 404, description = "No such order of the caller's")))]
fn order() {}

#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "The order's id")),
    responses((status = 202, description = "Cancelling: what was done is undone (before payment) or refunded (after); asked again, the same", body = OrderSummary),
              (status = 401, description = "No valid token"),
              (status = 404, description = "No such order of the caller's"),
              (status = 409, description = "Too late (it has shipped, or was rejected), or it is being paid now (`Retry-After`)")))]
fn cancel_order() {}

#[utoipa::path(get, path = "/api/v1/orders/{id}/events", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "The order's id")),
    responses((status = 200, description = "Server-sent events: `status` with the order's status, reason and step, once now and on every move; the stream ends when the order is final, or after 5 minutes", content_type = "text/event-stream"),
              (status = 401, description = "No valid token"),
              (status = 404, description = "No such order of the caller's"),
              (status = 429, description = "Too many streams open: poll the order instead")))]
fn order_events() {}

#[utoipa::path(get, path = "/api/v1/stock/{id}", tag = "inventory",
    params(("id" = String, Path, pattern = "^[a-z0-9-]{1,64}$", description = "The product's id")),
    responses((status = 200, description = "How many can be ordered now", body = Stock),
              (status = 400, description = "Not a product id"),
              (status = 404, description = "No stock of this product")))]
fn stock() {}

#[utoipa::path(get, path = "/api/v1/admin/stock/{id}", tag = "inventory", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[a-z0-9-]{1,64}$", description = "The product's id")),
    responses((status = 200, description = "On hand, reserved and available", body = StockLevel),
              (status = 400, description = "Not a product id"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 404, description = "No stock of this product")))]
fn stock_level() {}

#[utoipa::path(post, path = "/api/v1/admin/stock/{id}/restock", tag = "inventory", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[a-z0-9-]{1,64}$", description = "The product's id")),
    request_body = Restock,
    responses((status = 200, description = "Restocked: the stock now", body = StockLevel),
              (status = 400, description = "Not a product id, or a quantity out of range"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin"),
              (status = 409, description = "More than the most a product may have on hand"),
              (status = 422, description = "Not a quantity")))]
fn restock() {}

#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "orders", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 50, description = "At most this many (default 10)")),
    responses((status = 200, description = "Everyone's latest orders, the newest first, with their step history", body = LatestOrders),
              (status = 400, description = "A limit out of range"),
              (status = 401, description = "No valid token"),
              (status = 403, description = "Not an admin")))]
fn latest_orders() {}

#[utoipa::path(get, path = "/api/v1/shipping/quote", tag = "shipping",
    params(("items" = u32, Query, minimum = 1, maximum = 1000, description = "How many items"),
           ("country" = String, Query, pattern = "^[A-Z]{2}$", description = "ISO 3166-1 alpha-2 code")),
    responses((status = 200, description = "What shipping costs", body = Quote),
              (status = 400, description = "A bad parameter")))]
fn shipping_quote() {}

#[utoipa::path(get, path = "/api/v1/home", tag = "gateway",
    responses((status = 200, description = "Products, cart and recommendations; `degraded` names the parts that fell back", body = Home),
              (status = 401, description = "A token was sent and is not valid")))]
fn home() {}

/// The patterns of fields that the services check with `shop_common::fields`: stated from the
/// same constants, so the document and the checks cannot drift apart.
/// Links from a placed order to what follows it (`links` of `OpenAPI` 3.1), so that a client, and
/// the contract run's stateful phase, can follow checkout → order → cancel or events.
struct OrderLinks;

impl Modify for OrderLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::link::Link;
        let follow = |operation: &str, from: &str, description: &str| {
            Link::builder()
                .operation_id(operation)
                .parameter("id", from)
                .description(description)
                .build()
        };
        let links = [
            ("GetOrder", "order", "The order placed"),
            ("CancelOrder", "cancel_order", "Cancel it"),
            ("OrderEvents", "order_events", "Its status as it moves"),
        ];
        for (path, method, status, id) in [
            (
                "/api/v1/checkout",
                "post",
                "202",
                "$response.body#/order_id",
            ),
            (
                "/api/v1/orders/{id}/cancel",
                "post",
                "202",
                "$response.body#/order_id",
            ),
            (
                "/api/v1/orders",
                "get",
                "200",
                "$response.body#/items/0/order_id",
            ),
        ] {
            let Some(item) = openapi.paths.paths.get_mut(path) else {
                continue;
            };
            let operation = match method {
                "post" => item.post.as_mut(),
                _ => item.get.as_mut(),
            };
            let Some(RefOr::T(response)) =
                operation.and_then(|operation| operation.responses.responses.get_mut(status))
            else {
                continue;
            };
            for (name, target, description) in links {
                response
                    .links
                    .insert(name.to_owned(), RefOr::T(follow(target, id, description)));
            }
        }
    }
}

struct FieldPatterns;

impl Modify for FieldPatterns {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use shop_common::fields::{EMAIL_PATTERN, VISIBLE_TEXT_PATTERN};
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (schema, field, pattern) in [
            ("Registration", "email", EMAIL_PATTERN),
            ("Registration", "name", VISIBLE_TEXT_PATTERN),
            ("Credentials", "email", EMAIL_PATTERN),
            ("ProfileChange", "email", EMAIL_PATTERN),
            ("ProfileChange", "name", VISIBLE_TEXT_PATTERN),
            ("ProductInput", "name", VISIBLE_TEXT_PATTERN),
        ] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
                && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
            {
                property.pattern = Some(pattern.to_owned());
            }
        }
        let search = openapi
            .paths
            .paths
            .get_mut("/api/v1/products/search")
            .and_then(|item| item.get.as_mut())
            .and_then(|operation| operation.parameters.as_mut());
        for parameter in search.into_iter().flatten() {
            if let RefOr::T(parameter) = parameter
                && parameter.name == "q"
                && let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut()
            {
                schema.pattern = Some(VISIBLE_TEXT_PATTERN.to_owned());
            }
        }
    }
}

/// Every error answer is a problem (`application/problem+json`, [`Problem`]), and every
/// operation lists the errors any request can meet on its way: the gateway's (`413` body too
/// large, `429` rate limited, `502`/`503`/`504` upstream failures) and, for an operation with a
/// request body, the body's (`400` malformed, `415` not JSON, `422` invalid).
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        PROBLEM_JSON,
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        let common = [
            ("413", "The request body is larger than the limit"),
            (
                "429",
                "Rate limited (`Retry-After`, `RateLimit`, `RateLimit-Policy`)",
            ),
            ("502", "The service behind failed to answer"),
            (
                "503",
                "The service behind has no healthy endpoint, or is shedding load (`Retry-After`)",
            ),
            ("504", "The service behind answered too late"),
        ];
        let with_body = [
            ("400", "The body is not well-formed JSON"),
            ("415", "The body is not `application/json`"),
            ("422", "The body does not match the schema"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                for (status, response) in responses.iter_mut() {
                    let error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(response)) = (error, response) {
                        *response = match problem(&response.description) {
                            RefOr::T(problem) => problem,
                            RefOr::Ref(_) => continue,
                        };
                    }
                }
                let extra = common.iter().chain(with_body.iter().filter(|_| has_body));
                for (status, description) in extra {
                    responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| problem(description));
                }
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The public API.
#[derive(OpenApi)]
#[openapi(
    info(title = "mainstay shop", description = "The public API of the mainstay commerce system, served by its gateway. Errors are RFC 9457 problems (`application/problem+json`): 4xx for the caller's mistakes, 502 when a service failed to answer, 503 when it has no healthy endpoint or is shedding load, 504 when it answered too late."),
    paths(register, login, refresh, logout, confirm_email, jwks, me, update_me, list_users, rotate_keys,
          products, create_product, search, product, view_product, replace_product, delete_product, categories,
          cart, clear_cart, set_cart_item, remove_cart_item, checkout, orders, order, cancel_order, order_events, stock, shipping_quote, home,
          notifications, notification_preferences, set_notification_preferences, dead_notifications,
          replay_notifications, notification_knob, recommendations, my_recommendations,
          analytics_summary, stock_level, restock, latest_orders),
    components(schemas(Problem, Registration, Registered, Credentials, RefreshRequest, EmailConfirmation, Tokens,
                       User, ProfileChange, UserPage, Product, ProductInput, ProductPage, Sort, Home,
                       CartQuantity, CartLine, Cart, CheckoutLine, Address, Checkout, Amount, OrderSummary, OrderLine, OrderEvent, Order,
                       OrderPage, Stock, Quote, Notification, NotificationPage, NotificationPreferences,
                       DeadNotification, DeadLetters, Replayed, ChannelKnob, Recommendations,
                       CheckoutLatency, AnalyticsPoint, AnalyticsSummary,
                       StockLevel, Restock, LatestOrders)),
    modifiers(&BearerAuth, &ProblemResponses, &FieldPatterns, &OrderLinks),
)]
pub(crate) struct ApiDoc;

/// Where the document is served (it does not describe itself).
pub(crate) const DOCUMENT: &str = "/api/v1/openapi.json";

/// The document at [`DOCUMENT`], and Swagger UI at `/docs`.
pub(crate) fn routes() -> Router {
    SwaggerUi::new("/docs")
        .url(DOCUMENT, ApiDoc::openapi())
        .into()
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    /// The documented schema has every standard member the errors are written with: read into
    /// the schema's struct and written again, a problem loses nothing.
    #[test]
    fn the_problem_schema_is_the_problem_type() {
        let written = shop_common::Problem::new(StatusCode::NOT_FOUND)
            .detail("no such route")
            .instance("/api/v1/nowhere")
            .to_json();
        let read: super::Problem = serde_json::from_str(&written).unwrap();
        let again: serde_json::Value = serde_json::to_value(&read).unwrap();
        let original: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(again, original);
    }
}
