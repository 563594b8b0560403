//! The backbone's admin routes, which every service mounts (admin role only): its outbox, its
//! consumers' dead letters, and their replay. The ops console calls them; an operator without
//! it uses `shop-messaging dlq` or `curl`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /admin/messaging` | the outbox's lag, and each consumer's dead-letter depth |
//! | `GET /admin/messaging/dead-letters/{consumer}?limit=N` | the consumer's dead letters, oldest first (`limit` 1 to 500, default 100) |
//! | `POST /admin/messaging/dead-letters/{consumer}/replay?seq=N` | delivers dead letter `N` (or the oldest up to 1 000) to the consumer again; `{"replayed": count, "remaining": count}` |
//!
//! A consumer the service does not run, or a dead letter `N` it does not have, is 404; a bad `limit` or `seq` is 400; a transport
//! that cannot be reached is 503. Every answer that is not a success is a problem
//! (`application/problem+json`).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mainstay_auth::{JwtLayer, RequireRoleLayer, Validator};
use serde::Deserialize;
use serde_json::json;
use shop_common::Problem;
use shop_common::store::Database;

use crate::metrics::MessagingMetrics;
use crate::outbox::Outbox;
use crate::transport::{Transport, TransportError};

/// The most dead letters one listing returns.
pub const MAX_LISTED: usize = 500;

/// What the admin routes act on: one service's part of the backbone.
#[derive(Clone)]
pub struct Admin {
    transport: Arc<dyn Transport>,
    database: Database,
    consumers: Arc<[String]>,
    metrics: Option<MessagingMetrics>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The backbone of a service whose outbox is in `database` and whose consumers, named
    /// `consumers`, run over `transport`.
    #[must_use]
    pub fn new(transport: Arc<dyn Transport>, database: Database, consumers: Vec<String>) -> Self {
        Self {
            transport,
            database,
            consumers: consumers.into(),
            metrics: None,
        }
    }

    /// Sets each replayed consumer's dead-letter depth in `metrics` at once, rather than at
    /// its consumer's next reading.
    #[must_use]
    pub fn metrics(mut self, metrics: MessagingMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The routes, for callers with the `admin` role in a token `validator` accepts.
    pub fn router(self, validator: Validator) -> Router {
        Router::new()
            .route("/admin/messaging", get(summary))
            .route("/admin/messaging/dead-letters/{consumer}", get(list))
            .route(
                "/admin/messaging/dead-letters/{consumer}/replay",
                post(replay),
            )
            .layer(RequireRoleLayer::new("admin"))
            .layer(JwtLayer::new(validator))
            .with_state(self)
    }

    /// `consumer`, if the service runs it.
    fn consumer(&self, consumer: &str) -> Result<(), Problem> {
        if self.consumers.iter().any(|name| name == consumer) {
            Ok(())
        } else {
            Err(Problem::not_found(format!(
                "this service runs no consumer {:?}",
                consumer.chars().take(64).collect::<String>()
            )))
        }
    }
}

fn unavailable(error: &TransportError) -> Problem {
    match error {
        TransportError::Invalid(detail) => Problem::bad_request(detail.clone()),
        // The broker's own words go to the log, not to the client.
        TransportError::Unavailable(_) => {
            tracing::warn!(%error, "admin route: the message transport cannot be reached");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .detail("the message transport cannot be reached")
        }
    }
}

fn consumer_name(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    path.map(|Path(consumer)| consumer)
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

async fn summary(State(admin): State<Admin>) -> Result<Response, Problem> {
    let lag = Outbox::lag(&admin.database).await.map_err(|error| {
        tracing::warn!(%error, "admin route: the outbox cannot be read");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail("the outbox cannot be read")
    })?;
    let mut consumers = Vec::with_capacity(admin.consumers.len());
    for name in admin.consumers.iter() {
        let depth = admin
            .transport
            .dead_letter_count(name)
            .await
            .map_err(|e| unavailable(&e))?;
        consumers.push(json!({"name": name, "dead_letters": depth}));
    }
    Ok(axum::Json(json!({
        "outbox": {
            "pending": lag.pending,
            "oldest_age_ms": lag.age_ms(shop_common::unix_millis()),
        },
        "consumers": consumers,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<usize>,
}

async fn list(
    State(admin): State<Admin>,
    consumer: Result<Path<String>, PathRejection>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let consumer = consumer_name(consumer)?;
    let params = query(params)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be 1 to {MAX_LISTED}"
        )));
    }
    admin.consumer(&consumer)?;
    let letters = admin
        .transport
        .dead_letters(&consumer, limit)
        .await
        .map_err(|e| unavailable(&e))?;
    let letters: Vec<_> = letters
        .into_iter()
        .map(|letter| {
            json!({
                "seq": letter.seq,
                "message_id": letter.message_id,
                "broker_id": letter.broker_id,
                "subject": letter.subject,
                "reason": letter.reason,
                "delivered": letter.delivered,
                "dead_at_ms": letter.dead_at_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({"consumer": consumer, "dead_letters": letters})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayParams {
    seq: Option<i64>,
}

async fn replay(
    State(admin): State<Admin>,
    consumer: Result<Path<String>, PathRejection>,
    params: Result<Query<ReplayParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let consumer = consumer_name(consumer)?;
    let params = query(params)?;
    if params.seq.is_some_and(|seq| seq <= 0) {
        return Err(Problem::bad_request("seq must be positive"));
    }
    admin.consumer(&consumer)?;
    let replayed = admin
        .transport
        .replay(&consumer, params.seq)
        .await
        .map_err(|e| unavailable(&e))?;
    if let (Some(seq), 0) = (params.seq, replayed) {
        return Err(Problem::not_found(format!(
            "{consumer} has no dead letter {seq}"
        )));
    }
    tracing::info!(%consumer, seq = ?params.seq, replayed, "dead letters replayed by an admin");
    let remaining = admin.transport.dead_letter_count(&consumer).await.ok();
    if let (Some(metrics), Some(depth)) = (&admin.metrics, remaining) {
        metrics.dead_letters(&consumer, depth);
    }
    Ok(
        axum::Json(json!({"consumer": consumer, "replayed": replayed, "remaining": remaining}))
            .into_response(),
    )
}
