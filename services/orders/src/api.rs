//! The HTTP API.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::stream::Stream;
use mainstay_auth::{JwtLayer, Principal};
use mainstay_resilience::deadline::Deadline;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_common::idempotency::IDEMPOTENCY_KEY;
use shop_common::{FieldErrors, Json, Problem};
use shop_messaging::contracts::{Address, OrderPlaced, seal_card};
use shop_messaging::{HandleError, Outbox};
use tokio::sync::broadcast::error::RecvError;

use crate::flow::{Event, Status, Step};
use crate::store::{LineRow, NewOrder, OrderRow, OrderStore, Placed};
use crate::{Applied, Orders};

/// The most lines an order may have (after lines of one product are merged).
pub const MAX_LINES: usize = 50;
/// The most of one product an order may take.
pub const MAX_QUANTITY: u32 = 100;
/// The most orders one page lists.
pub const MAX_PAGE: i64 = 100;
/// The most status streams open at once, and per user.
pub const MAX_STREAMS: usize = 1024;
/// The most status streams one user may have open at once.
pub const MAX_STREAMS_PER_USER: usize = 4;
/// How long a status stream stays open (the client reconnects after).
pub const STREAM_FOR: Duration = Duration::from_secs(300);
/// How often a status stream looks at its order when no move in this process woke it (moves
/// handled by another replica).
const STREAM_POLL: Duration = Duration::from_secs(2);

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(orders: Orders) -> Router {
    let streams = Streams::default();
    Router::new()
        .route("/checkout", post(checkout))
        .route("/orders", get(mine))
        .route("/orders/{id}", get(one))
        .route("/orders/{id}/cancel", post(cancel))
        .route(
            "/admin/orders",
            get(latest).layer(mainstay_auth::RequireRoleLayer::new("admin")),
        )
        .route(
            "/orders/{id}/events",
            get(move |state, principal, id| events(state, principal, id, streams.clone())),
        )
        .layer(JwtLayer::new(orders.0.validator.clone()))
        .with_state(orders)
}

/// A line of a checkout: a product and how many. Its price comes from the catalog.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    product_id: String,
    quantity: u32,
}

/// A checkout's body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CheckoutRequest {
    lines: Vec<LineRequest>,
    shipping_address: Address,
    card: String,
}

fn slug_ok(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn text_ok(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.len() <= max && !text.chars().any(char::is_control)
}

/// The request's lines merged by product (in product order), or what is wrong with it.
fn checked(request: &CheckoutRequest) -> Result<BTreeMap<String, u32>, Problem> {
    let mut errors = FieldErrors::new();
    let mut lines = BTreeMap::new();
    if request.lines.is_empty() {
        errors.add("lines", "an order has at least one line");
    }
    for (n, line) in request.lines.iter().enumerate() {
        if !slug_ok(&line.product_id) {
            errors.add(
                &format!("lines[{n}].product_id"),
                "a product id: 1 to 64 lower-case letters, digits and dashes",
            );
        }
        if line.quantity == 0 {
            errors.add(&format!("lines[{n}].quantity"), "at least 1");
        }
        let total = lines.entry(line.product_id.clone()).or_insert(0_u32);
        *total = total.saturating_add(line.quantity);
    }
    if lines.len() > MAX_LINES {
        errors.add("lines", &format!("at most {MAX_LINES} products"));
    }
    if lines.values().any(|&quantity| quantity > MAX_QUANTITY) {
        errors.add(
            "lines",
            &format!("at most {MAX_QUANTITY} of one product per order"),
        );
    }
    let address = &request.shipping_address;
    for (field, value, max) in [
        ("shipping_address.name", &address.name, 100),
        ("shipping_address.line1", &address.line1, 200),
        ("shipping_address.city", &address.city, 100),
        ("shipping_address.postcode", &address.postcode, 16),
    ] {
        if !text_ok(value, max) {
            errors.add(field, &format!("1 to {max} bytes, no control characters"));
        }
    }
    if !(address.country.len() == 2 && address.country.bytes().all(|b| b.is_ascii_uppercase())) {
        errors.add(
            "shipping_address.country",
            "an ISO 3166-1 alpha-2 code (two capital letters)",
        );
    }
    if !((12..=19).contains(&request.card.len())
        && request.card.bytes().all(|b| b.is_ascii_digit()))
    {
        errors.add("card", "12 to 19 digits");
    }
    errors.check(StatusCode::UNPROCESSABLE_ENTITY, "the order is not valid")?;
    Ok(lines)
}

/// The `Idempotency-Key` a checkout must carry.
fn key_of(headers: &HeaderMap) -> Result<String, Problem> {
    let key = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        Problem::bad_request(
            "a checkout needs an Idempotency-Key header (a fresh UUID per order): sent again \
             with the same key, it places one order",
        )
    })?;
    key.to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::bad_request("an Idempotency-Key is 1 to 255 visible ASCII characters")
        })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn unavailable(detail: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail(detail)
}

fn store_failed(error: &dyn std::error::Error) -> Problem {
    tracing::error!(%error, "the orders store failed");
    unavailable("the orders store cannot be reached: try again")
}

fn handle_failed(error: &HandleError) -> Problem {
    match error {
        HandleError::Transient(_) => {
            tracing::warn!(%error, "an order could not be moved now");
            unavailable("the order could not be changed now: try again")
        }
        HandleError::Poison(_) => Problem::internal(error),
    }
}

/// `202 Accepted` with the order and its `Location`.
fn accepted(view: Value, order_id: &str, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response.headers_mut().insert(
            shop_common::idempotency::IDEMPOTENT_REPLAYED,
            HeaderValue::from_static("true"),
        );
    }
    response
}

async fn checkout(
    State(orders): State<Orders>,
    principal: Principal,
    headers: HeaderMap,
    deadline: Option<Extension<Deadline>>,
    Json(request): Json<CheckoutRequest>,
) -> Result<Response, Problem> {
    let key = key_of(&headers)?;
    let lines = checked(&request)?;
    let user_id = principal.subject().to_owned();
    let canonical = serde_json::to_vec(&request).map_err(|e| Problem::internal(&e))?;
    // Keyed: the request holds the card, and a plain digest of a card number can be reversed
    // by trying them all.
    let request_hash = hex(hmac::sign(orders.request_hash_key(), &canonical).as_ref());
    // The same key again: the order it placed, before the catalog is asked anything.
    if let Some(found) = orders
        .store()
        .by_key(&user_id, &key)
        .await
        .map_err(|e| store_failed(&e))?
    {
        return replay(&orders, &found, &request_hash).await;
    }
    let priced = price(&orders, &lines, deadline.map(|Extension(at)| at)).await?;
    let total = priced.iter().try_fold(0_i64, |total, line| {
        line.unit_price_minor
            .checked_mul(i64::from(line.quantity))
            .and_then(|amount| total.checked_add(amount))
    });
    let Some(total) = total.filter(|&total| total > 0) else {
        return Err(Problem::unprocessable(
            "the order's total is not a payable amount",
        ));
    };
    let currency = currency_of(&priced)?;
    let now = shop_common::unix_millis();
    let deadline = i64::try_from(orders.timing().deadline.as_millis()).unwrap_or(i64::MAX);
    let order_id = uuid::Uuid::new_v4().to_string();
    // Sealed for payments at once: the card rests nowhere in clear, not even in this row.
    let card = seal_card(orders.card_key(), &order_id, &request.card);
    let order = NewOrder {
        order_id,
        user_id: user_id.clone(),
        idempotency_key: key,
        request_hash: request_hash.clone(),
        deadline_ms: now.saturating_add(deadline),
        total_minor: total,
        currency: currency.clone(),
        card,
        card_last4: request.card[request.card.len().saturating_sub(4)..].to_owned(),
        address: serde_json::to_string(&request.shipping_address)
            .map_err(|e| Problem::internal(&e))?,
        lines: priced.into_iter().map(|line| line.row).collect(),
        now_ms: now,
    };
    let mut tx = orders
        .store()
        .database()
        .begin_read_committed()
        .await
        .map_err(|e| store_failed(&e))?;
    match OrderStore::place(&mut tx, &order, "placed")
        .await
        .map_err(|e| store_failed(&e))?
    {
        Placed::New => {}
        Placed::Existing { order_id, .. } => {
            // A request with the same key committed while this one priced.
            tx.rollback().await.map_err(|e| store_failed(&e))?;
            let found = orders
                .store()
                .get(&order_id)
                .await
                .map_err(|e| store_failed(&e))?
                .ok_or_else(|| unavailable("the order could not be read: try again"))?;
            return replay(&orders, &found, &request_hash).await;
        }
    }
    let row = OrderStore::load(&mut tx, &order.order_id)
        .await
        .map_err(|e| store_failed(&e))?
        .ok_or_else(|| unavailable("the order could not be read: try again"))?;
    orders
        .send_step(&mut tx, &row, Step::Reserve)
        .await
        .map_err(|e| handle_failed(&e))?;
    Outbox::enqueue(
        &mut tx,
        &OrderPlaced {
            order_id: order.order_id.clone(),
            user_id,
            total_minor: total,
            currency,
            placed_at_ms: now,
        },
    )
    .await
    .map_err(|e| store_failed(&e))?;
    tx.commit().await.map_err(|e| store_failed(&e))?;
    tracing::info!(order_id = %order.order_id, total, "order placed");
    let view = view(&orders, &row, true).await?;
    Ok(accepted(view, &order.order_id, false))
}

/// The answer to a key used before: its order if the request is the same, else `422`.
async fn replay(
    orders: &Orders,
    found: &OrderRow,
    request_hash: &str,
) -> Result<Response, Problem> {
    if found.request_hash != request_hash {
        return Err(Problem::unprocessable(
            "this Idempotency-Key placed an order with another request: use a fresh key for \
             another order",
        ));
    }
    let view = view(orders, found, true).await?;
    Ok(accepted(view, &found.order_id, true))
}

/// A line priced by the catalog.
struct PricedLine {
    row: LineRow,
    unit_price_minor: i64,
    quantity: u32,
    currency: String,
}

/// The lines priced by the catalog, each asked by the request's `deadline` (the server stack's
/// `DeadlineLayer` sets it: the caller's `x-request-deadline` or the service's own budget).
async fn price(
    orders: &Orders,
    lines: &BTreeMap<String, u32>,
    deadline: Option<Deadline>,
) -> Result<Vec<PricedLine>, Problem> {
    let asked = lines.iter().map(|(product_id, &quantity)| async move {
        let priced = orders.0.prices.price(product_id, deadline).await;
        (product_id.clone(), quantity, priced)
    });
    let mut priced = Vec::with_capacity(lines.len());
    let mut missing = Vec::new();
    for (product_id, quantity, answer) in futures_util::future::join_all(asked).await {
        match answer {
            Ok(Some(product)) => priced.push(PricedLine {
                row: LineRow {
                    product_id,
                    name: product.name,
                    quantity: i32::try_from(quantity).unwrap_or(i32::MAX),
                    unit_price_minor: product.price_minor,
                },
                unit_price_minor: product.price_minor,
                quantity,
                currency: product.currency,
            }),
            Ok(None) => missing.push(product_id),
            Err(error) => {
                tracing::warn!(%error, "the catalog could not price a checkout");
                return Err(unavailable(
                    "the catalog cannot be asked for prices now: try again",
                ));
            }
        }
    }
    if !missing.is_empty() {
        return Err(
            Problem::unprocessable(format!("no such product: {}", missing.join(", ")))
                .with("missing", missing),
        );
    }
    if priced.iter().any(|line| line.unit_price_minor < 0) {
        return Err(unavailable("the catalog answered a negative price"));
    }
    Ok(priced)
}

fn currency_of(priced: &[PricedLine]) -> Result<String, Problem> {
    let first = priced
        .first()
        .map(|line| line.currency.clone())
        .unwrap_or_default();
    if priced.iter().any(|line| line.currency != first) {
        return Err(Problem::unprocessable(
            "the products are priced in different currencies: order them separately",
        ));
    }
    Ok(first)
}

/// An order as the API shows it; with its lines, address and history when `full`.
async fn view(orders: &Orders, row: &OrderRow, full: bool) -> Result<Value, Problem> {
    let mut view = json!({
        "order_id": row.order_id,
        "status": row.status,
        "reason": row.reason,
        "step": row.step,
        "total": {"amount_minor": row.total_minor, "currency": row.currency},
        "captured_minor": row.captured_minor,
        "refunded_minor": row.refunded_minor,
        "card_last4": row.card_last4,
        "items": row.items,
        "created_at_ms": row.created_at_ms,
        "updated_at_ms": row.updated_at_ms,
    });
    if full {
        let store = orders.store();
        let lines = store
            .lines(&row.order_id)
            .await
            .map_err(|e| store_failed(&e))?;
        let history = store
            .history(&row.order_id)
            .await
            .map_err(|e| store_failed(&e))?;
        let address: Value = serde_json::from_str(&row.address).unwrap_or(Value::Null);
        view["lines"] = json!(lines);
        view["shipping_address"] = address;
        view["history"] = json!(history);
    }
    Ok(view)
}

fn id_of(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(id) = path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    // Order ids are UUIDs: anything else is no order (and never reaches the database).
    uuid::Uuid::parse_str(&id)
        .map(|_| id.clone())
        .map_err(|_| Problem::not_found(format!("no order {id:?}")))
}

/// The order `id`, if `principal` may see it (its owner, or an admin): others' orders are
/// not found, so that their ids say nothing.
async fn visible(orders: &Orders, principal: &Principal, id: &str) -> Result<OrderRow, Problem> {
    orders
        .store()
        .get(id)
        .await
        .map_err(|e| store_failed(&e))?
        .filter(|row| row.user_id == principal.subject() || principal.has_role("admin"))
        .ok_or_else(|| Problem::not_found(format!("no order {id:?}")))
}

async fn one(
    State(orders): State<Orders>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = id_of(id)?;
    let row = visible(&orders, &principal, &id).await?;
    Ok(Json(view(&orders, &row, true).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<i64>,
    before: Option<String>,
}

/// Everyone's latest orders with their step history (admins: the ops console).
async fn latest(
    State(orders): State<Orders>,
    page: Result<Query<Latest>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(page) = page.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = page.limit.unwrap_or(10);
    if !(1..=MAX_LATEST).contains(&limit) {
        return Err(Problem::bad_request(format!("limit is 1 to {MAX_LATEST}")));
    }
    let rows = orders
        .store()
        .latest(limit)
        .await
        .map_err(|e| store_failed(&e))?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut order = view(&orders, row, true).await?;
        // The console shows the step history, not where the parcel goes.
        if let Some(fields) = order.as_object_mut() {
            fields.remove("shipping_address");
        }
        items.push(order);
    }
    Ok(Json(json!({"items": items})).into_response())
}

/// The most orders `GET /admin/orders` shows.
const MAX_LATEST: i64 = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Latest {
    limit: Option<i64>,
}

async fn mine(
    State(orders): State<Orders>,
    principal: Principal,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(page) = page.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!("limit is 1 to {MAX_PAGE}")));
    }
    let user = principal.subject();
    let before = match page.before {
        Some(id) => {
            let row = orders
                .store()
                .get(&id)
                .await
                .map_err(|e| store_failed(&e))?
                .filter(|row| row.user_id == user)
                .ok_or_else(|| Problem::not_found("before names none of your orders"))?;
            Some((row.created_at_ms, row.order_id))
        }
        None => None,
    };
    let rows = orders
        .store()
        .of_user(
            user,
            limit,
            before.as_ref().map(|(at, id)| (*at, id.as_str())),
        )
        .await
        .map_err(|e| store_failed(&e))?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(view(&orders, row, false).await?);
    }
    let next = (rows.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| rows.last().map(|row| row.order_id.clone()))
        .flatten();
    Ok(Json(json!({"items": items, "next_before": next})).into_response())
}

async fn cancel(
    State(orders): State<Orders>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = id_of(id)?;
    let row = visible(&orders, &principal, &id).await?;
    if row.user_id != principal.subject() {
        return Err(Problem::new(StatusCode::FORBIDDEN).detail("only its owner cancels an order"));
    }
    // Two movers of one order at once (a reply): the loser tries again.
    for _ in 0..5 {
        let mut tx = orders
            .store()
            .database()
            .begin_read_committed()
            .await
            .map_err(|e| store_failed(&e))?;
        let applied = match orders.apply(&mut tx, &id, &Event::CancelAsked).await {
            Ok(applied) => applied,
            Err(HandleError::Transient(_)) => {
                let _ = tx.rollback().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(error) => return Err(handle_failed(&error)),
        };
        tx.commit().await.map_err(|e| store_failed(&e))?;
        return match applied {
            Applied::Refused(why) => {
                let mut response = Problem::conflict(why).into_response();
                if why.contains("try again") {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                Ok(response)
            }
            Applied::Unknown => Err(Problem::not_found(format!("no order {id:?}"))),
            Applied::Moved(_) | Applied::Stayed(_) => {
                let row = visible(&orders, &principal, &id).await?;
                Ok(accepted(view(&orders, &row, false).await?, &id, false))
            }
        };
    }
    Err(unavailable("the order is changing: try again"))
}

/// The open status streams, in all and per user.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<HashMap<String, usize>>>);

/// One open stream: counted until dropped.
struct StreamSlot {
    streams: Streams,
    user: String,
}

impl Streams {
    fn open(&self, user: &str) -> Option<StreamSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let all: usize = open.values().sum();
        let mine = open.get(user).copied().unwrap_or(0);
        if all >= MAX_STREAMS || mine >= MAX_STREAMS_PER_USER {
            return None;
        }
        open.insert(user.to_owned(), mine + 1);
        Some(StreamSlot {
            streams: self.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

fn status_event(row: &OrderRow) -> SseEvent {
    SseEvent::default()
        .event("status")
        .id(row.version.to_string())
        .data(
            json!({
                "order_id": row.order_id,
                "status": row.status,
                "reason": row.reason,
                "step": row.step,
                "updated_at_ms": row.updated_at_ms,
            })
            .to_string(),
        )
}

/// Whether nothing more will happen to an order.
fn final_status(status: &str) -> bool {
    Status::parse(status).is_some_and(|status| {
        matches!(
            status,
            Status::Delivered | Status::Rejected | Status::Cancelled | Status::NeedsAttention
        )
    })
}

async fn events(
    State(orders): State<Orders>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
    streams: Streams,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let id = id_of(id)?;
    let row = visible(&orders, &principal, &id).await?;
    let Some(slot) = streams.open(principal.subject()) else {
        return Err(Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .detail("too many status streams are open: close one, or poll GET /orders/{id}"));
    };
    let moves = orders.moves();
    let until = tokio::time::Instant::now() + STREAM_FOR;
    struct Watch {
        orders: Orders,
        id: String,
        moves: tokio::sync::broadcast::Receiver<Arc<str>>,
        last: Option<OrderRow>,
        sent_version: i64,
        until: tokio::time::Instant,
        _slot: StreamSlot,
        done: bool,
    }
    let watch = Watch {
        orders,
        id,
        moves,
        last: Some(row),
        sent_version: -1,
        until,
        _slot: slot,
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        loop {
            if watch.done {
                return None;
            }
            if let Some(row) = watch.last.take()
                && row.version != watch.sent_version
            {
                watch.sent_version = row.version;
                watch.done = final_status(&row.status);
                return Some((Ok(status_event(&row)), watch));
            }
            let woke = tokio::select! {
                () = tokio::time::sleep_until(watch.until) => return None,
                () = tokio::time::sleep(STREAM_POLL) => true,
                moved = watch.moves.recv() => match moved {
                    Ok(id) => *id == *watch.id,
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return None,
                },
            };
            if woke {
                match watch.orders.store().get(&watch.id).await {
                    Ok(row) => watch.last = row,
                    Err(error) => {
                        tracing::warn!(%error, "a status stream could not read its order");
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
