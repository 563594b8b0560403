//! The read model, on PostgreSQL and SQLite: popularity per product per hour, co-purchases per
//! day, each user's history, and the orders already counted (see the migrations).
//!
//! Events are applied by additive upserts (and a `max` of times), so the model is the same
//! whatever order the events arrive in, and one rebuilt by replaying them into an empty store
//! equals the one built as they came. Times are the events' own (when the order was placed,
//! when the product was viewed), never when they were handled.

use serde::Serialize;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// An hour's number since the epoch.
#[must_use]
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(3_600_000)
}

/// A day's number since the epoch.
#[must_use]
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// A product and its score in a ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Ranked {
    /// The product.
    pub product_id: String,
    /// Its score: orders holding both (co-purchases), or 10 per order plus 1 per view, at most
    /// 20 views a product an hour (popularity).
    pub score: i64,
}

/// A product in a user's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Seen {
    /// The product.
    pub product_id: String,
    /// How many of the user's orders held it (0: only viewed).
    pub orders: i64,
    /// When the user last bought or viewed it, in milliseconds since the epoch.
    pub last_at_ms: i64,
}

/// Every row of the model, in a canonical order: what two stores are compared by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// `(order_id, user_id, placed_at_ms)`.
    pub orders: Vec<(String, String, i64)>,
    /// `(hour, product_id, orders, views)`.
    pub popularity: Vec<(i64, String, i64, i64)>,
    /// `(day, product_id, other_id, orders)`.
    pub pairs: Vec<(i64, String, String, i64)>,
    /// `(user_id, product_id, orders, last_at_ms)`.
    pub history: Vec<(String, String, i64, i64)>,
}

/// The read model on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecommendationStore {
    db: Database,
}

impl RecommendationStore {
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

    /// Counts an order once, within `tx`: whether it is new (`false`: counted before).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn claim_order(
        tx: &mut Tx,
        order_id: &str,
        user_id: &str,
        placed_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO rec_orders (order_id, user_id, placed_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(user_id)
        .bind(placed_at_ms)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    /// Adds `orders` orders and `views` views of a product in the hour of `at_ms`, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add_popularity(
        tx: &mut Tx,
        product_id: &str,
        at_ms: i64,
        orders: i64,
        views: i64,
    ) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO rec_popularity (hour, product_id, orders, views) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hour, product_id) DO UPDATE SET \
             orders = rec_popularity.orders + excluded.orders, \
             views = rec_popularity.views + excluded.views",
        )
        .bind(hour_of(at_ms))
        .bind(product_id)
        .bind(orders)
        .bind(views)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Adds an order holding both `product_id` and `other_id` on the day of `at_ms` (one way:
    /// call it both ways), within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add_pair(
        tx: &mut Tx,
        product_id: &str,
        other_id: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO rec_pairs (day, product_id, other_id, orders) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (product_id, day, other_id) DO UPDATE SET \
             orders = rec_pairs.orders + 1",
        )
        .bind(day_of(at_ms))
        .bind(product_id)
        .bind(other_id)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Adds to a user's history: `orders` more orders of the product (0 for a view), last at
    /// `at_ms` unless it was later before, within `tx`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add_history(
        tx: &mut Tx,
        user_id: &str,
        product_id: &str,
        orders: i64,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO rec_history (user_id, product_id, orders, last_at_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, product_id) DO UPDATE SET \
             orders = rec_history.orders + excluded.orders, \
             last_at_ms = CASE WHEN excluded.last_at_ms > rec_history.last_at_ms \
                 THEN excluded.last_at_ms ELSE rec_history.last_at_ms END",
        )
        .bind(user_id)
        .bind(product_id)
        .bind(orders)
        .bind(at_ms)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The `limit` most popular products since `since_ms`: 10 per order, 1 per view up to 20
    /// an hour (so that a flood of views weighs at most two orders an hour), the highest first
    /// (ties by id).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn popular(&self, since_ms: i64, limit: u32) -> Result<Vec<Ranked>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT product_id, \
             CAST(SUM(orders) * 10 + SUM(CASE WHEN views > 20 THEN 20 ELSE views END) AS BIGINT) \
             AS score FROM rec_popularity WHERE hour >= $1 GROUP BY product_id \
             ORDER BY score DESC, product_id LIMIT $2",
        )
        .bind(hour_of(since_ms))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    /// The `limit` products most often bought with any of `products` since `since_ms`, the
    /// most first (ties by id), none of `products` itself.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn bought_with(
        &self,
        products: &[String],
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<Ranked>, StoreError> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        // One placeholder per product (at most a few: the callers bound them).
        let list = (0..products.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT other_id AS product_id, CAST(SUM(orders) AS BIGINT) AS score FROM rec_pairs \
             WHERE product_id IN ({list}) AND other_id NOT IN ({list}) AND day >= $1 \
             GROUP BY other_id ORDER BY score DESC, other_id LIMIT $2"
        );
        Ok(on_db!(&self.db, pool => {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(day_of(since_ms))
                .bind(i64::from(limit));
            for product in products {
                query = query.bind(product);
            }
            query.fetch_all(pool).await
        })?)
    }

    /// The `limit` products a user bought or viewed most recently since `since_ms`.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn history(
        &self,
        user_id: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<Seen>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT product_id, orders, last_at_ms FROM rec_history \
             WHERE user_id = $1 AND last_at_ms >= $2 \
             ORDER BY last_at_ms DESC, product_id LIMIT $3",
        )
        .bind(user_id)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)?)
    }

    /// Forgets what happened before `before_ms` (what the window no longer holds); the rows
    /// deleted.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        let statements: [(&str, i64); 4] = [
            (
                "DELETE FROM rec_popularity WHERE hour < $1",
                hour_of(before_ms),
            ),
            ("DELETE FROM rec_pairs WHERE day < $1", day_of(before_ms)),
            ("DELETE FROM rec_history WHERE last_at_ms < $1", before_ms),
            ("DELETE FROM rec_orders WHERE placed_at_ms < $1", before_ms),
        ];
        let mut deleted = 0;
        for (sql, bound) in statements {
            deleted += on_db!(&self.db, pool => sqlx::query(sql)
                .bind(bound)
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
            orders: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT order_id, user_id, placed_at_ms FROM rec_orders ORDER BY order_id",
            )
            .fetch_all(pool)
            .await)?,
            popularity: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT hour, product_id, orders, views FROM rec_popularity \
                 ORDER BY hour, product_id",
            )
            .fetch_all(pool)
            .await)?,
            pairs: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT day, product_id, other_id, orders FROM rec_pairs \
                 ORDER BY day, product_id, other_id",
            )
            .fetch_all(pool)
            .await)?,
            history: on_db!(&self.db, pool => sqlx::query_as(
                "SELECT user_id, product_id, orders, last_at_ms FROM rec_history \
                 ORDER BY user_id, product_id",
            )
            .fetch_all(pool)
            .await)?,
        })
    }
}
