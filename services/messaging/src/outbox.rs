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
    /// The message is larger than a broker takes ([`Outbox::MAX_PAYLOAD`]): refused here,
    /// where the writer can still handle it, rather than by the broker after the commit.
    #[error("message of {size} bytes is larger than the {max} a broker takes")]
    TooLarge {
        /// The envelope's size in bytes.
        size: usize,
        /// [`Outbox::MAX_PAYLOAD`].
        max: usize,
    },
    /// A saga command's step is not one a participant takes ([`saga::send`](crate::saga::send)).
    #[error("saga step refused: {0}")]
    Saga(&'static str),
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

/// A message's parts, as [`Outbox::enqueue_parts`] writes them.
pub(crate) struct Parts<'a, B: ?Sized> {
    pub(crate) kind: &'a str,
    pub(crate) version: u16,
    pub(crate) subject: &'a str,
    pub(crate) key: &'a str,
    pub(crate) body: &'a B,
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
    FROM messaging_outbox WHERE published_at_ms IS NULL AND failed_at_ms IS NULL \
    ORDER BY seq LIMIT $1";

const PENDING_EXCEPT_SQLITE: &str = "SELECT seq, id, subject, key, headers, payload, attempts \
    FROM messaging_outbox WHERE published_at_ms IS NULL AND failed_at_ms IS NULL \
    AND seq NOT IN (SELECT value FROM json_each($2)) ORDER BY seq LIMIT $1";

const PENDING_EXCEPT_POSTGRES: &str = "SELECT seq, id, subject, key, headers, payload, attempts \
    FROM messaging_outbox WHERE published_at_ms IS NULL AND failed_at_ms IS NULL \
    AND NOT (seq = ANY($2)) ORDER BY seq LIMIT $1";

fn parse_id(id: &str) -> Result<MessageId, StoreError> {
    id.parse()
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn decode(rows: Vec<PendingRow>) -> Result<Vec<Pending>, OutboxError> {
    rows.into_iter()
        .map(|(seq, id, subject, key, headers, payload, attempts)| {
            Ok(Pending {
                seq,
                id: parse_id(&id)?,
                subject,
                key,
                headers: serde_json::from_str(&headers)?,
                payload,
                attempts,
            })
        })
        .collect()
}

/// A message the broker refused for what it is, set aside by the relay (see
/// [`Outbox::failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Enqueue order; what [`Outbox::retry`] takes.
    pub seq: i64,
    /// The message's id.
    pub id: MessageId,
    /// Where it was to be published.
    pub subject: String,
    /// [`Message::KIND`].
    pub kind: String,
    /// Its ordering key.
    pub key: String,
    /// When it was set aside, in milliseconds since the epoch.
    pub failed_at_ms: i64,
    /// The broker's answer.
    pub error: String,
}

/// How far the outbox is behind: what the broker does not have yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Messages waiting to be published (not counting those set aside).
    pub pending: u64,
    /// When the oldest of them was enqueued, in milliseconds since the epoch.
    pub oldest_at_ms: Option<i64>,
}

impl Lag {
    /// The age of the oldest waiting message at `now_ms`: zero when none waits.
    #[must_use]
    pub fn age_ms(&self, now_ms: i64) -> u64 {
        self.oldest_at_ms.map_or(0, |at| {
            u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0)
        })
    }
}

/// The outbox: its operations take the caller's transaction or database.
#[derive(Debug, Clone, Copy)]
pub struct Outbox;

impl Outbox {
    /// The largest envelope [`enqueue`](Self::enqueue) takes, in bytes: NATS's default
    /// `max_payload` (1 MiB).
    pub const MAX_PAYLOAD: usize = 1024 * 1024;

    /// Writes `message` within `tx`, with the trace context of the current span in its
    /// headers, so that its consumers join the trace. It is published once `tx` commits (the
    /// commit wakes the relays of `tx`'s database in this process, see
    /// [`Relay::run`](crate::Relay::run)); if `tx` rolls back, it never was.
    ///
    /// **Order.** Messages with one [`key`](Message::key) are published in the order their
    /// rows were written, which is the order of their commits when each writer first locks the
    /// aggregate's row (its `UPDATE`, or `SELECT … FOR UPDATE`) and enqueues after. Two
    /// transactions that enqueue for one key without such a lock may commit in either order;
    /// their messages are then published in the order they were enqueued, not committed.
    ///
    /// # Errors
    ///
    /// The database fails (roll `tx` back), the message does not serialize, or its envelope
    /// is larger than [`MAX_PAYLOAD`](Self::MAX_PAYLOAD) (nothing was written: `tx` can go on).
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
        Self::enqueue_parts(
            tx,
            Parts {
                kind: M::KIND,
                version: M::VERSION,
                subject: &message.subject(),
                key: &message.key(),
                body: message,
            },
            context,
        )
        .await
    }

    /// Writes a message given by its parts (a typed [`Message`], or one stored as JSON and
    /// sent again, such as a saga step's reply).
    pub(crate) async fn enqueue_parts<B: serde::Serialize + ?Sized>(
        tx: &mut Tx,
        parts: Parts<'_, B>,
        context: Context,
    ) -> Result<MessageId, OutboxError> {
        let id = MessageId::new();
        let now = shop_common::unix_millis();
        let envelope = Envelope {
            id,
            kind: parts.kind.to_owned(),
            version: parts.version,
            occurred_at_ms: now,
            key: parts.key.to_owned(),
            saga: context.saga,
            causation_id: context.causation_id,
            body: parts.body,
        };
        let payload = serde_json::to_vec(&envelope)?;
        if payload.len() > Self::MAX_PAYLOAD {
            return Err(OutboxError::TooLarge {
                size: payload.len(),
                max: Self::MAX_PAYLOAD,
            });
        }
        let mut headers = HashMap::new();
        mainstay_telemetry::propagation::inject_message(&tracing::Span::current(), &mut headers);
        let headers = serde_json::to_string(&headers)?;
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO messaging_outbox \
             (id, subject, kind, version, key, headers, payload, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(parts.subject)
        .bind(parts.kind)
        .bind(i32::from(parts.version))
        .bind(parts.key)
        .bind(&headers)
        .bind(&payload)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        let database = tx.database();
        tx.after_commit(move || crate::relay::wake(database));
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

    /// [`pending_in`](Self::pending_in), leaving out the messages whose `seq` is in `except`
    /// (a batch in flight). Not "the messages after the last of `except`": a message of a lower
    /// `seq` may have committed since `except` was read, and comes first.
    ///
    /// # Errors
    ///
    /// The database fails, or a row is not one this crate wrote.
    pub async fn pending_except_in(
        tx: &mut Tx,
        except: &[i64],
        limit: i64,
    ) -> Result<Vec<Pending>, OutboxError> {
        let rows: Vec<PendingRow> = on_tx!(tx,
            sqlite conn => sqlx::query_as(PENDING_EXCEPT_SQLITE)
                .bind(limit)
                // A list of integers always serializes.
                .bind(serde_json::to_string(except).unwrap_or_default())
                .fetch_all(&mut **conn)
                .await,
            postgres conn => sqlx::query_as(PENDING_EXCEPT_POSTGRES)
                .bind(limit)
                .bind(except)
                .fetch_all(&mut **conn)
                .await,
        )?;
        decode(rows)
    }

    /// How far the outbox is behind (for readiness, metrics and the ops console): a growing
    /// lag means the broker is down or the relay is not running.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn lag(database: &Database) -> Result<Lag, OutboxError> {
        let (pending, oldest_at_ms): (i64, Option<i64>) = on_db!(database, pool => sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at_ms) FROM messaging_outbox \
             WHERE published_at_ms IS NULL AND failed_at_ms IS NULL",
        )
        .fetch_one(pool)
        .await)?;
        Ok(Lag {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_at_ms,
        })
    }

    /// The messages the relay set aside because the broker refused them for what they are,
    /// oldest first: an operator's to look at, and to [`retry`](Self::retry) once the broker
    /// takes them.
    ///
    /// # Errors
    ///
    /// The database fails, or a row is not one this crate wrote.
    pub async fn failed(database: &Database, limit: i64) -> Result<Vec<SetAside>, OutboxError> {
        type Row = (i64, String, String, String, String, i64, Option<String>);
        let rows: Vec<Row> = on_db!(database, pool => sqlx::query_as(
            "SELECT seq, id, subject, kind, key, failed_at_ms, last_error FROM messaging_outbox \
             WHERE failed_at_ms IS NOT NULL ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await)?;
        rows.into_iter()
            .map(|(seq, id, subject, kind, key, failed_at_ms, error)| {
                Ok(SetAside {
                    seq,
                    id: parse_id(&id)?,
                    subject,
                    kind,
                    key,
                    failed_at_ms,
                    error: error.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Puts a message the relay set aside back in line, under its own id and `seq`: it is
    /// published next round. Returns whether there was such a message.
    ///
    /// Setting a message aside gives up its key's order: the messages of its key enqueued
    /// after it were published while it waited, so it comes after them.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn retry(database: &Database, seq: i64) -> Result<bool, OutboxError> {
        let updated = on_db!(database, pool => sqlx::query(
            "UPDATE messaging_outbox SET failed_at_ms = NULL WHERE seq = $1 AND failed_at_ms IS NOT NULL",
        )
        .bind(seq)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        if updated == 1 {
            crate::relay::wake(database.key());
        }
        Ok(updated == 1)
    }

    /// Deletes messages the broker has held since before `before_ms` (milliseconds since the
    /// epoch), a bounded batch per statement so that no statement holds the table for long;
    /// returns how many. Keep them at least as long as the broker's de-duplication window,
    /// and as long as an operator may want to read what was sent.
    ///
    /// # Errors
    ///
    /// The database fails (what was deleted before stays deleted).
    pub async fn prune(database: &Database, before_ms: i64) -> Result<u64, OutboxError> {
        Ok(crate::shared::delete_in_batches(
            database,
            "DELETE FROM messaging_outbox WHERE seq IN (SELECT seq FROM messaging_outbox \
             WHERE published_at_ms IS NOT NULL AND published_at_ms < $1 LIMIT $2)",
            before_ms,
        )
        .await?)
    }
}
