//! The HTTP API.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mainstay_auth::{JwtLayer, RequireRoleLayer};
use shop_common::{Json, Problem};

use crate::{MAX_ORDER_ID, Payments};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(payments: Payments) -> Router {
    Router::new()
        .route("/admin/payments/{order_id}", get(payment))
        .layer(RequireRoleLayer::new("admin"))
        .layer(JwtLayer::new(payments.0.validator.clone()))
        .with_state(payments)
}

async fn payment(
    State(payments): State<Payments>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(order_id) =
        order_id.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if !(1..=MAX_ORDER_ID).contains(&order_id.len()) && !order_id.chars().any(char::is_control) {
        return Err(Problem::bad_request(format!(
            "an order id is 1 to {MAX_ORDER_ID} bytes"
        )));
    }
    let payment = payments
        .store()
        .get(&order_id)
        .await
        .map_err(|error| Problem::internal(&error))?
        .ok_or_else(|| Problem::not_found(format!("no payment for order {order_id:?}")))?;
    Ok(Json(payment).into_response())
}
