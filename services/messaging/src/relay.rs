//! The relay: publishes what the outbox holds, in order, and deletes (or marks) what the broker
//! has.
//!
//! One relay is active per database at a time. On PostgreSQL, each round takes a
//! transaction-scoped advisory lock, so that replicas' relays take turns rather than publish a
//! row twice or a key's rows out of order; a relay that finds the lock taken does nothing that
//! round. On SQLite (the embedded default), the relays of one database file in one process
//! take turns on a lock of the process. A row is deleted (or, with
//! [`keep_published`](Relay::keep_published), marked published) only once the broker has
//! acknowledged it; a relay that dies between the acknowledgement and the mark publishes it
//! again, which the broker's de-duplication (the message id is `Nats-Msg-Id`) and the
//! consumers' inbox absorb.
//!
//! A running relay ([`Relay::run`]) is woken by the commits that enqueue on its database in its
//! own process, runs again within [`TURN_TAKEN_RETRY`] when another relay of the database held
//! the turn (so that a replica's commit is not left to the poll because another replica's relay
//! was busy), and polls as a fallback: the bound on the delay of a message whose own process
//! runs no relay. There is no `LISTEN`/`NOTIFY`: a transaction that notifies takes PostgreSQL's
//! notify lock, one for the whole cluster, through its commit, so every enqueuing transaction
//! would commit one after another.
//!
//! A broker that does not answer within the relay's [`publish_timeout`](Relay::publish_timeout)
//! counts as down: the round ends, its turn and connection are given back, and the batch is
//! published again after a back-off. A message the broker refuses for what it is
//! ([`PublishError::refused`]) is set aside ([`Outbox::failed`]) rather than block every
//! message after it; its key's later messages go on without it (an operator's alert, since a
//! refused message is a bug: the outbox already refuses what is too large at enqueue).

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use shop_common::on_tx;
use shop_common::store::{Database, DatabaseKey, StoreError, Tx};
use tokio::sync::watch;

use crate::metrics::MessagingMetrics;
use crate::outbox::{Outbox, OutboxError, Pending};
use crate::shared::PerKey;

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
    /// Whether the broker refused the message at `held` for what it is (too large, say), so
    /// that publishing it again cannot succeed; otherwise the broker is unavailable, and the
    /// message is published again after a back-off.
    pub refused: bool,
}

impl PublishError {
    /// The broker holds the first `held` messages, then could not be reached or did not
    /// answer: the rest are published again, in order, after a back-off.
    pub fn unavailable(held: usize, error: impl Into<BoxError>) -> Self {
        Self {
            held,
            error: error.into(),
            refused: false,
        }
    }

    /// The broker holds the first `held` messages, and refused the next for what it is: the
    /// relay sets that one aside ([`Outbox::failed`]) and goes on with the rest.
    pub fn refused(held: usize, error: impl Into<BoxError>) -> Self {
        Self {
            held,
            error: error.into(),
            refused: true,
        }
    }
}

/// Where the relay sends the outbox's messages: a transport's publishing side.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `batch` in its order and returns once the broker holds every message (one
    /// it already held, by id, counts as held). On failure, says how many of the first
    /// messages it holds, and whether the broker refused the next ([`PublishError`]). The
    /// relay gives up waiting after its [`publish_timeout`](Relay::publish_timeout), and then
    /// takes none of the batch as held.
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

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Messages the broker took, now out of the outbox (or marked published).
    pub published: usize,
    /// Messages the broker refused, now set aside ([`Outbox::failed`]).
    pub set_aside: usize,
    /// Another relay of the database held the turn, so this round did nothing (PostgreSQL).
    pub turn_taken: bool,
}

impl Round {
    fn add(self, other: Self) -> Self {
        Self {
            published: self.published + other.published,
            set_aside: self.set_aside + other.set_aside,
            turn_taken: self.turn_taken || other.turn_taken,
        }
    }
}

/// Per database, bumped when a transaction that enqueued commits: that database's relays in
/// this process wake (a counter, so that a wake while a relay is busy is seen when it next
/// waits).
static WAKE: LazyLock<PerKey<DatabaseKey, watch::Sender<u64>>> = LazyLock::new(PerKey::new);

/// Wakes the relays of `database` in this process (the outbox's after-commit hook).
pub(crate) fn wake(database: DatabaseKey) {
    if let Some(sender) = WAKE.get(&database) {
        sender.send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// The turn of the relays of one SQLite file in this process (SQLite has no advisory lock, and
/// two relays reading the same rows would publish them twice).
type SqliteTurn = Arc<tokio::sync::Mutex<()>>;

static SQLITE_TURNS: LazyLock<PerKey<PathBuf, tokio::sync::Mutex<()>>> = LazyLock::new(PerKey::new);

fn sqlite_turn(pool: &sqlx::SqlitePool) -> SqliteTurn {
    let options = pool.connect_options();
    let file = options.get_filename();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    SQLITE_TURNS.get_or_make(file)
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
    publish_timeout: Duration,
    sqlite_turn: Option<SqliteTurn>,
    metrics: Option<MessagingMetrics>,
    keep_published: bool,
}

/// The most batches one turn of a PostgreSQL relay publishes before it gives its turn back.
const BATCHES_PER_TURN: usize = 16;

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .field("publish_timeout", &self.publish_timeout)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay of `database`'s outbox to `publisher`, up to 256 messages a round.
    #[must_use]
    pub fn new(database: Database, publisher: Arc<dyn Publisher>) -> Self {
        let sqlite_turn = match &database {
            Database::Sqlite(pool) => Some(sqlite_turn(pool)),
            Database::Postgres(_) => None,
        };
        Self {
            database,
            publisher,
            batch: 256,
            poll: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(10),
            sqlite_turn,
            metrics: None,
            keep_published: false,
        }
    }

    /// Keeps what the broker holds in the outbox, marked published, until the sweeper prunes it
    /// past [`RETENTION`](crate::RETENTION), rather than delete it at once (the default). The
    /// broker keeps every message for its own retention either way; keeping them here too is
    /// for an operator who wants the outbox to say what was sent, and it costs the relay on
    /// PostgreSQL (an `UPDATE` writes a new version of the row into every index, where a
    /// `DELETE` writes none; BENCHMARKS.md).
    #[must_use]
    pub fn keep_published(mut self, keep: bool) -> Self {
        self.keep_published = keep;
        self
    }

    /// How often [`run`](Self::run) looks for messages without being woken (default 1 s):
    /// the bound on the delay of a message another process enqueued.
    #[must_use]
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// How long a publish may take before the broker counts as down (default 10 s). A
    /// PostgreSQL turn starts no batch once this long has passed since its first, so that a
    /// turn holds the lock and its connection at most twice this long (and the database's
    /// time); the longest shutdown waits for a round in hand is the same.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Counts what it publishes in `metrics`, and reads the outbox's lag into them after its
    /// rounds (at most once a second).
    #[must_use]
    pub fn metrics(mut self, metrics: MessagingMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// At most `batch` messages a round (at least one).
    #[must_use]
    pub fn batch(mut self, batch: u16) -> Self {
        self.batch = i64::from(batch.max(1));
        self
    }

    /// Relays until `stop` completes, then does one last round and returns (a round in hand is
    /// finished first). A
    /// round runs at once when a transaction that enqueued on this relay's database commits in
    /// this process, at least every [`poll`](Self::poll), and again straight away while rounds
    /// come back full or set a message aside. After a failed round it waits
    /// [`backoff_after`] the previous wait before trying again, whatever wakes it: the broker
    /// is down, and every message waits in the outbox.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        // Held while the relay runs: commits on its database wake it.
        let wake = WAKE.get_or_make(self.database.key());
        let woken = wake.subscribe();
        let batch = usize::try_from(self.batch).unwrap_or(usize::MAX);
        drive(|| self.relay_once(), batch, self.poll, woken, stop).await;
        // A last round for what the last requests enqueued (the service stops its relay once
        // no request runs), bounded by the publish timeout.
        if let Err(error) = self.relay_once().await {
            tracing::warn!(%error, "the last outbox round failed: published at the next start");
        }
    }

    /// One round (on PostgreSQL, a turn of up to 16 batches): publishes the oldest unpublished
    /// messages and deletes (or marks) those the broker took.
    /// Returns what it did: nothing when there was nothing to do, or another relay of the
    /// database holds the turn.
    ///
    /// # Errors
    ///
    /// The database failed, or the broker failed partway or did not answer within the
    /// [`publish_timeout`](Self::publish_timeout) (what it took is marked, and the failed
    /// message's attempt is counted with the error).
    pub async fn relay_once(&self) -> Result<Round, RelayError> {
        let round = self.round().await;
        if let Some(metrics) = &self.metrics {
            if matches!(round, Err(RelayError::Publish(_))) {
                metrics.publish_failed();
            }
            let now = shop_common::unix_millis();
            if metrics.lag_due(now)
                && let Ok(lag) = Outbox::lag(&self.database).await
            {
                metrics.outbox(lag, now);
            }
        }
        round
    }

    async fn round(&self) -> Result<Round, RelayError> {
        let now = shop_common::unix_millis();
        match &self.database {
            Database::Sqlite(_) => {
                let _turn = match &self.sqlite_turn {
                    Some(turn) => Some(turn.lock().await),
                    None => None,
                };
                // One connection: never held across the publish, which would stall every
                // handler.
                let batch = Outbox::pending(&self.database, self.batch).await?;
                if batch.is_empty() {
                    return Ok(Round::default());
                }
                let result = self.publish(&batch).await;
                let mut tx = self.database.begin().await?;
                let round = self.mark(&mut tx, &batch, result, now).await;
                finish(tx, round).await
            }
            Database::Postgres(_) => {
                // READ COMMITTED whatever the server's default: the rows read after the lock
                // must include the marks of the relay that held it before.
                let mut tx = self.database.begin_read_committed().await?;
                let turn: bool = on_tx!(&mut tx, conn => sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(RELAY_LOCK)
                    .fetch_one(&mut **conn)
                    .await)?;
                if !turn {
                    return Ok(Round {
                        turn_taken: true,
                        ..Round::default()
                    });
                }
                let round = self.pipelined(&mut tx, now).await;
                // What was marked stands even when the broker or the database failed partway
                // (a failed statement was rolled back to its savepoint): commit.
                finish(tx, round).await
            }
        }
    }

    /// A PostgreSQL turn: batches published one after another (never two of one key in flight),
    /// each batch marked while the next is published, while they come full, up to
    /// [`BATCHES_PER_TURN`] batches, and starting none once the
    /// [`publish_timeout`](Self::publish_timeout) has passed since the turn began. The
    /// database's work and the broker's overlap, and the turn's one transaction holds the
    /// advisory lock throughout.
    ///
    /// Each batch's database work runs under a savepoint: a failed statement undoes that
    /// batch's marks only (its messages are published again next turn, and the broker drops
    /// them by id), and the turn ends with that error.
    ///
    /// The batch read while another is in flight leaves out that one's rows by their `seq`,
    /// rather than read past its last: a row of a lower `seq` that committed meanwhile (its
    /// `seq` was drawn before the batch was read, its commit came after) comes next, before
    /// any later row of its key.
    async fn pipelined(&self, tx: &mut Tx, now: i64) -> Result<Round, RelayError> {
        let full = |batch: &[Pending]| i64::try_from(batch.len()).unwrap_or(i64::MAX) >= self.batch;
        let mut total = Round::default();
        let mut batch = Outbox::pending_in(tx, self.batch).await?;
        if batch.is_empty() {
            return Ok(total);
        }
        let started = tokio::time::Instant::now();
        let mut result = self.publish(&batch).await;
        for turn in 1.. {
            let savepoint = tx.savepoint().await?;
            let more = result.is_ok()
                && full(&batch)
                && turn < BATCHES_PER_TURN
                && started.elapsed() < self.publish_timeout;
            let step = async {
                let next = if more {
                    let in_flight: Vec<i64> = batch.iter().map(|pending| pending.seq).collect();
                    Outbox::pending_except_in(tx, &in_flight, self.batch).await?
                } else {
                    Vec::new()
                };
                if next.is_empty() {
                    let round = self.mark(tx, &batch, result, now).await?;
                    return Ok::<_, RelayError>((round, None));
                }
                // The next batch goes to the broker while this one is marked.
                let (marked, published) =
                    tokio::join!(self.mark(tx, &batch, result, now), self.publish(&next));
                Ok((marked?, Some((next, published))))
            };
            match step.await {
                Ok((round, None)) => return Ok(total.add(round)),
                Ok((round, Some((next, published)))) => {
                    total = total.add(round);
                    batch = next;
                    result = published;
                }
                Err(error) => {
                    // A broker's error leaves the transaction sound; a database's does not.
                    if matches!(error, RelayError::Outbox(_))
                        && let Err(rollback) = tx.rollback_to(savepoint).await
                    {
                        // The turn then commits nothing; the cause is still the first error.
                        tracing::warn!(%rollback, "the relay could not roll back to the batch's savepoint");
                    }
                    return Err(error);
                }
            }
        }
        unreachable!("the loop returns")
    }

    async fn mark(
        &self,
        tx: &mut Tx,
        batch: &[Pending],
        result: Result<(), PublishError>,
        now: i64,
    ) -> Result<Round, RelayError> {
        mark(
            tx,
            batch,
            result,
            now,
            self.metrics.as_ref(),
            self.keep_published,
        )
        .await
    }

    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        tokio::time::timeout(self.publish_timeout, self.publisher.publish(batch))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::unavailable(
                    0,
                    format!(
                        "no answer from the broker within {} ms",
                        self.publish_timeout.as_millis()
                    ),
                ))
            })
    }
}

/// Commits a round's transaction: a failed round's error says more than the commit's (which,
/// after a failed statement, is [`StoreError::Aborted`]).
async fn finish(tx: Tx, round: Result<Round, RelayError>) -> Result<Round, RelayError> {
    let committed = tx.commit().await;
    match (round, committed) {
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(error.into()),
        (Ok(round), Ok(())) => Ok(round),
    }
}

/// How soon a relay runs again after finding that another relay of its database held the turn
/// (rather than wait for the poll): what that relay read before this one's commit is published
/// by this one.
pub const TURN_TAKEN_RETRY: Duration = Duration::from_millis(25);

/// The loop of [`Relay::run`], over any round (so that its timing is tested on paused time).
async fn drive<R, Fut>(
    mut round: R,
    batch: usize,
    poll: Duration,
    mut woken: watch::Receiver<u64>,
    stop: impl Future<Output = ()>,
) where
    R: FnMut() -> Fut,
    Fut: Future<Output = Result<Round, RelayError>>,
{
    let mut backoff = Duration::ZERO;
    tokio::pin!(stop);
    loop {
        // Seen now: a commit from here on wakes the next wait.
        woken.borrow_and_update();
        let wait = match round().await {
            // Says nothing of the broker: a relay that was failing keeps its back-off (the
            // relay holding the turn may be failing too), one that was not tries again soon.
            Ok(done) if done.turn_taken => {
                if backoff.is_zero() {
                    TURN_TAKEN_RETRY.min(poll)
                } else {
                    backoff
                }
            }
            Ok(done) => {
                backoff = Duration::ZERO;
                if done.published + done.set_aside >= batch || done.set_aside > 0 {
                    Duration::ZERO
                } else {
                    poll
                }
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

/// Marks what the broker took as published; counts a failed attempt on the message it stopped
/// at, and sets that message aside when the broker refused it. Returns what the round did, or
/// the broker's error when it was unavailable.
async fn mark(
    tx: &mut Tx,
    batch: &[Pending],
    result: Result<(), PublishError>,
    now: i64,
    metrics: Option<&MessagingMetrics>,
    keep: bool,
) -> Result<Round, RelayError> {
    let held = match &result {
        Ok(()) => batch.len(),
        Err(error) => error.held.min(batch.len()),
    };
    // One statement for the whole prefix, by its rows' own `seq`s (not a range: on PostgreSQL a
    // row of a lower `seq` may commit after the batch was read, and must stay unpublished).
    let seqs: Vec<i64> = batch[..held].iter().map(|pending| pending.seq).collect();
    if !seqs.is_empty() {
        // Deleted by default: an UPDATE writes a new version of the row into every index.
        let (sqlite, postgres) = if keep {
            (
                "UPDATE messaging_outbox SET published_at_ms = $1 \
                 WHERE seq IN (SELECT value FROM json_each($2))",
                "UPDATE messaging_outbox SET published_at_ms = $1 WHERE seq = ANY($2)",
            )
        } else {
            (
                "DELETE FROM messaging_outbox WHERE $1 IS NOT NULL \
                 AND seq IN (SELECT value FROM json_each($2))",
                "DELETE FROM messaging_outbox WHERE $1::BIGINT IS NOT NULL AND seq = ANY($2)",
            )
        };
        on_tx!(tx,
            sqlite conn => sqlx::query(sqlite)
            .bind(now)
            // A list of integers always serializes.
            .bind(serde_json::to_string(&seqs).unwrap_or_default())
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()),
            postgres conn => sqlx::query(postgres)
            .bind(now)
            .bind(&seqs)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()),
        )?;
        if let Some(metrics) = metrics {
            for pending in &batch[..held] {
                metrics.published(&pending.subject);
            }
        }
    }
    let error = match result {
        Ok(()) => {
            return Ok(Round {
                published: held,
                set_aside: 0,
                turn_taken: false,
            });
        }
        Err(error) => error,
    };
    let Some(failed) = batch.get(held) else {
        return Err(error.into());
    };
    let reason: String = error.error.to_string().chars().take(1_000).collect();
    let failed_at = error.refused.then_some(now);
    on_tx!(tx, conn => sqlx::query(
        "UPDATE messaging_outbox SET attempts = attempts + 1, last_error = $1, failed_at_ms = $2 \
         WHERE seq = $3",
    )
    .bind(&reason)
    .bind(failed_at)
    .bind(failed.seq)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))?;
    if error.refused {
        if let Some(metrics) = metrics {
            metrics.set_aside();
        }
        tracing::error!(
            message_id = %failed.id,
            subject = %failed.subject,
            error = %reason,
            "the broker refused an outbox message: set aside, the rest go on"
        );
        return Ok(Round {
            published: held,
            set_aside: 1,
            turn_taken: false,
        });
    }
    Err(error.into())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::time::Instant;

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

    fn published(n: usize) -> Result<Round, RelayError> {
        Ok(Round {
            published: n,
            set_aside: 0,
            turn_taken: false,
        })
    }

    fn down() -> Result<Round, RelayError> {
        Err(PublishError::unavailable(0, "connection refused").into())
    }

    /// Drives the loop over `script` (then empty rounds) with a batch of 10 and a poll of 1 s,
    /// waking it at each of `wakes` (ms from the start); returns when each round ran, in ms.
    async fn rounds_at(
        script: Vec<Result<Round, RelayError>>,
        wakes: &[u64],
        until_ms: u64,
    ) -> Vec<u64> {
        let start = Instant::now();
        let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (waker, woken) = watch::channel(0_u64);
        let mut script = VecDeque::from(script);
        let round = {
            let ran = ran.clone();
            move || {
                let at = u64::try_from(start.elapsed().as_millis()).unwrap();
                ran.lock().unwrap().push(at);
                std::future::ready(script.pop_front().unwrap_or_else(|| published(0)))
            }
        };
        let wakes: Vec<u64> = wakes.to_vec();
        let waking = tokio::spawn(async move {
            for at in wakes {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                waker.send_modify(|n| *n += 1);
            }
            waker
        });
        drive(
            round,
            10,
            Duration::from_secs(1),
            woken,
            tokio::time::sleep_until(start + Duration::from_millis(until_ms)),
        )
        .await;
        drop(waking.await.unwrap());
        ran.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_polls_and_a_wake_runs_a_round_at_once() {
        assert_eq!(rounds_at(vec![], &[], 2_500).await, [0, 1_000, 2_000]);
        assert_eq!(
            rounds_at(vec![], &[300, 1_100], 2_500).await,
            [0, 300, 1_100, 2_100]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_rounds_and_set_aside_messages_run_the_next_round_at_once() {
        let set_aside = Ok(Round {
            published: 3,
            set_aside: 1,
            turn_taken: false,
        });
        assert_eq!(
            rounds_at(
                vec![published(10), published(10), set_aside, published(4)],
                &[],
                1_500
            )
            .await,
            [0, 0, 0, 0, 1_000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_finds_the_turn_taken_tries_again_soon() {
        let taken = || {
            Ok(Round {
                turn_taken: true,
                ..Round::default()
            })
        };
        assert_eq!(
            rounds_at(vec![taken(), taken(), published(3)], &[], 1_100).await,
            [0, 25, 50, 1_050]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_relay_that_finds_the_turn_taken_keeps_its_back_off() {
        let taken = Ok(Round {
            turn_taken: true,
            ..Round::default()
        });
        // Down (100 ms), the turn taken (100 ms again), down (200 ms), then up.
        assert_eq!(
            rounds_at(vec![down(), taken, down(), published(0)], &[], 1_500).await,
            [0, 100, 200, 400, 1_400]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_rounds_back_off_doubling_and_wakes_do_not_cut_the_wait() {
        // Down four times, woken all the while, then up: 100, 200, 400, 800 ms apart.
        let wakes: Vec<u64> = (1..30).map(|n| n * 50).collect();
        let ran = rounds_at(vec![down(), down(), down(), down()], &wakes, 1_600).await;
        assert_eq!(ran[..5], [0, 100, 300, 700, 1_500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_back_off() {
        let ran = rounds_at(vec![down(), down(), published(0), down()], &[], 1_500).await;
        // 0 fails, 100 fails, 300 publishes, 1300 (a poll) fails, 1400 after the first back-off.
        assert_eq!(ran, [0, 100, 300, 1_300, 1_400]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_loop_while_it_waits() {
        let ran = rounds_at(vec![down()], &[], 50).await;
        assert_eq!(ran, [0]);
    }
}
