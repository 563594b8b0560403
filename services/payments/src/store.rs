//! The payments store, on PostgreSQL and SQLite through the kit's store pattern: one row per
//! order. A payment leaves `AUTHORIZED` by a conditional `UPDATE` of its status (to
//! `CAPTURED` or `VOIDED`), taken before the provider is called: a capture and the expiry
//! sweeper's void of one payment cannot both apply, and a provider that fails rolls the move
//! back with the transaction.

use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Payment {
    /// The order it pays.
    pub order_id: String,
    /// Its id.
    pub payment_id: String,
    /// The amount authorised, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// `AUTHORIZED`, `DECLINED`, `CAPTURED`, `VOIDED` or `REFUNDED`.
    pub status: String,
    /// The provider's reference.
    pub reference: Option<String>,
    /// Why it was declined or voided.
    pub reason: Option<String>,
    /// What was captured.
    pub captured_minor: i64,
    /// What was refunded.
    pub refunded_minor: i64,
    /// When it was authorised (or declined), in milliseconds since the epoch.
    pub authorized_at_ms: i64,
}

const COLUMNS: &str = "order_id, payment_id, amount_minor, currency, status, reference, reason, \
    captured_minor, refunded_minor, authorized_at_ms";

/// Payments, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentStore {
    db: Database,
}

impl PaymentStore {
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

    /// An order's payment.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<Payment>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// Every payment, by order (for the invariants' checker).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn all(&self) -> Result<Vec<Payment>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM payments ORDER BY order_id");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await)?,
        )
    }

    /// An order's payment, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get_in(tx: &mut Tx, order_id: &str) -> Result<Option<Payment>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1");
        Ok(on_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(&mut **conn)
            .await)?)
    }

    /// Records an order's payment as `status` (`AUTHORIZED`, `DECLINED`, or `VOIDED` for a void
    /// that came first), within `tx`; returns its id, or `None` when the order has one.
    ///
    /// # Errors
    ///
    /// The database fails.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        tx: &mut Tx,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
        status: &str,
        reference: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let payment_id = uuid::Uuid::new_v4().to_string();
        let now = shop_common::unix_millis();
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO payments (order_id, payment_id, amount_minor, currency, status, \
             reference, reason, authorized_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(&payment_id)
        .bind(amount_minor)
        .bind(currency)
        .bind(status)
        .bind(reference)
        .bind(reason)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok((done == 1).then_some(payment_id))
    }

    /// Moves an order's payment from `from` to `to`, within `tx`, setting what was captured
    /// or refunded and why; whether it was `from`. On PostgreSQL a second mover waits for the
    /// first's transaction, then finds the status gone.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn moved(
        tx: &mut Tx,
        order_id: &str,
        from: &str,
        to: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "UPDATE payments SET status = $3, reason = COALESCE($4, reason), \
             captured_minor = CASE WHEN $3 = 'CAPTURED' THEN amount_minor ELSE captured_minor END, \
             refunded_minor = CASE WHEN $3 = 'REFUNDED' THEN captured_minor ELSE refunded_minor END, \
             updated_at_ms = $5 WHERE order_id = $1 AND status = $2",
        )
        .bind(order_id)
        .bind(from)
        .bind(to)
        .bind(reason)
        .bind(shop_common::unix_millis())
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// Orders whose authorisations were given before `before_ms` and never captured or voided,
    /// oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn stale(&self, before_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT order_id FROM payments WHERE status = 'AUTHORIZED' AND authorized_at_ms < $1 \
             ORDER BY authorized_at_ms LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(pool)
        .await)?)
    }
}
