//! The HTTP API.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mainstay_auth::{JwtLayer, RequireRoleLayer};
use serde::Deserialize;
use serde_json::json;
use shop_common::{Json, Problem};
use shop_messaging::Outbox;
use shop_messaging::contracts::{MAX_ORDER_ID, OrderDelivered, OrderShipped};

use crate::store::{Shipment, ShipmentStore};
use crate::{MAX_ITEMS, Shipping, country_ok, quote};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(shipping: Shipping) -> Router {
    let admin = Router::new()
        .route("/admin/shipments/{order_id}", get(shipment))
        .route("/admin/shipments/{order_id}/ship", post(ship))
        .route("/admin/shipments/{order_id}/deliver", post(deliver))
        .layer(RequireRoleLayer::new("admin"))
        .layer(JwtLayer::new(shipping.0.validator.clone()));
    Router::new()
        .route("/quote", get(quoted))
        .merge(admin)
        .with_state(shipping)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteParams {
    items: u32,
    country: String,
}

async fn quoted(params: Result<Query<QuoteParams>, QueryRejection>) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if !(1..=MAX_ITEMS).contains(&params.items) || !country_ok(&params.country) {
        return Err(Problem::bad_request(format!(
            "items must be 1 to {MAX_ITEMS}, country an ISO 3166-1 alpha-2 code"
        )));
    }
    let cost = quote(params.items, &params.country);
    Ok(
        Json(json!({"items": params.items, "country": params.country, "cost_minor": cost}))
            .into_response(),
    )
}

fn order_of(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(order_id) = path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if (1..=MAX_ORDER_ID).contains(&order_id.len()) && !order_id.chars().any(char::is_control) {
        Ok(order_id)
    } else {
        Err(Problem::bad_request(format!(
            "an order id is 1 to {MAX_ORDER_ID} bytes"
        )))
    }
}

async fn found(shipping: &Shipping, order_id: &str) -> Result<Shipment, Problem> {
    shipping
        .store()
        .get(order_id)
        .await
        .map_err(|error| Problem::internal(&error))?
        .ok_or_else(|| Problem::not_found(format!("no shipment for order {order_id:?}")))
}

async fn shipment(
    State(shipping): State<Shipping>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let order_id = order_of(order_id)?;
    Ok(Json(found(&shipping, &order_id).await?).into_response())
}

/// Moves the shipment from `from` to `to` and writes `event` with it; 409 when it is not
/// `from`, or (with `confirmed`) its order is not confirmed yet.
async fn advance<M: shop_messaging::Message>(
    shipping: &Shipping,
    order_id: &str,
    from: &str,
    to: &str,
    confirmed: bool,
    event: &M,
) -> Result<Response, Problem> {
    let internal = |error: &dyn std::error::Error| Problem::internal(error);
    let existing = found(shipping, order_id).await?;
    let mut tx = shipping
        .store()
        .database()
        .begin()
        .await
        .map_err(|e| internal(&e))?;
    if !ShipmentStore::moved(&mut tx, order_id, from, to, confirmed)
        .await
        .map_err(|e| internal(&e))?
    {
        return Err(Problem::conflict(if existing.status == from {
            "the order is not confirmed yet (its payment is being taken): ship it once it is"
                .to_owned()
        } else {
            format!("the shipment is {}, not {from}", existing.status)
        }));
    }
    Outbox::enqueue(&mut tx, event)
        .await
        .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    Ok(Json(found(shipping, order_id).await?).into_response())
}

async fn ship(
    State(shipping): State<Shipping>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let order_id = order_of(order_id)?;
    let existing = found(&shipping, &order_id).await?;
    let event = OrderShipped {
        order_id: order_id.clone(),
        tracking_id: existing.tracking_id,
    };
    // Nothing leaves before its order is confirmed (the payment could still fail).
    advance(&shipping, &order_id, "CREATED", "SHIPPED", true, &event).await
}

async fn deliver(
    State(shipping): State<Shipping>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let order_id = order_of(order_id)?;
    let event = OrderDelivered {
        order_id: order_id.clone(),
    };
    // What left is delivered, whatever the shipment remembers of its confirmation.
    advance(&shipping, &order_id, "SHIPPED", "DELIVERED", false, &event).await
}
