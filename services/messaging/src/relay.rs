//! The relay: publishes what the outbox holds, in order, and marks what the broker has.
//!
//! One relay is active per database at a time. On PostgreSQL, each round takes a
//! transaction-scoped advisory lock, so that replicas' relays take turns rather than publish a
//! row twice or a key's rows out of order; a relay that finds the lock taken does nothing that
//! round. On SQLite (the embedded default, one process) there is one relay. A row is marked
//! published only once the broker has acknowledged it; a relay that dies between the
//! acknowledgement and the mark publishes it again, which the broker's de-duplication (the
//! message id is `Nats-Msg-Id`) and the consumers' inbox absorb.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use shop_common::on_tx;
use shop_common::store::{Database, StoreError, Tx, TxConn};
use tokio::sync::watch;

use crate::outbox::{Outbox, OutboxError, Pending};

/// An error from a broker, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A broker did not take all of a batch.
#[derive(Debug, thiserror::Error)]
#[error("the broker took {held} of the batch, then: {error}")]
pub struct PublishError {
    /// How many of the batch's first messages the broker holds.
    pub held: usize,
    /// Why it stopped there.
    pub error: BoxError,
}

/// Where the relay sends the outbox's messages: a transport's publishing side.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `batch` in its order and returns once the broker holds every message (one
    /// it already held, by id, counts as held). On failure, says how many of the first
    /// messages it holds: the rest are published again, in order, next round.
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError>;
}

/// The relay could not do its round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or marked.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The broker failed partway; what it took is marked.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<sqlx::Error> for RelayError {
    fn from(error: sqlx::Error) -> Self {
        Self::Outbox(error.into())
    }
}

impl From<StoreError> for RelayError {
    fn from(error: StoreError) -> Self {
        Self::Outbox(error.into())
    }
}

/// Bumped when a transaction that enqueued commits: every relay of the process wakes (a
/// counter, so that a wake while a relay is busy is seen when it next waits).
static WAKE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Wakes this process's relays (the outbox's after-commit hook).
pub(crate) fn wake() {
    WAKE.send_modify(|count| *count = count.wrapping_add(1));
}

/// The wait after a failed round: doubling from 100 ms, at most 30 s.
#[must_use]
pub fn backoff_after(previous: Duration) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(30);
    if previous.is_zero() {
        FIRST
    } else {
        previous.saturating_mul(2).min(MOST)
    }
}

/// The advisory lock the relays of one PostgreSQL database take turns on.
const RELAY_LOCK: i64 = 0x6d73_6f75_7462_6f78; // "msoutbox"

/// Publishes the outbox of one database through a [`Publisher`].
#[derive(Clone)]
pub struct Relay {
    database: Database,
    publisher: Arc<dyn Publisher>,
    batch: i64,
    poll: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay of `database`'s outbox to `publisher`, up to 256 messages a round.
    #[must_use]
    pub fn new(database: Database, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            database,
            publisher,
            batch: 256,
            poll: Duration::from_secs(1),
        }
    }

    /// How often [`run`](Self::run) looks for messages without being woken (default 1 s):
    /// the bound on the delay of a message another process enqueued.
    #[must_use]
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Relays until `stop` completes, then returns (a round in hand is finished first). A
    /// round runs at once when a transaction of this process that enqueued commits, at least
    /// every [`poll`](Self::poll), and again straight away while rounds come back full.
    /// After a failed round it waits [`backoff_after`] the previous wait before trying again,
    /// whatever wakes it: the broker is down, and every message waits in the outbox.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let mut woken = WAKE.subscribe();
        let mut backoff = Duration::ZERO;
        tokio::pin!(stop);
        loop {
            // Seen now: a commit from here on wakes the next wait.
            woken.borrow_and_update();
            let wait = match self.relay_once().await {
                Ok(published) if i64::try_from(published).is_ok_and(|n| n == self.batch) => {
                    backoff = Duration::ZERO;
                    Duration::ZERO
                }
                Ok(_) => {
                    backoff = Duration::ZERO;
                    self.poll
                }
                Err(error) => {
                    backoff = backoff_after(backoff);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "outbox relay round failed");
                    backoff
                }
            };
            if wait.is_zero() {
                tokio::select! {
                    biased;
                    () = &mut stop => return,
                    () = std::future::ready(()) => continue,
                }
            }
            let failing = !backoff.is_zero();
            tokio::select! {
                biased;
                () = &mut stop => return,
                _ = woken.changed(), if !failing => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// At most `batch` messages a round (at least one).
    #[must_use]
    pub fn batch(mut self, batch: u16) -> Self {
        self.batch = i64::from(batch.max(1));
        self
    }

    /// One round: publishes the oldest unpublished messages and marks those the broker took.
    /// Returns how many it published; zero when there was nothing to do, or another relay of
    /// the database holds the turn.
    ///
    /// # Errors
    ///
    /// The database failed, or the broker failed partway (what it took is marked, and the
    /// failed message's attempt is counted with the error).
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let now = shop_common::unix_millis();
        match &self.database {
            Database::Sqlite(_) => {
                // One connection: never held across the publish, which would stall every
                // handler. One relay per process is the rule here.
                let batch = Outbox::pending(&self.database, self.batch).await?;
                if batch.is_empty() {
                    return Ok(0);
                }
                let result = self.publisher.publish(&batch).await;
                let mut tx = self.database.begin().await?;
                let published = mark(&mut tx, &batch, result, now).await;
                tx.commit().await?;
                published
            }
            Database::Postgres(_) => {
                let mut tx = self.database.begin().await?;
                let turn: bool = on_tx!(&mut tx, conn => sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(RELAY_LOCK)
                    .fetch_one(&mut **conn)
                    .await)?;
                if !turn {
                    return Ok(0);
                }
                let batch = Outbox::pending_in(&mut tx, self.batch).await?;
                if batch.is_empty() {
                    return Ok(0); // the transaction rolls back, and the turn is given up
                }
                let result = self.publisher.publish(&batch).await;
                let published = mark(&mut tx, &batch, result, now).await;
                tx.commit().await?;
                published
            }
        }
    }
}

/// Marks what the broker took as published, and counts a failed attempt on the message it
/// stopped at. Returns what the round published, or the broker's error.
async fn mark(
    tx: &mut Tx,
    batch: &[Pending],
    result: Result<(), PublishError>,
    now: i64,
) -> Result<usize, RelayError> {
    let held = match &result {
        Ok(()) => batch.len(),
        Err(error) => error.held.min(batch.len()),
    };
    // One statement for the whole prefix, by its rows' own `seq`s (not a range: on PostgreSQL a
    // row of a lower `seq` may commit after the batch was read, and must stay unpublished).
    let seqs: Vec<i64> = batch[..held].iter().map(|pending| pending.seq).collect();
    if !seqs.is_empty() {
        match tx.conn() {
            TxConn::Sqlite(conn) => {
                let seqs = serde_json::to_string(&seqs).map_err(OutboxError::from)?;
                sqlx::query(
                    "UPDATE messaging_outbox SET published_at_ms = $1 \
                     WHERE seq IN (SELECT value FROM json_each($2))",
                )
                .bind(now)
                .bind(seqs)
                .execute(&mut **conn)
                .await?;
            }
            TxConn::Postgres(conn) => {
                sqlx::query("UPDATE messaging_outbox SET published_at_ms = $1 WHERE seq = ANY($2)")
                    .bind(now)
                    .bind(&seqs)
                    .execute(&mut **conn)
                    .await?;
            }
        }
    }
    match result {
        Ok(()) => Ok(held),
        Err(error) => {
            if let Some(failed) = batch.get(held) {
                let reason: String = error.error.to_string().chars().take(1_000).collect();
                on_tx!(tx, conn => sqlx::query(
                    "UPDATE messaging_outbox SET attempts = attempts + 1, last_error = $1 WHERE seq = $2",
                )
                .bind(&reason)
                .bind(failed.seq)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
            }
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_tenth_of_a_second_to_half_a_minute() {
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..12 {
            wait = backoff_after(wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(
            waits,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000
            ]
        );
    }
}
