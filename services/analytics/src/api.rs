//! The HTTP API.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mainstay_auth::{JwtLayer, RequireRoleLayer};
use serde::Deserialize;
use shop_common::{Json, Problem};

use crate::{Analytics, Window};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(analytics: Analytics) -> Router {
    let validator = analytics.0.validator.clone();
    Router::new()
        .route("/analytics/summary", get(summary))
        .layer(RequireRoleLayer::new("admin"))
        .layer(JwtLayer::new(validator))
        .with_state(analytics)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    window: Option<String>,
}

async fn summary(
    State(analytics): State<Analytics>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let name = params.window.unwrap_or_else(|| "1h".to_owned());
    let window = Window::parse(&name, analytics.retention()).map_err(Problem::bad_request)?;
    let summary = analytics.summary(&name, window).await.map_err(|error| {
        tracing::error!(%error, "the analytics store failed");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail("the figures cannot be read now")
    })?;
    Ok(Json(summary).into_response())
}
