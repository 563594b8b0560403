//! The analytics store, on PostgreSQL and SQLite: per-minute counts, all-time totals, each
//! order's checkout outcome and latency (see the migrations). Every write is an additive
//! upsert or an insert once per order, so the figures do not depend on the order events arrive
//! in, and a replay into an empty store rebuilds them.

use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A minute's number since the epoch.
#[must_use]
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

/// The most checkouts whose latencies one summary reads (the latest).
pub const MAX_LATENCIES: u32 = 200_000;

/// Every row, in a canonical order: what two stores are compared by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// `(minute, metric, value)`.
    pub counts: Vec<(i64, String, i64)>,
    /// `(metric, value)`.
    pub totals: Vec<(String, i64)>,
    /// `(order_id, minute, outcome, latency_ms)`.
    pub checkouts: Vec<(String, i64, String, i64)>,
    /// `(claim, minute)`.
    pub claims: Vec<(String, i64)>,
}

/// The analytics store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AnalyticsStore {
    db: Database,
}

impl AnalyticsStore {
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

    /// The database.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Adds `value` to `metric` in the minute of `at_ms` and to its total, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add(tx: &mut Tx, at_ms: i64, metric: &str, value: i64) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO analytics_counts (minute, metric, value) VALUES ($1, $2, $3) \
             ON CONFLICT (minute, metric) DO UPDATE SET \
             value = analytics_counts.value + excluded.value",
        )
        .bind(minute_of(at_ms))
        .bind(metric)
        .bind(value)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO analytics_totals (metric, value) VALUES ($1, $2) \
             ON CONFLICT (metric) DO UPDATE SET value = analytics_totals.value + excluded.value",
        )
        .bind(metric)
        .bind(value)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Claims `claim` (what happened to an order: `placed:<order>`, …) at `at_ms`, within
    /// `tx`: whether it is new.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn claim(tx: &mut Tx, claim: &str, at_ms: i64) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO analytics_claims (claim, minute) VALUES ($1, $2) \
             ON CONFLICT (claim) DO NOTHING",
        )
        .bind(claim)
        .bind(minute_of(at_ms))
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// Records how an order's checkout ended (`CONFIRMED`, or the rejection's reason) at
    /// `at_ms`, `latency_ms` after it was submitted, within `tx`: whether it is new.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn settled(
        tx: &mut Tx,
        order_id: &str,
        at_ms: i64,
        outcome: &str,
        latency_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO analytics_checkouts (order_id, minute, outcome, latency_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(minute_of(at_ms))
        .bind(outcome)
        .bind(latency_ms)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// Each metric's sum over the minutes from `from_minute` to `to_minute` (both included).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn sums(
        &self,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT metric, CAST(SUM(value) AS BIGINT) FROM analytics_counts \
             WHERE minute >= $1 AND minute <= $2 GROUP BY metric ORDER BY metric",
        )
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(pool)
        .await)?)
    }

    /// The per-minute values of the metrics named `names` (at most two) or starting with
    /// `prefix`, from `from_minute` to `to_minute`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn series(
        &self,
        from_minute: i64,
        to_minute: i64,
        names: &[&str],
        prefix: &str,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        debug_assert!(names.len() <= 2, "at most two names");
        let rows: Vec<(i64, String, i64)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT minute, metric, value FROM analytics_counts \
             WHERE minute >= $1 AND minute <= $2 \
             AND (substr(metric, 1, $6) = $3 OR metric = $4 OR metric = $5) \
             ORDER BY minute, metric",
        )
        .bind(from_minute)
        .bind(to_minute)
        .bind(prefix)
        .bind(names.first().copied().unwrap_or(""))
        .bind(names.get(1).copied().unwrap_or(""))
        .bind(i32::try_from(prefix.len()).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await)?;
        Ok(rows)
    }

    /// The latencies of the checkouts that ended `outcome` from `from_minute` to `to_minute`
    /// (at most [`MAX_LATENCIES`], the latest).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn latencies(
        &self,
        from_minute: i64,
        to_minute: i64,
        outcome: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT latency_ms FROM analytics_checkouts \
             WHERE minute >= $1 AND minute <= $2 AND outcome = $3 \
             ORDER BY minute DESC LIMIT $4",
        )
        .bind(from_minute)
        .bind(to_minute)
        .bind(outcome)
        .bind(i64::from(MAX_LATENCIES))
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(|(latency,)| latency).collect())
    }

    /// Every total.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn totals(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT metric, value FROM analytics_totals ORDER BY metric",
        )
        .fetch_all(pool)
        .await)?)
    }

    /// Forgets the minutes before `before_minute` (the totals stay); the rows deleted.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn prune(&self, before_minute: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for sql in [
            "DELETE FROM analytics_counts WHERE minute < $1",
            "DELETE FROM analytics_checkouts WHERE minute < $1",
            "DELETE FROM analytics_claims WHERE minute < $1",
        ] {
            deleted += on_db!(&self.db, pool => sqlx::query(sql)
                .bind(before_minute)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
        }
        Ok(deleted)
    }

    /// Every row, in a canonical order.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        Ok(Dump {
            counts: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT minute, metric, value FROM analytics_counts ORDER BY minute, metric",
            )
            .fetch_all(pool)
            .await)?,
            totals: self.totals().await?,
            checkouts: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT order_id, minute, outcome, latency_ms FROM analytics_checkouts \
                 ORDER BY order_id",
            )
            .fetch_all(pool)
            .await)?,
            claims: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT claim, minute FROM analytics_claims ORDER BY claim",
            )
            .fetch_all(pool)
            .await)?,
        })
    }
}
