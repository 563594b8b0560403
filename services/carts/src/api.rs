//! The HTTP API.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::future::join_all;
use mainstay_auth::{JwtLayer, Principal};
use serde::{Deserialize, Serialize};
use shop_common::{Json, Problem};

use crate::store::{CartError, Lines, Set};
use crate::{Carts, MAX_LINES, MAX_QUANTITY};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(carts: Carts) -> Router {
    Router::new()
        .route("/cart", get(cart).delete(clear))
        .route("/cart/items/{product}", put(set).delete(remove))
        .layer(JwtLayer::new(carts.0.validator.clone()))
        .with_state(carts)
}

/// A line of a cart as shown.
#[derive(Debug, Serialize)]
struct Line {
    product_id: String,
    quantity: u32,
    /// `None` (with the prices) while the catalog cannot say.
    name: Option<String>,
    unit_price_minor: Option<i64>,
    line_total_minor: Option<i64>,
    currency: Option<String>,
}

/// A cart as shown.
#[derive(Debug, Serialize)]
struct Shown {
    lines: Vec<Line>,
    /// The sum of the priced lines, per currency.
    totals: BTreeMap<String, i64>,
    /// Products in the cart that the catalog no longer has (they cannot be ordered).
    unavailable: Vec<String>,
    /// Whether some prices are missing because the catalog did not answer.
    prices_unavailable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quantity {
    quantity: u32,
}

fn store_failed(error: &CartError) -> Problem {
    tracing::error!(%error, "the cart store failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail("carts cannot be read or written now")
}

fn product_of(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(product) = path.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let slug = (1..=64).contains(&product.len())
        && product
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if slug {
        Ok(product)
    } else {
        Err(Problem::bad_request(
            "a product id is 1 to 64 lowercase letters, digits and dashes",
        ))
    }
}

/// The user's cart, each line priced now.
async fn shown(carts: &Carts, user: &str) -> Result<Shown, Problem> {
    let lines = carts
        .store()
        .lines(user)
        .await
        .map_err(|e| store_failed(&e))?;
    shown_lines(carts, lines).await
}

async fn shown_lines(carts: &Carts, lines: Lines) -> Result<Shown, Problem> {
    let prices = join_all(lines.keys().map(|product| carts.price(product))).await;
    let mut shown = Shown {
        lines: Vec::with_capacity(lines.len()),
        totals: BTreeMap::new(),
        unavailable: Vec::new(),
        prices_unavailable: false,
    };
    for ((product_id, quantity), price) in lines.into_iter().zip(prices) {
        let mut line = Line {
            product_id,
            quantity,
            name: None,
            unit_price_minor: None,
            line_total_minor: None,
            currency: None,
        };
        match price {
            Ok(Some(priced)) => {
                let total = priced.price_minor.saturating_mul(i64::from(quantity));
                let sum = shown.totals.entry(priced.currency.clone()).or_default();
                *sum = sum.saturating_add(total);
                line.name = Some(priced.name);
                line.unit_price_minor = Some(priced.price_minor);
                line.line_total_minor = Some(total);
                line.currency = Some(priced.currency);
            }
            Ok(None) => shown.unavailable.push(line.product_id.clone()),
            Err(error) => {
                tracing::warn!(%error, product = %line.product_id, "no price for a cart line");
                shown.prices_unavailable = true;
            }
        }
        shown.lines.push(line);
    }
    Ok(shown)
}

async fn cart(State(carts): State<Carts>, principal: Principal) -> Result<Response, Problem> {
    Ok(Json(shown(&carts, principal.subject()).await?).into_response())
}

async fn set(
    State(carts): State<Carts>,
    principal: Principal,
    product: Result<Path<String>, PathRejection>,
    Json(body): Json<Quantity>,
) -> Result<Response, Problem> {
    let product = product_of(product)?;
    if !(1..=MAX_QUANTITY).contains(&body.quantity) {
        return Err(Problem::unprocessable(format!(
            "a quantity is 1 to {MAX_QUANTITY}"
        )));
    }
    // Only what the catalog has goes in a cart.
    match carts.price(&product).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Problem::unprocessable(format!(
                "the catalog has no product {product:?}"
            )));
        }
        Err(error) => {
            tracing::warn!(%error, %product, "the catalog cannot say whether a product exists");
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .detail("the catalog cannot be asked now: try again shortly"));
        }
    }
    let user = principal.subject();
    match carts
        .store()
        .set(user, &product, body.quantity, MAX_LINES)
        .await
        .map_err(|e| store_failed(&e))?
    {
        Set::Done => Ok(Json(shown(&carts, user).await?).into_response()),
        Set::Started => {
            carts.started(user).await;
            Ok(Json(shown(&carts, user).await?).into_response())
        }
        Set::Full => Err(Problem::unprocessable(format!(
            "a cart holds at most {MAX_LINES} products"
        ))),
    }
}

async fn remove(
    State(carts): State<Carts>,
    principal: Principal,
    product: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let product = product_of(product)?;
    let user = principal.subject();
    if !carts
        .store()
        .remove(user, &product)
        .await
        .map_err(|e| store_failed(&e))?
    {
        return Err(Problem::not_found(format!("the cart holds no {product:?}")));
    }
    Ok(Json(shown(&carts, user).await?).into_response())
}

async fn clear(State(carts): State<Carts>, principal: Principal) -> Result<Response, Problem> {
    carts
        .store()
        .clear(principal.subject())
        .await
        .map_err(|e| store_failed(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
