//! The shipping store, on PostgreSQL and SQLite through the kit's store pattern: one shipment
//! per order, moved from status to status by conditional `UPDATE`s.

use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use shop_messaging::contracts::Address;
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Shipment {
    /// The order.
    pub order_id: String,
    /// Its id.
    pub shipment_id: String,
    /// The carrier's tracking number.
    pub tracking_id: String,
    /// `CREATED`, `REJECTED`, `CANCELLED`, `SHIPPED` or `DELIVERED`.
    pub status: String,
    /// What it costs, in minor units.
    pub cost_minor: i64,
    /// Who receives it (empty for a shipment cancelled before it was booked).
    pub recipient: String,
    /// Street and number.
    pub line1: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postcode: String,
    /// ISO 3166-1 alpha-2 country code (`--` for a shipment cancelled before it was booked).
    pub country: String,
    /// When its order was confirmed (the payment captured), in milliseconds since the epoch:
    /// the warehouse ships nothing before.
    pub confirmed_at_ms: Option<i64>,
}

const COLUMNS: &str = "order_id, shipment_id, tracking_id, status, cost_minor, recipient, line1, \
    city, postcode, country, confirmed_at_ms";

/// Shipments, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShipmentStore {
    db: Database,
}

impl ShipmentStore {
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

    /// An order's shipment.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<Shipment>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM shipments WHERE order_id = $1");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(pool)
            .await)?,
        )
    }

    /// An order's shipment, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get_in(tx: &mut Tx, order_id: &str) -> Result<Option<Shipment>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM shipments WHERE order_id = $1");
        Ok(on_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_optional(&mut **conn)
            .await)?)
    }

    /// Records an order's shipment to `address` (`None`: a cancel that came before the
    /// booking) as `status`, within `tx`; `None` when the order has one.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn record(
        tx: &mut Tx,
        order_id: &str,
        status: &str,
        cost_minor: i64,
        address: Option<&Address>,
    ) -> Result<Option<Shipment>, StoreError> {
        let none = Address {
            name: String::new(),
            line1: String::new(),
            city: String::new(),
            postcode: String::new(),
            country: "--".to_owned(),
        };
        let address = address.unwrap_or(&none);
        let now = shop_common::unix_millis();
        let shipment = Shipment {
            order_id: order_id.to_owned(),
            shipment_id: uuid::Uuid::new_v4().to_string(),
            tracking_id: format!("TRK{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
                .to_uppercase(),
            status: status.to_owned(),
            cost_minor,
            recipient: address.name.clone(),
            line1: address.line1.clone(),
            city: address.city.clone(),
            postcode: address.postcode.clone(),
            country: address.country.clone(),
            confirmed_at_ms: None,
        };
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO shipments (order_id, shipment_id, tracking_id, status, cost_minor, \
             recipient, line1, city, postcode, country, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&shipment.order_id)
        .bind(&shipment.shipment_id)
        .bind(&shipment.tracking_id)
        .bind(status)
        .bind(cost_minor)
        .bind(&shipment.recipient)
        .bind(&shipment.line1)
        .bind(&shipment.city)
        .bind(&shipment.postcode)
        .bind(&shipment.country)
        .bind(now)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok((done == 1).then_some(shipment))
    }

    /// Marks an order's shipment confirmed (its payment captured), within `tx`; whether it
    /// was marked now (`false`: it was before, or the order has no shipment).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn confirm(tx: &mut Tx, order_id: &str) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "UPDATE shipments SET confirmed_at_ms = $2, updated_at_ms = $2 \
             WHERE order_id = $1 AND confirmed_at_ms IS NULL",
        )
        .bind(order_id)
        .bind(shop_common::unix_millis())
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// Moves an order's shipment from `from` to `to`, within `tx`, if its order was confirmed
    /// or `confirmed` does not matter; whether it was moved.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn moved(
        tx: &mut Tx,
        order_id: &str,
        from: &str,
        to: &str,
        confirmed: bool,
    ) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "UPDATE shipments SET status = $3, updated_at_ms = $4 \
             WHERE order_id = $1 AND status = $2 AND (confirmed_at_ms IS NOT NULL OR NOT $5)",
        )
        .bind(order_id)
        .bind(from)
        .bind(to)
        .bind(shop_common::unix_millis())
        .bind(confirmed)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }
}
