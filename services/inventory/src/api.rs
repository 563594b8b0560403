//! The HTTP API.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mainstay_auth::{JwtLayer, RequireRoleLayer};
use serde::Deserialize;
use serde_json::json;
use shop_common::{Json, Problem};

use crate::store::Level;
use crate::{Inventory, MAX_SKU};

/// The most one restock may add.
const MAX_RESTOCK: i64 = 1_000_000;

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(inventory: Inventory) -> Router {
    let admin = Router::new()
        .route("/admin/stock/{sku}", get(level))
        .route("/admin/stock/{sku}/restock", post(restock))
        .layer(RequireRoleLayer::new("admin"))
        .layer(JwtLayer::new(inventory.0.validator.clone()));
    Router::new()
        .route("/stock/{sku}", get(available))
        .merge(admin)
        .with_state(inventory)
}

fn sku_of(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(sku) = path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    // The catalog's product ids: lower-case letters, digits and `-`.
    if (1..=MAX_SKU).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(sku)
    } else {
        Err(Problem::bad_request(format!(
            "a product id is 1 to {MAX_SKU} of a-z, 0-9 and -"
        )))
    }
}

async fn find(inventory: &Inventory, sku: &str) -> Result<Level, Problem> {
    inventory
        .store()
        .level(sku)
        .await
        .map_err(|error| Problem::internal(&error))?
        .ok_or_else(|| Problem::not_found(format!("no stock of {sku:?}")))
}

fn full(level: &Level) -> Response {
    Json(json!({
        "sku": level.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available(),
    }))
    .into_response()
}

async fn available(
    State(inventory): State<Inventory>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let sku = sku_of(sku)?;
    let level = find(&inventory, &sku).await?;
    Ok(Json(json!({"sku": level.sku, "available": level.available()})).into_response())
}

async fn level(
    State(inventory): State<Inventory>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let sku = sku_of(sku)?;
    Ok(full(&find(&inventory, &sku).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    quantity: i64,
}

async fn restock(
    State(inventory): State<Inventory>,
    sku: Result<Path<String>, PathRejection>,
    Json(body): Json<Restock>,
) -> Result<Response, Problem> {
    let sku = sku_of(sku)?;
    if !(1..=MAX_RESTOCK).contains(&body.quantity) {
        return Err(Problem::bad_request(format!(
            "quantity must be 1 to {MAX_RESTOCK}"
        )));
    }
    let level = inventory
        .store()
        .restock(&sku, body.quantity, "restock")
        .await
        .map_err(|error| Problem::internal(&error))?
        .ok_or_else(|| {
            Problem::conflict(format!(
                "{sku:?} would have more than {} on hand",
                crate::store::MAX_ON_HAND
            ))
        })?;
    tracing::info!(%sku, quantity = body.quantity, "restocked by an admin");
    Ok(full(&level))
}
