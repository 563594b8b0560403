//! The local transport: the delivery contract of [`crate::transport`] kept by a database
//! instead of a broker, for the embedded default (no server to run).
//!
//! Its tables live in a database of their own (a `bus.db` beside the services' files, say),
//! migrated by [`LocalTransport::open`] and recorded in [`MIGRATIONS_TABLE`]: a log of messages,
//! each stored once by its id; per consumer, a cursor into the log and the deliveries not yet
//! settled; and the dead letters. Everything survives a restart: a message in a producer's
//! outbox is published by its relay when the producer starts again, and a message in the log is
//! delivered to every consumer that has not settled it, when that consumer starts again (one
//! that was in flight when the process stopped, after its `ack_wait`).
//!
//! Consumers in this process are woken at once by a publish on their database; others look
//! again within their fetch's wait. It works on PostgreSQL too, which its tests use; production uses JetStream.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use shop_common::store::{Database, DatabaseKey, Dialect, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::outbox::{Outbox, Pending};
use crate::relay::{PublishError, Publisher};
use crate::shared::PerKey;
use crate::transport::{
    Broadcast, ConsumerConfig, DeadLetter, Deliveries, Delivery, Settle, Settlement, Subscription,
    Transport, TransportError, check_consumer_name, check_subscribed, subject_matches,
    valid_subject,
};

/// The table the local transport's migrations are recorded in.
pub const MIGRATIONS_TABLE: &str = "_messaging_local_migrations";

static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/local/sqlite");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});

static POSTGRES_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/local/postgres");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});

/// The advisory lock publishers to a PostgreSQL log take turns on.
const PUBLISH_LOCK: i64 = 0x6d73_6275_7370_7562; // "msbuspub"

/// How many log entries one fetch looks through for a consumer's subjects.
const SCAN: i64 = 1_000;

/// How many of its messages a subscription holds read ahead (at most 1 MiB each).
const SUBSCRIPTION_PAGE: usize = 16;

/// How often a waiting subscription looks at the log for what another process published
/// (this process's publishes wake it at once).
const SUBSCRIPTION_POLL: Duration = Duration::from_secs(1);

/// How often a waiting consumer looks at the log for what another process published (this
/// process's publishes wake it at once): a saga's step crosses processes on the embedded
/// default, and each crossing may wait this long.
const FETCH_POLL: Duration = Duration::from_millis(50);

/// The local transports open in this process, by database URL
/// ([`LocalTransport::open_url`]).
static OPEN: LazyLock<
    tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Inner>>>,
> = LazyLock::new(Default::default);

struct Inner {
    database: Database,
    /// Bumped on every change a waiting fetch may be waiting for (a publish, a retry, a replay),
    /// shared by every transport of this process on the same database.
    changed: Arc<watch::Sender<u64>>,
}

/// The change signals of the databases local transports are open on in this process.
static CHANGED: LazyLock<PerKey<DatabaseKey, watch::Sender<u64>>> = LazyLock::new(PerKey::new);

impl Inner {
    fn bump(&self) {
        self.changed
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// The local transport over one database. Clones share it.
#[derive(Clone)]
pub struct LocalTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("dialect", &self.inner.database.dialect())
            .finish_non_exhaustive()
    }
}

impl LocalTransport {
    /// Opens the transport on `database`, creating or updating its tables.
    ///
    /// # Errors
    ///
    /// The database fails, or a migration does.
    pub async fn open(database: Database) -> Result<Self, TransportError> {
        database
            .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                changed: CHANGED.get_or_make(database.key()),
                database,
            }),
        })
    }

    /// The database the transport's log is in.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// Opens the transport on the database at `url`, or shares the one this process has open
    /// there: services of one process on one bus share its pool (on SQLite, one writer rather
    /// than one per service, queueing for the file's lock) and its change signal (one's
    /// publish wakes the others' consumers at once, where another process's waits for their
    /// next look at the log).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), or the database cannot be reached.
    pub async fn open_url(url: &str) -> Result<Self, TransportError> {
        let mut open = OPEN.lock().await;
        open.retain(|_, inner| inner.strong_count() > 0);
        if let Some(inner) = open.get(url).and_then(std::sync::Weak::upgrade) {
            return Ok(Self { inner });
        }
        let transport = Self::open(Database::connect(url).await?).await?;
        open.insert(url.to_owned(), Arc::downgrade(&transport.inner));
        Ok(transport)
    }
}

impl LocalTransport {
    /// Forgets the dead letters made before `dead_before_ms`, then the messages stored before
    /// `messages_before_ms` that no consumer has still to settle nor keeps as a dead letter
    /// (milliseconds since the epoch); returns how many of each. A consumer whose cursor is
    /// behind a forgotten message never sees it, as on JetStream past a stream's `max_age`;
    /// [`prune_expired`](Transport::prune_expired) keeps JetStream's ages
    /// ([`EVENTS_MAX_AGE`](crate::jetstream::EVENTS_MAX_AGE),
    /// [`DEAD_LETTERS_MAX_AGE`](crate::jetstream::DEAD_LETTERS_MAX_AGE)).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn prune(
        &self,
        messages_before_ms: i64,
        dead_before_ms: i64,
    ) -> Result<(u64, u64), TransportError> {
        let database = &self.inner.database;
        let dead = on_db!(database, pool => sqlx::query(
            "DELETE FROM bus_dead_letters WHERE dead_at_ms < $1",
        )
        .bind(dead_before_ms)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        let messages = crate::shared::delete_in_batches(
            database,
            "DELETE FROM bus_messages WHERE seq IN (SELECT m.seq FROM bus_messages m \
             WHERE m.stored_at_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM bus_deliveries d WHERE d.seq = m.seq) \
             AND NOT EXISTS (SELECT 1 FROM bus_dead_letters l WHERE l.seq = m.seq) \
             ORDER BY m.seq LIMIT $2)",
            messages_before_ms,
        )
        .await?;
        Ok((messages, dead))
    }
}

#[async_trait]
impl Publisher for LocalTransport {
    async fn publish(&self, batch: &[Pending]) -> Result<(), PublishError> {
        // What a broker would refuse, refused here too: the first such message ends the batch.
        let refused = batch.iter().position(|pending| {
            pending.payload.len() > Outbox::MAX_PAYLOAD || !valid_subject(&pending.subject)
        });
        let storable = &batch[..refused.unwrap_or(batch.len())];
        let stored = async {
            let mut tx = self.inner.database.begin_read_committed().await?;
            if tx.dialect() == Dialect::Postgres {
                // Publishers take turns, so that the log's seqs commit in their order: a
                // consumer's cursor moves past a seq only once every lower one is visible.
                on_tx!(&mut tx, conn => sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PUBLISH_LOCK)
                    .execute(&mut **conn)
                    .await
                    .map(|done| done.rows_affected()))?;
            }
            let now = shop_common::unix_millis();
            for pending in storable {
                let headers = serde_json::to_string(&pending.headers)
                    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                on_tx!(&mut tx, conn => sqlx::query(
                    "INSERT INTO bus_messages (id, subject, headers, payload, stored_at_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(pending.id.to_string())
                .bind(&pending.subject)
                .bind(&headers)
                .bind(&pending.payload)
                .bind(now)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
            }
            tx.commit().await?;
            Ok::<_, TransportError>(())
        };
        // One transaction: the log holds all of what it was given, or none of it.
        stored
            .await
            .map_err(|error| PublishError::unavailable(0, error))?;
        self.inner.bump();
        match refused {
            None => Ok(()),
            Some(at) => Err(PublishError::refused(
                at,
                format!(
                    "a message of {} bytes on {:?}: larger than {} bytes, or not a subject",
                    batch[at].payload.len(),
                    batch[at].subject.chars().take(64).collect::<String>(),
                    Outbox::MAX_PAYLOAD
                ),
            )),
        }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    async fn consumer(
        &self,
        config: &ConsumerConfig,
    ) -> Result<Box<dyn Deliveries>, TransportError> {
        config.validate()?;
        let subjects = serde_json::to_string(&config.subjects)
            .map_err(|e| TransportError::Invalid(e.to_string()))?;
        let ack_wait_ms = millis(config.ack_wait);
        on_db!(&self.inner.database, pool => sqlx::query(
            "INSERT INTO bus_consumers (name, subjects, max_deliver, ack_wait_ms, cursor) \
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT (name) DO UPDATE SET \
             subjects = excluded.subjects, max_deliver = excluded.max_deliver, \
             ack_wait_ms = excluded.ack_wait_ms",
        )
        .bind(&config.name)
        .bind(&subjects)
        .bind(i32::try_from(config.max_deliver).unwrap_or(i32::MAX))
        .bind(ack_wait_ms)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(Box::new(LocalDeliveries {
            inner: self.inner.clone(),
            config: config.clone(),
        }))
    }

    async fn dead_letters(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, TransportError> {
        type Row = (i64, String, String, Vec<u8>, String, i32, i64);
        check_consumer_name(consumer)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<Row> = on_db!(&self.inner.database, pool => sqlx::query_as(
            "SELECT d.dead_seq, m.id, m.subject, m.payload, d.reason, d.delivered, d.dead_at_ms \
             FROM bus_dead_letters d JOIN bus_messages m ON m.seq = d.seq \
             WHERE d.consumer = $1 ORDER BY d.dead_seq LIMIT $2",
        )
        .bind(consumer)
        .bind(limit)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, broker_id, subject, payload, reason, delivered, dead_at_ms)| DeadLetter {
                    seq,
                    consumer: consumer.to_owned(),
                    broker_id,
                    message_id: crate::consumer::envelope_id(&payload),
                    subject,
                    reason,
                    delivered: u32::try_from(delivered).unwrap_or(0),
                    dead_at_ms,
                },
            )
            .collect())
    }

    async fn prune_expired(&self) -> Result<u64, TransportError> {
        let now = shop_common::unix_millis();
        let before = |age: Duration| now - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let (messages, dead) = self
            .prune(
                before(crate::jetstream::EVENTS_MAX_AGE),
                before(crate::jetstream::DEAD_LETTERS_MAX_AGE),
            )
            .await?;
        Ok(messages + dead)
    }

    async fn dead_letter_count(&self, consumer: &str) -> Result<u64, TransportError> {
        check_consumer_name(consumer)?;
        let count: i64 = on_db!(&self.inner.database, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM bus_dead_letters WHERE consumer = $1",
        )
        .bind(consumer)
        .fetch_one(pool)
        .await)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn replay(&self, consumer: &str, seq: Option<i64>) -> Result<u64, TransportError> {
        check_consumer_name(consumer)?;
        let database = &self.inner.database;
        let mut tx = database.begin_read_committed().await?;
        let now = shop_common::unix_millis();
        let dead: Vec<(i64, i64)> = match seq {
            Some(seq) => on_tx!(&mut tx, conn => sqlx::query_as(
                "SELECT dead_seq, seq FROM bus_dead_letters WHERE consumer = $1 AND dead_seq = $2",
            )
            .bind(consumer)
            .bind(seq)
            .fetch_all(&mut **conn)
            .await)?,
            None => on_tx!(&mut tx, conn => sqlx::query_as(
                "SELECT dead_seq, seq FROM bus_dead_letters WHERE consumer = $1 \
                 ORDER BY dead_seq LIMIT $2",
            )
            .bind(consumer)
            .bind(i64::try_from(crate::transport::MAX_REPLAYED).unwrap_or(i64::MAX))
            .fetch_all(&mut **conn)
            .await)?,
        };
        for (dead_seq, message_seq) in &dead {
            // Delivered again as if for the first time: a full max_deliver ahead of it.
            on_tx!(&mut tx, conn => sqlx::query(
                "INSERT INTO bus_deliveries (consumer, seq, delivered, due_at_ms) \
                 VALUES ($1, $2, 0, $3) ON CONFLICT (consumer, seq) DO UPDATE SET \
                 delivered = 0, due_at_ms = excluded.due_at_ms, last_error = NULL",
            )
            .bind(consumer)
            .bind(message_seq)
            .bind(now)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
            on_tx!(&mut tx, conn => sqlx::query("DELETE FROM bus_dead_letters WHERE dead_seq = $1")
                .bind(dead_seq)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
        }
        tx.commit().await?;
        self.inner.bump();
        Ok(u64::try_from(dead.len()).unwrap_or(u64::MAX))
    }

    async fn subscribe(
        &self,
        subjects: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        check_subscribed(subjects)?;
        // From the end of the log: publishers to it take turns, so every seq below the last
        // is already visible, and none is skipped.
        let end: Option<i64> = on_db!(&self.inner.database, pool => sqlx::query_scalar(
            "SELECT MAX(seq) FROM bus_messages",
        )
        .fetch_one(pool)
        .await)?;
        Ok(Box::new(LocalSubscription {
            changed: self.inner.changed.subscribe(),
            inner: self.inner.clone(),
            subjects: subjects.to_vec(),
            cursor: end.unwrap_or(0),
            ready: std::collections::VecDeque::new(),
        }))
    }
}

/// A subscription of the local transport: a reader that follows the log from where it was
/// opened.
struct LocalSubscription {
    inner: Arc<Inner>,
    changed: watch::Receiver<u64>,
    subjects: Vec<String>,
    /// The last seq read.
    cursor: i64,
    /// Read and not yet returned.
    ready: std::collections::VecDeque<Broadcast>,
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn next(&mut self) -> Result<Broadcast, TransportError> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(message);
            }
            self.changed.borrow_and_update();
            // Subjects first: the bodies of other subjects' messages are never read.
            let scanned: Vec<(i64, String)> = on_db!(&self.inner.database, pool => sqlx::query_as(
                "SELECT seq, subject FROM bus_messages WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(self.cursor)
            .bind(SCAN)
            .fetch_all(pool)
            .await)?;
            if scanned.is_empty() {
                tokio::select! {
                    _ = self.changed.changed() => {}
                    () = tokio::time::sleep(SUBSCRIPTION_POLL) => {}
                }
                continue;
            }
            for (seq, subject) in scanned {
                if self.ready.len() == SUBSCRIPTION_PAGE {
                    break;
                }
                if self
                    .subjects
                    .iter()
                    .any(|filter| subject_matches(filter, &subject))
                {
                    let (headers, payload): (String, Vec<u8>) = on_db!(&self.inner.database, pool => sqlx::query_as(
                            "SELECT headers, payload FROM bus_messages WHERE seq = $1",
                        )
                        .bind(seq)
                        .fetch_one(pool)
                        .await)?;
                    self.ready.push_back(Broadcast {
                        subject,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        payload,
                    });
                }
                self.cursor = seq;
            }
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A consumer of the local transport.
struct LocalDeliveries {
    inner: Arc<Inner>,
    config: ConsumerConfig,
}

#[async_trait]
impl Deliveries for LocalDeliveries {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let start = Instant::now();
        let deadline = start
            .checked_add(wait)
            .unwrap_or(start + Duration::from_secs(86_400));
        let mut changed = self.inner.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let taken = self.take(max.max(1)).await?;
            if !taken.deliveries.is_empty() {
                return Ok(taken.deliveries);
            }
            if taken.more {
                continue; // a page of other subjects' messages: look further at once
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(taken.deliveries);
            }
            let until = taken.next_due_ms.map_or(deadline, |due| {
                let in_ms = u64::try_from(due - shop_common::unix_millis()).unwrap_or(0);
                deadline.min(now + Duration::from_millis(in_ms))
            });
            let until = until.min(now + FETCH_POLL);
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

type MessageRow = (String, String, String, Vec<u8>);

/// What one [`LocalDeliveries::take`] found.
struct Taken {
    deliveries: Vec<Delivery>,
    /// When the next delivery in flight or waiting falls due, in ms since the epoch.
    next_due_ms: Option<i64>,
    /// Whether it stopped at a full page of the log without reaching its end.
    more: bool,
}

/// The consumer as stored: what every replica's fetch goes by.
type ConsumerRow = (i64, String, i32, i64);

impl LocalDeliveries {
    /// Takes up to `max` deliveries in one transaction: first the messages due again, then new
    /// ones on the consumer's subjects.
    async fn take(&self, max: usize) -> Result<Taken, TransportError> {
        let database = &self.inner.database;
        let name = self.config.name.as_str();
        let now = shop_common::unix_millis();
        let mut tx = database.begin_read_committed().await?;
        // One fetch at a time per consumer (replicas on PostgreSQL), by the consumer as stored
        // (the replica that opened it last may have changed its subjects).
        let lock = match tx.dialect() {
            Dialect::Postgres => {
                "SELECT cursor, subjects, max_deliver, ack_wait_ms FROM bus_consumers \
                 WHERE name = $1 FOR UPDATE"
            }
            Dialect::Sqlite => {
                "SELECT cursor, subjects, max_deliver, ack_wait_ms FROM bus_consumers \
                 WHERE name = $1"
            }
        };
        let (cursor, subjects, max_deliver, ack_wait): ConsumerRow = on_tx!(&mut tx, conn => sqlx::query_as(lock)
            .bind(name)
            .fetch_one(&mut **conn)
            .await)?;
        let subjects: Vec<String> = serde_json::from_str(&subjects).unwrap_or_default();
        let receives = |subject: &str| {
            subjects
                .iter()
                .any(|filter| crate::transport::subject_matches(filter, subject))
        };

        // Delivered max_deliver times and never settled (the handler crashed or hung every
        // time): a dead letter. One DELETE decides which, so that none is lost between it and
        // the copy.
        let exhausted: Vec<(i64, i32, Option<String>)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "DELETE FROM bus_deliveries WHERE consumer = $1 AND due_at_ms <= $3 AND delivered >= $2 \
             RETURNING seq, delivered, last_error",
        )
        .bind(name)
        .bind(max_deliver)
        .bind(now)
        .fetch_all(&mut **conn)
        .await)?;
        for (seq, delivered, last_error) in exhausted {
            let reason = match last_error {
                Some(error) => format!(
                    "delivered {delivered} times, never settled within ack_wait (earlier: {error})"
                ),
                None => format!("delivered {delivered} times, never settled within ack_wait"),
            };
            insert_dead_letter(&mut tx, name, seq, &reason, delivered, now).await?;
        }

        // Due again: retried, or not settled within ack_wait.
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut taken: Vec<(i64, i32)> = on_tx!(&mut tx, conn => sqlx::query_as(
            "UPDATE bus_deliveries SET delivered = delivered + 1, due_at_ms = $3 \
             WHERE consumer = $1 AND seq IN (SELECT seq FROM bus_deliveries \
             WHERE consumer = $1 AND due_at_ms <= $2 ORDER BY seq LIMIT $4) \
             RETURNING seq, delivered",
        )
        .bind(name)
        .bind(now)
        .bind(now.saturating_add(ack_wait))
        .bind(limit)
        .fetch_all(&mut **conn)
        .await)?;
        taken.sort_unstable();

        // New: the log after the cursor, on the consumer's subjects.
        let mut more = false;
        if taken.len() < max {
            let scanned: Vec<(i64, String)> = on_tx!(&mut tx, conn => sqlx::query_as(
                "SELECT seq, subject FROM bus_messages WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(cursor)
            .bind(SCAN)
            .fetch_all(&mut **conn)
            .await)?;
            more = i64::try_from(scanned.len()).is_ok_and(|n| n == SCAN);
            let mut new_cursor = cursor;
            for (seq, subject) in scanned {
                if taken.len() == max {
                    break;
                }
                new_cursor = seq;
                if !receives(&subject) {
                    continue;
                }
                on_tx!(&mut tx, conn => sqlx::query(
                    "INSERT INTO bus_deliveries (consumer, seq, delivered, due_at_ms) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (consumer, seq) DO NOTHING",
                )
                .bind(name)
                .bind(seq)
                .bind(now.saturating_add(ack_wait))
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
                taken.push((seq, 1));
            }
            if new_cursor != cursor {
                on_tx!(&mut tx, conn => sqlx::query("UPDATE bus_consumers SET cursor = $2 WHERE name = $1")
                    .bind(name)
                    .bind(new_cursor)
                    .execute(&mut **conn)
                    .await
                    .map(|done| done.rows_affected()))?;
            }
        }

        let mut deliveries = Vec::with_capacity(taken.len());
        for (seq, delivered) in taken {
            let (id, subject, headers, payload) = load(&mut tx, seq).await?;
            let headers: HashMap<String, String> =
                serde_json::from_str(&headers).unwrap_or_default();
            let delivered = u32::try_from(delivered).unwrap_or(0);
            deliveries.push(Delivery::new(
                id,
                subject,
                headers,
                payload,
                delivered,
                Box::new(LocalSettle {
                    inner: self.inner.clone(),
                    consumer: self.config.name.clone(),
                    seq,
                    delivered,
                }),
            ));
        }
        let next_due_ms: Option<i64> = on_tx!(&mut tx, conn => sqlx::query_scalar(
            "SELECT MIN(due_at_ms) FROM bus_deliveries WHERE consumer = $1",
        )
        .bind(name)
        .fetch_one(&mut **conn)
        .await)?;
        tx.commit().await?;
        Ok(Taken {
            deliveries,
            next_due_ms,
            more,
        })
    }
}

/// Keeps `consumer`'s message `seq` among its dead letters, with why.
async fn insert_dead_letter(
    tx: &mut Tx,
    consumer: &str,
    seq: i64,
    reason: &str,
    delivered: i32,
    now: i64,
) -> Result<(), TransportError> {
    on_tx!(tx, conn => sqlx::query(
        "INSERT INTO bus_dead_letters (consumer, seq, reason, delivered, dead_at_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, seq) DO NOTHING",
    )
    .bind(consumer)
    .bind(seq)
    .bind(truncate(reason))
    .bind(delivered)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

async fn load(tx: &mut Tx, seq: i64) -> Result<MessageRow, TransportError> {
    Ok(on_tx!(tx, conn => sqlx::query_as(
        "SELECT id, subject, headers, payload FROM bus_messages WHERE seq = $1",
    )
    .bind(seq)
    .fetch_one(&mut **conn)
    .await)?)
}

/// Settles one delivery of the local transport: only the attempt it came with (a settle that
/// comes after the message was delivered again does nothing; the later attempt settles it).
struct LocalSettle {
    inner: Arc<Inner>,
    consumer: String,
    seq: i64,
    delivered: u32,
}

#[async_trait]
impl Settle for LocalSettle {
    async fn settle(
        self: Box<Self>,
        _delivery: &Delivery,
        how: Settlement,
    ) -> Result<(), TransportError> {
        let database = &self.inner.database;
        let now = shop_common::unix_millis();
        let delivered = i64::from(self.delivered);
        match how {
            Settlement::Ack => {
                on_db!(database, pool => sqlx::query(
                    "DELETE FROM bus_deliveries WHERE consumer = $1 AND seq = $2 AND delivered = $3",
                )
                .bind(&self.consumer)
                .bind(self.seq)
                .bind(delivered)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
                return Ok(());
            }
            Settlement::Retry { after, reason } => {
                on_db!(database, pool => sqlx::query(
                    "UPDATE bus_deliveries SET due_at_ms = $4, last_error = $5 \
                     WHERE consumer = $1 AND seq = $2 AND delivered = $3",
                )
                .bind(&self.consumer)
                .bind(self.seq)
                .bind(delivered)
                .bind(now.saturating_add(millis(after)))
                .bind(truncate(&reason))
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
            }
            Settlement::DeadLetter { reason } => {
                let mut tx = database.begin_read_committed().await?;
                let moved = on_tx!(&mut tx, conn => sqlx::query(
                    "DELETE FROM bus_deliveries WHERE consumer = $1 AND seq = $2 AND delivered = $3",
                )
                .bind(&self.consumer)
                .bind(self.seq)
                .bind(delivered)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
                if moved == 1 {
                    let delivered = i32::try_from(self.delivered).unwrap_or(i32::MAX);
                    insert_dead_letter(&mut tx, &self.consumer, self.seq, &reason, delivered, now)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        self.inner.bump();
        Ok(())
    }
}

/// A reason as stored: at most 1 000 characters.
pub(crate) fn truncate(reason: &str) -> String {
    reason.chars().take(1_000).collect()
}
