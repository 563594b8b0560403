//! The transactional outbox: a message written in the transaction of the state change it
//! announces, so that the change and the message commit together or not at all.

use std::collections::HashMap;

use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};

use crate::message::{Envelope, Message, MessageId, SagaRef};

/// The outbox could not take a message.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed; the caller's transaction should be rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message does not serialize to JSON (a map with keys that are not strings).
    #[error("message does not serialize: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<sqlx::Error> for OutboxError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// What else a message carries besides its body (see [`Outbox::enqueue_with`]).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The saga step it belongs to.
    pub saga: Option<SagaRef>,
    /// The message whose handling sends it.
    pub causation_id: Option<MessageId>,
}

/// A message the broker does not have yet, as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Enqueue order.
    pub seq: i64,
    /// The message's id.
    pub id: MessageId,
    /// Where it is published.
    pub subject: String,
    /// Its ordering key.
    pub key: String,
    /// Transport headers (the trace context).
    pub headers: HashMap<String, String>,
    /// The [`Envelope`], JSON.
    pub payload: Vec<u8>,
    /// Failed publish attempts so far.
    pub attempts: i32,
}

type PendingRow = (i64, String, String, String, String, Vec<u8>, i32);

const PENDING_SQL: &str = "SELECT seq, id, subject, key, headers, payload, attempts \
    FROM messaging_outbox WHERE published_at_ms IS NULL ORDER BY seq LIMIT $1";

fn decode(rows: Vec<PendingRow>) -> Result<Vec<Pending>, OutboxError> {
    rows.into_iter()
        .map(|(seq, id, subject, key, headers, payload, attempts)| {
            Ok(Pending {
                seq,
                id: id
                    .parse()
                    .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
                subject,
                key,
                headers: serde_json::from_str(&headers)?,
                payload,
                attempts,
            })
        })
        .collect()
}

/// The outbox: its operations take the caller's transaction or database.
#[derive(Debug, Clone, Copy)]
pub struct Outbox;

impl Outbox {
    /// Writes `message` within `tx`, with the trace context of the current span in its
    /// headers, so that its consumers join the trace. It is published once `tx` commits (the
    /// commit wakes this process's relays, see [`Relay::run`](crate::Relay::run)); if `tx`
    /// rolls back, it never was.
    ///
    /// # Errors
    ///
    /// The database fails (roll `tx` back), or the message does not serialize.
    pub async fn enqueue<M: Message>(tx: &mut Tx, message: &M) -> Result<MessageId, OutboxError> {
        Self::enqueue_with(tx, message, Context::default()).await
    }

    /// [`enqueue`](Self::enqueue), with the saga step and the message that caused it.
    ///
    /// # Errors
    ///
    /// The database fails (roll `tx` back), or the message does not serialize.
    pub async fn enqueue_with<M: Message>(
        tx: &mut Tx,
        message: &M,
        context: Context,
    ) -> Result<MessageId, OutboxError> {
        let id = MessageId::new();
        let now = shop_common::unix_millis();
        let key = message.key();
        let envelope = Envelope {
            id,
            kind: M::KIND.to_owned(),
            version: M::VERSION,
            occurred_at_ms: now,
            key: key.clone().into_owned(),
            saga: context.saga,
            causation_id: context.causation_id,
            body: message,
        };
        let payload = serde_json::to_vec(&envelope)?;
        let mut headers = HashMap::new();
        mainstay_telemetry::propagation::inject_message(&tracing::Span::current(), &mut headers);
        let headers = serde_json::to_string(&headers)?;
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO messaging_outbox \
             (id, subject, kind, version, key, headers, payload, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(message.subject().as_ref())
        .bind(M::KIND)
        .bind(i32::from(M::VERSION))
        .bind(key.as_ref())
        .bind(&headers)
        .bind(&payload)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        tx.after_commit(crate::relay::wake);
        Ok(id)
    }

    /// Up to `limit` messages the broker does not have yet, in enqueue order.
    ///
    /// # Errors
    ///
    /// The database fails, or a row is not one this crate wrote.
    pub async fn pending(database: &Database, limit: i64) -> Result<Vec<Pending>, OutboxError> {
        let rows: Vec<PendingRow> = on_db!(database, pool => sqlx::query_as(PENDING_SQL)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        decode(rows)
    }

    /// [`pending`](Self::pending), within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails, or a row is not one this crate wrote.
    pub async fn pending_in(tx: &mut Tx, limit: i64) -> Result<Vec<Pending>, OutboxError> {
        let rows: Vec<PendingRow> = on_tx!(tx, conn => sqlx::query_as(PENDING_SQL)
            .bind(limit)
            .fetch_all(&mut **conn)
            .await)?;
        decode(rows)
    }
}
