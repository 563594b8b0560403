//! The HTTP API.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use mainstay_auth::{JwtLayer, Principal, RequireRoleLayer};
use serde::Deserialize;
use serde_json::json;
use shop_common::{Json, Problem};

use crate::store::Preferences;
use crate::{Channel, Notifications, ReplayError};

/// The most notifications one page shows.
pub(crate) const MAX_PAGE: u32 = 100;

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(notifications: Notifications) -> Router {
    let validator = notifications.0.validator.clone();
    let admin = Router::new()
        .route("/admin/notifications/dead-letters", get(dead_letters))
        .route("/admin/notifications/dead-letters/replay", post(replay))
        .route("/admin/notifications/channels/{channel}", put(knob))
        .layer(RequireRoleLayer::new("admin"))
        .layer(JwtLayer::new(validator.clone()));
    Router::new()
        .route("/notifications", get(mine))
        .route(
            "/notifications/preferences",
            get(preferences).put(set_preferences),
        )
        .layer(JwtLayer::new(validator))
        .merge(admin)
        .with_state(notifications)
}

fn store_failed(error: &impl std::fmt::Display) -> Problem {
    tracing::error!(%error, "the notifications store failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .detail("notifications cannot be read or written now")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<u32>,
}

async fn mine(
    State(notifications): State<Notifications>,
    principal: Principal,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(page) = page.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!("limit is 1 to {MAX_PAGE}")));
    }
    let items = notifications
        .store()
        .of_user(principal.subject(), limit)
        .await
        .map_err(|e| store_failed(&e))?;
    // What went wrong sending is for the operators (it names servers and files).
    let items: Vec<_> = items
        .into_iter()
        .map(|notification| {
            let mut shown = json!(notification);
            if let Some(fields) = shown.as_object_mut() {
                fields.remove("attempts");
                fields.remove("last_error");
            }
            shown
        })
        .collect();
    Ok(Json(json!({"items": items})).into_response())
}

async fn preferences(
    State(notifications): State<Notifications>,
    principal: Principal,
) -> Result<Response, Problem> {
    let preferences = notifications
        .store()
        .preferences(principal.subject())
        .await
        .map_err(|e| store_failed(&e))?;
    Ok(Json(preferences).into_response())
}

async fn set_preferences(
    State(notifications): State<Notifications>,
    principal: Principal,
    Json(preferences): Json<Preferences>,
) -> Result<Response, Problem> {
    notifications
        .store()
        .set_preferences(principal.subject(), preferences)
        .await
        .map_err(|e| store_failed(&e))?;
    Ok(Json(preferences).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFilter {
    channel: Option<String>,
}

fn channel_of(
    filter: Result<Query<ChannelFilter>, QueryRejection>,
) -> Result<Option<Channel>, Problem> {
    let Query(filter) = filter.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    channel_named(filter.channel)
}

fn channel_named(name: Option<String>) -> Result<Option<Channel>, Problem> {
    name.map(|name| {
        Channel::parse(&name).ok_or_else(|| Problem::bad_request("a channel is email, sms or push"))
    })
    .transpose()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadFilter {
    channel: Option<String>,
    limit: Option<u32>,
}

async fn dead_letters(
    State(notifications): State<Notifications>,
    filter: Result<Query<DeadFilter>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(filter) = filter.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let channel = channel_named(filter.channel)?;
    // 0: the counts alone (what the ops console reads every tick).
    let limit = filter.limit.unwrap_or(MAX_PAGE);
    if limit > MAX_PAGE {
        return Err(Problem::bad_request(format!("limit is 0 to {MAX_PAGE}")));
    }
    let store = notifications.store();
    let items = if limit == 0 {
        Vec::new()
    } else {
        store
            .dead(channel, limit)
            .await
            .map_err(|e| store_failed(&e))?
    };
    let counts = store.dead_counts().await.map_err(|e| store_failed(&e))?;
    let mut depth = serde_json::Map::new();
    for channel in Channel::ALL {
        let count = counts
            .iter()
            .find(|(name, _)| name == channel.as_str())
            .map_or(0, |(_, count)| *count);
        depth.insert(channel.as_str().to_owned(), json!(count));
    }
    Ok(Json(json!({"counts": depth, "items": items})).into_response())
}

async fn replay(
    State(notifications): State<Notifications>,
    filter: Result<Query<ChannelFilter>, QueryRejection>,
) -> Result<Response, Problem> {
    let channel = channel_of(filter)?;
    let replayed = notifications
        .replay(channel)
        .await
        .map_err(|error: ReplayError| store_failed(&error))?;
    tracing::info!(replayed, channel = ?channel, "dead notifications replayed");
    Ok(Json(json!({"replayed": replayed})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Knob {
    failing: bool,
}

async fn knob(
    State(notifications): State<Notifications>,
    channel: Result<Path<String>, PathRejection>,
    Json(knob): Json<Knob>,
) -> Result<Response, Problem> {
    let Path(name) = channel.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let channel = Channel::parse(&name)
        .ok_or_else(|| Problem::not_found("a channel is email, sms or push"))?;
    if !notifications.knobs().enabled() {
        return Err(Problem::not_found(
            "the failure knobs are off on this system (NOTIFICATIONS_FAILURE_KNOBS)",
        ));
    }
    notifications.knobs().set_failing(channel, knob.failing);
    tracing::warn!(
        channel = channel.as_str(),
        failing = knob.failing,
        "failure knob set"
    );
    Ok(Json(json!({"channel": channel, "failing": knob.failing})).into_response())
}
