//! The inbox: which messages a consumer has already had its effect for.
//!
//! Delivery is at least once: a broker redelivers a message whose acknowledgement it did not
//! get, and a relay may publish a message twice. A consumer records the message's id in the
//! inbox within the transaction of its effect ([`Inbox::first_time`]); a message seen before
//! finds its id there and is acknowledged without a second effect. On PostgreSQL, of two
//! deliveries of one message handled at once, the second waits on the first's row and learns
//! its outcome: recorded if the first committed, free if it rolled back.

use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};

use crate::message::MessageId;

/// The inbox: its operations take the consumer's transaction or database.
#[derive(Debug, Clone, Copy)]
pub struct Inbox;

impl Inbox {
    /// Records, within `tx`, that `consumer` handles `message`. `true` the first time: go on
    /// with the effect in the same transaction. `false` when it already has: roll back and
    /// acknowledge the message.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn first_time(
        tx: &mut Tx,
        consumer: &str,
        message: MessageId,
    ) -> Result<bool, StoreError> {
        let inserted = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO messaging_inbox (consumer, message_id, received_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message.to_string())
        .bind(shop_common::unix_millis())
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(inserted == 1)
    }

    /// Whether `consumer` has had its effect for `message` (outside any transaction: for a
    /// look before handling, not instead of [`first_time`](Self::first_time)).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn contains(
        database: &Database,
        consumer: &str,
        message: MessageId,
    ) -> Result<bool, StoreError> {
        let found: i64 = on_db!(database, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM messaging_inbox WHERE consumer = $1 AND message_id = $2",
        )
        .bind(consumer)
        .bind(message.to_string())
        .fetch_one(pool)
        .await)?;
        Ok(found > 0)
    }

    /// Forgets what was received before `before_ms` (milliseconds since the epoch); returns
    /// how many records. Keep them longer than a message can be redelivered (the broker's
    /// retention of unacknowledged messages, and the outbox's republishing window).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn prune(database: &Database, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            on_db!(database, pool => sqlx::query("DELETE FROM messaging_inbox WHERE received_at_ms < $1")
                .bind(before_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?,
        )
    }
}
