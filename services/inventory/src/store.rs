//! The inventory's store, on PostgreSQL and SQLite through the kit's store pattern
//! (`shop_common::store`): one SQL for both dialects.
//!
//! Every change of a stock row goes through a statement that cannot take it below zero (a
//! conditional `UPDATE`, and `CHECK`s behind it), and is written to the ledger in the same
//! transaction. A hold moves out of `RESERVED` by a conditional `UPDATE` of its status, which
//! also serialises a release and a commit of one order that race: the second finds the status
//! gone and does nothing.

use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The most one product may have on hand.
pub const MAX_ON_HAND: i64 = 1_000_000_000;

/// One product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Level {
    /// The product (the catalog's id).
    pub sku: String,
    /// How many are in the warehouse.
    pub on_hand: i64,
    /// How many of those orders hold.
    pub reserved: i64,
}

impl Level {
    /// How many can still be reserved.
    #[must_use]
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// What a reservation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every line is held (now, or by an earlier reservation of the order).
    Reserved,
    /// Nothing is held: these products have too few available (or none at all).
    Short(Vec<String>),
    /// Nothing is held: the order's hold was released or expired before.
    Released,
}

/// What a commit came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commitment {
    /// What the order held is out of stock for good (now, or before).
    Committed,
    /// The order's hold had been released or expired, and these products have too few
    /// available to take its lines again: nothing changed.
    Short(Vec<String>),
    /// The order never held anything.
    Nothing,
    /// Another commit of the order's released hold came first: roll back, and try again.
    Raced,
}

/// How a hold ended without being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Released by its saga (a compensation).
    Released,
    /// Released by the sweeper, past its time.
    Expired,
}

impl Ending {
    fn status(self) -> &'static str {
        match self {
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Released => "release",
            Self::Expired => "expiry",
        }
    }
}

/// Stock, holds and the ledger, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StockStore {
    db: Database,
}

type Line = (String, i64);

impl StockStore {
    /// The store on `database`, migrated.
    ///
    /// # Errors
    ///
    /// A migration fails.
    pub async fn open(database: &Database) -> Result<Self, StoreError> {
        database
            .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
            .await?;
        Ok(Self {
            db: database.clone(),
        })
    }

    /// The database, for transactions spanning this store and the outbox.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How many products have a stock row.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn count(&self) -> Result<i64, StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM stock")
            .fetch_one(pool)
            .await)?,
        )
    }

    /// One product's stock, if it has a row.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn level(&self, sku: &str) -> Result<Option<Level>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT sku, on_hand, reserved FROM stock WHERE sku = $1",
        )
        .bind(sku)
        .fetch_optional(pool)
        .await)?)
    }

    /// Adds `quantity` to a product's stock, creating its row (with none on hand, for 0);
    /// `None`, and nothing changed, when that would take it past [`MAX_ON_HAND`].
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn restock(
        &self,
        sku: &str,
        quantity: i64,
        reason: &str,
    ) -> Result<Option<Level>, StoreError> {
        let now = shop_common::unix_millis();
        let mut tx = self.db.begin_read_committed().await?;
        let level: Option<Level> = on_tx!(&mut tx, conn => sqlx::query_as(
            "INSERT INTO stock (sku, on_hand, reserved, updated_at_ms) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = stock.on_hand + excluded.on_hand, \
             updated_at_ms = excluded.updated_at_ms \
             WHERE stock.on_hand + excluded.on_hand <= $4 \
             RETURNING sku, on_hand, reserved",
        )
        .bind(sku)
        .bind(quantity)
        .bind(now)
        .bind(MAX_ON_HAND)
        .fetch_optional(&mut **conn)
        .await)?;
        if level.is_some() {
            ledger(&mut tx, sku, quantity, 0, reason, None, now).await?;
            tx.commit().await?;
        }
        Ok(level)
    }

    /// Holds every line for `order_id` until `expires_at_ms`, or none, within `tx`. `lines`
    /// are merged by product and taken in product order (so that concurrent reservations lock
    /// rows in one order and never deadlock).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn reserve(
        tx: &mut Tx,
        order_id: &str,
        lines: &[Line],
        expires_at_ms: i64,
    ) -> Result<Reservation, StoreError> {
        let now = shop_common::unix_millis();
        // The hold first: a release of this order in flight waits for it, or it for the
        // release (and then finds it). Stock rows are locked after it, in product order.
        if !claim(tx, order_id, "RESERVED", expires_at_ms, now).await? {
            return Ok(match status(tx, order_id).await?.as_deref() {
                Some("RESERVED" | "COMMITTED") => Reservation::Reserved,
                _ => Reservation::Released,
            });
        }
        let lines = merged(lines);
        let (taken, short) = take(
            tx,
            &lines,
            "UPDATE stock SET reserved = reserved + $2, updated_at_ms = $3 \
             WHERE sku = $1 AND on_hand - reserved >= $2",
            "UPDATE stock SET reserved = reserved - $2, updated_at_ms = $3 WHERE sku = $1",
            now,
        )
        .await?;
        if !short.is_empty() {
            // As if it never came: the order may be reserved again.
            on_tx!(tx, conn => sqlx::query("DELETE FROM holds WHERE order_id = $1")
                .bind(order_id)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
            return Ok(Reservation::Short(short));
        }
        for (sku, quantity) in &taken {
            on_tx!(tx, conn => sqlx::query(
                "INSERT INTO hold_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
            )
            .bind(order_id)
            .bind(sku)
            .bind(quantity)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
            ledger(tx, sku, 0, *quantity, "reserve", Some(order_id), now).await?;
        }
        Ok(Reservation::Reserved)
    }

    /// Gives back what `order_id` holds, within `tx`; returns whether it held anything. An
    /// order with no hold gets a released one, so that a reservation arriving after its
    /// release is refused.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn release(tx: &mut Tx, order_id: &str, how: Ending) -> Result<bool, StoreError> {
        let now = shop_common::unix_millis();
        // Claimed first: a reservation of this order in flight is waited for, then released.
        if claim(tx, order_id, how.status(), 0, now).await? {
            return Ok(false);
        }
        if !moved(tx, order_id, how.status(), now).await? {
            return Ok(false);
        }
        each_line(
            tx,
            order_id,
            "UPDATE stock SET reserved = reserved - $2, updated_at_ms = $3 WHERE sku = $1",
            (0, -1),
            how.reason(),
            now,
        )
        .await?;
        Ok(true)
    }

    /// Takes what `order_id` holds out of stock for good, within `tx`. A hold released or
    /// expired meanwhile is taken again from what is available, if there is enough.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn commit(tx: &mut Tx, order_id: &str) -> Result<Commitment, StoreError> {
        let now = shop_common::unix_millis();
        if moved(tx, order_id, "COMMITTED", now).await? {
            each_line(
                tx,
                order_id,
                "UPDATE stock SET on_hand = on_hand - $2, reserved = reserved - $2, \
                 updated_at_ms = $3 WHERE sku = $1",
                (-1, -1),
                "commit",
                now,
            )
            .await?;
            return Ok(Commitment::Committed);
        }
        match status(tx, order_id).await?.as_deref() {
            Some("COMMITTED") => Ok(Commitment::Committed),
            None => Ok(Commitment::Nothing),
            Some(_) => {
                // Released or expired, and the payment captured since: take the lines again.
                let lines = lines_of(tx, order_id).await?;
                if lines.is_empty() {
                    return Ok(Commitment::Nothing);
                }
                let (taken, short) = take(
                    tx,
                    &lines,
                    "UPDATE stock SET on_hand = on_hand - $2, updated_at_ms = $3 \
                     WHERE sku = $1 AND on_hand - reserved >= $2",
                    "UPDATE stock SET on_hand = on_hand + $2, updated_at_ms = $3 WHERE sku = $1",
                    now,
                )
                .await?;
                if !short.is_empty() {
                    return Ok(Commitment::Short(short));
                }
                // Once: of two commits of a released hold at once, the second finds it taken
                // (its transaction rolls back, the stock it took with it, and it is retried).
                let done = on_tx!(tx, conn => sqlx::query(
                    "UPDATE holds SET status = 'COMMITTED', updated_at_ms = $2 \
                     WHERE order_id = $1 AND status IN ('RELEASED', 'EXPIRED')",
                )
                .bind(order_id)
                .bind(now)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
                if done != 1 {
                    return Ok(Commitment::Raced);
                }
                for (sku, quantity) in &taken {
                    ledger(
                        tx,
                        sku,
                        -quantity,
                        0,
                        "commit after release",
                        Some(order_id),
                        now,
                    )
                    .await?;
                }
                Ok(Commitment::Committed)
            }
        }
    }

    /// Puts what `order_id` committed back on hand, within `tx` (its refund, before the parcel
    /// left); whether it was put back now (`false`: it was before, or the order committed
    /// nothing). Once per order, however often it is asked.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn give_back(tx: &mut Tx, order_id: &str) -> Result<bool, StoreError> {
        let now = shop_common::unix_millis();
        // Marked first: of two returns at once, the second waits for the first, then finds it
        // marked (PostgreSQL), or the database is written by one at a time (SQLite).
        let marked = on_tx!(tx, conn => sqlx::query(
            "UPDATE holds SET returned_at_ms = $2, updated_at_ms = $2 \
             WHERE order_id = $1 AND status = 'COMMITTED' AND returned_at_ms IS NULL",
        )
        .bind(order_id)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        if marked != 1 {
            return Ok(false);
        }
        each_line(
            tx,
            order_id,
            "UPDATE stock SET on_hand = on_hand + $2, updated_at_ms = $3 WHERE sku = $1",
            (1, 0),
            "return",
            now,
        )
        .await?;
        Ok(true)
    }

    /// Orders whose holds are past their time, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn expired(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT order_id FROM holds WHERE status = 'RESERVED' AND expires_at_ms < $1 \
             ORDER BY expires_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(pool)
        .await)?)
    }

    /// How many units each order has taken out of stock for good and not given back (its
    /// ledger's `on_hand` changes, negated), by order; orders that took none are absent.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn taken(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT order_id, CAST(-SUM(on_hand_delta) AS BIGINT) FROM stock_ledger \
             WHERE order_id IS NOT NULL GROUP BY order_id HAVING SUM(on_hand_delta) <> 0",
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().collect())
    }

    /// What is wrong with the stock, for tests and the chaos suite: each product whose
    /// `on_hand` or `reserved` differs from its ledger's sums, or whose `reserved` differs from
    /// what its `RESERVED` holds hold. Empty when all is well. (`on_hand - reserved` cannot go
    /// negative: the table's `CHECK`s refuse it.)
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn audit(&self) -> Result<Vec<String>, StoreError> {
        type Row = (String, i64, i64, i64, i64, i64);
        let rows: Vec<Row> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT s.sku, s.on_hand, s.reserved, \
             CAST(COALESCE((SELECT SUM(l.on_hand_delta) FROM stock_ledger l WHERE l.sku = s.sku), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(l.reserved_delta) FROM stock_ledger l WHERE l.sku = s.sku), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(h.quantity) FROM hold_lines h JOIN holds o \
                       ON o.order_id = h.order_id WHERE h.sku = s.sku AND o.status = 'RESERVED'), 0) \
                  AS BIGINT) \
             FROM stock s ORDER BY s.sku",
        )
        .fetch_all(pool)
        .await)?;
        let mut wrong = Vec::new();
        for (sku, on_hand, reserved, ledger_on_hand, ledger_reserved, held) in rows {
            if on_hand != ledger_on_hand || reserved != ledger_reserved {
                wrong.push(format!(
                    "{sku}: on hand {on_hand} and reserved {reserved}, the ledger says \
                     {ledger_on_hand} and {ledger_reserved}"
                ));
            }
            if reserved != held {
                wrong.push(format!(
                    "{sku}: reserved {reserved}, the open holds hold {held}"
                ));
            }
        }
        Ok(wrong)
    }
}

/// `lines` with one entry per product, in product order.
fn merged(lines: &[Line]) -> Vec<Line> {
    let mut merged = std::collections::BTreeMap::<&str, i64>::new();
    for (sku, quantity) in lines {
        *merged.entry(sku).or_default() += quantity;
    }
    merged
        .into_iter()
        .map(|(sku, quantity)| (sku.to_owned(), quantity))
        .collect()
}

/// Runs `take` for each line (a conditional `UPDATE` of `$1` sku, `$2` quantity, `$3` now);
/// if any finds too few, runs `undo` for those taken, so that nothing changed. Returns what
/// was taken and what was short.
async fn take(
    tx: &mut Tx,
    lines: &[Line],
    take: &'static str,
    undo: &'static str,
    now: i64,
) -> Result<(Vec<Line>, Vec<String>), StoreError> {
    let (mut taken, mut short) = (Vec::new(), Vec::new());
    for (sku, quantity) in lines {
        let done = on_tx!(tx, conn => sqlx::query(take)
            .bind(sku)
            .bind(quantity)
            .bind(now)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
        if done == 1 {
            taken.push((sku.clone(), *quantity));
        } else {
            short.push(sku.clone());
        }
    }
    if !short.is_empty() {
        for (sku, quantity) in &taken {
            on_tx!(tx, conn => sqlx::query(undo)
                .bind(sku)
                .bind(quantity)
                .bind(now)
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()))?;
        }
    }
    Ok((taken, short))
}

/// Inserts `order_id`'s hold as `status` unless it has one; whether it was inserted. On
/// PostgreSQL it waits for a hold of the order being inserted by another transaction.
async fn claim(
    tx: &mut Tx,
    order_id: &str,
    status: &str,
    expires_at_ms: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let done = on_tx!(tx, conn => sqlx::query(
        "INSERT INTO holds (order_id, status, expires_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status)
    .bind(expires_at_ms)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(done == 1)
}

async fn status(tx: &mut Tx, order_id: &str) -> Result<Option<String>, StoreError> {
    Ok(
        on_tx!(tx, conn => sqlx::query_scalar("SELECT status FROM holds WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut **conn)
        .await)?,
    )
}

/// Moves `order_id`'s hold from `RESERVED` to `to`; whether it was `RESERVED`. On PostgreSQL a
/// second mover waits for the first's transaction, then finds the status gone.
async fn moved(tx: &mut Tx, order_id: &str, to: &str, now: i64) -> Result<bool, StoreError> {
    let done = on_tx!(tx, conn => sqlx::query(
        "UPDATE holds SET status = $2, updated_at_ms = $3 \
         WHERE order_id = $1 AND status = 'RESERVED'",
    )
    .bind(order_id)
    .bind(to)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(done == 1)
}

async fn lines_of(tx: &mut Tx, order_id: &str) -> Result<Vec<Line>, StoreError> {
    Ok(on_tx!(tx, conn => sqlx::query_as(
        "SELECT sku, quantity FROM hold_lines WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(&mut **conn)
    .await)?)
}

/// Runs `update` (`$1` sku, `$2` quantity, `$3` now) for each of `order_id`'s lines, each with
/// its ledger entry: `on_hand` and `reserved` are the signs of its deltas.
async fn each_line(
    tx: &mut Tx,
    order_id: &str,
    update: &'static str,
    (on_hand, reserved): (i64, i64),
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    for (sku, quantity) in lines_of(tx, order_id).await? {
        on_tx!(tx, conn => sqlx::query(update)
            .bind(&sku)
            .bind(quantity)
            .bind(now)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected()))?;
        ledger(
            tx,
            &sku,
            on_hand * quantity,
            reserved * quantity,
            reason,
            Some(order_id),
            now,
        )
        .await?;
    }
    Ok(())
}

async fn ledger(
    tx: &mut Tx,
    sku: &str,
    on_hand: i64,
    reserved: i64,
    reason: &str,
    order_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, conn => sqlx::query(
        "INSERT INTO stock_ledger (sku, on_hand_delta, reserved_delta, reason, order_id, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(sku)
    .bind(on_hand)
    .bind(reserved)
    .bind(reason)
    .bind(order_id)
    .bind(now)
    .execute(&mut **conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}
