//! The HTTP API.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, http::HeaderValue};
use mainstay_auth::{JwtLayer, Principal};
use serde::Deserialize;
use shop_common::{Json, Problem};

use crate::{Ask, MAX_ID, MAX_LIMIT, Recommendations, id_ok};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(recommendations: Recommendations) -> Router {
    let validator = recommendations.0.validator.clone();
    let mine = Router::new()
        .route("/recommendations/me", get(me))
        .layer(JwtLayer::new(validator.clone()));
    Router::new()
        .route("/recommendations", get(recommended))
        .layer(JwtLayer::new(validator).optional())
        .merge(mine)
        .with_state(recommendations)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    product: Option<String>,
    category: Option<String>,
    limit: Option<u32>,
}

fn limit_of(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(8);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::bad_request(format!("limit is 1 to {MAX_LIMIT}")))
    }
}

async fn answer(
    recommendations: &Recommendations,
    ask: &Ask,
    category: Option<&str>,
    limit: u32,
) -> Response {
    match recommendations.recommend(ask, category, limit).await {
        Ok(picks) => {
            let mut response = Json(picks).into_response();
            // Personal picks are the caller's own.
            let cache = if matches!(ask, Ask::For(_)) {
                "private, no-store"
            } else {
                "public, max-age=10"
            };
            let headers = response.headers_mut();
            headers.insert(
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static(cache),
            );
            // Signed in, the same URL answers the caller's own picks.
            headers.insert(
                axum::http::header::VARY,
                HeaderValue::from_static("authorization"),
            );
            response
        }
        Err(error) => {
            tracing::warn!(%error, "nothing to recommend: the store and the catalog failed");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .detail("no recommendations can be made now")
                .into_response()
        }
    }
}

async fn recommended(
    State(recommendations): State<Recommendations>,
    principal: Option<Extension<Principal>>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = limit_of(params.limit)?;
    for (name, value) in [("product", &params.product), ("category", &params.category)] {
        if value.as_deref().is_some_and(|id| !id_ok(id)) {
            return Err(Problem::bad_request(format!(
                "{name} is 1 to {MAX_ID} of a-z, 0-9 and -"
            )));
        }
    }
    let ask = match (params.product, principal) {
        (Some(product), _) => Ask::BoughtWith(product),
        (None, Some(Extension(principal))) => Ask::For(principal.subject().to_owned()),
        (None, None) => Ask::Popular,
    };
    Ok(answer(&recommendations, &ask, params.category.as_deref(), limit).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MineParams {
    limit: Option<u32>,
}

async fn me(
    State(recommendations): State<Recommendations>,
    principal: Principal,
    params: Result<Query<MineParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = limit_of(params.limit)?;
    let ask = Ask::For(principal.subject().to_owned());
    Ok(answer(&recommendations, &ask, None, limit).await)
}
