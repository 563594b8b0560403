//! The catalog store, on PostgreSQL and SQLite through the kit's store pattern
//! (`shop_common::store`). The SQL is shared except for search (FTS5 on SQLite, `tsvector` on
//! PostgreSQL), chosen by the database's dialect.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use shop_common::store::{Database, Dialect, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Category {
    /// Slug, e.g. `kitchen`.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Category slug.
    pub category_id: String,
    /// Price in minor units (cents).
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Bumped on every change; the `ETag`.
    pub version: i64,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub updated_at: i64,
}

/// Sort orders of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// By name.
    Name,
    /// Newest first.
    Newest,
}

impl Sort {
    fn order_by(self) -> &'static str {
        match self {
            Self::PriceAsc => "price_minor ASC, id",
            Self::PriceDesc => "price_minor DESC, id",
            Self::Name => "name ASC, id",
            Self::Newest => "created_at DESC, id",
        }
    }
}

/// A validated listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Only this category.
    pub category: Option<String>,
    /// Price at least.
    pub min_price: Option<i64>,
    /// Price at most.
    pub max_price: Option<i64>,
    /// Order.
    pub sort: Sort,
    /// Page size.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

/// Whether a write met a constraint.
#[derive(Debug)]
pub enum Write<T> {
    /// Written.
    Done(T),
    /// The category does not exist.
    UnknownCategory,
    /// The id is taken.
    Exists,
}

const COLUMNS: &str =
    "id, name, description, category_id, price_minor, currency, version, created_at, updated_at";

/// Search on SQLite: FTS5, best rank first.
static SQLITE_SEARCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM products_fts f JOIN products p ON p.rowid = f.rowid \
         WHERE products_fts MATCH $1 ORDER BY f.rank, p.id LIMIT $2",
        COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

/// Search on PostgreSQL: `tsvector`, best rank first.
static POSTGRES_SEARCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM products WHERE search @@ websearch_to_tsquery('english', $1) \
         ORDER BY ts_rank(search, websearch_to_tsquery('english', $1)) DESC, id LIMIT $2"
    )
});

/// Products and categories, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    db: Database,
}

impl CatalogStore {
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

    /// The database, for readiness checks and for transactions spanning this store and others.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every category.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn categories(&self) -> Result<Vec<Category>, StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_as("SELECT id, name FROM categories ORDER BY name")
                .fetch_all(pool)
                .await)?,
        )
    }

    /// Adds a category (seeding); one that exists is left as it is.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn add_category(&self, category: &Category) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&category.id)
        .bind(&category.name)
        .execute(pool)
        .await.map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// A page of products, and the total matching.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn list(&self, listing: &Listing) -> Result<(Vec<Product>, i64), StoreError> {
        const FILTER: &str = "WHERE ($1 IS NULL OR category_id = $1) \
            AND ($2 IS NULL OR price_minor >= $2) AND ($3 IS NULL OR price_minor <= $3)";
        // The ORDER BY comes from a closed enum, never from the request's text.
        let sql = format!(
            "SELECT {COLUMNS} FROM products {FILTER} ORDER BY {} LIMIT $4 OFFSET $5",
            listing.sort.order_by()
        );
        let items = on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&listing.category)
            .bind(listing.min_price)
            .bind(listing.max_price)
            .bind(listing.limit)
            .bind(listing.offset)
            .fetch_all(pool)
            .await)?;
        let count = format!("SELECT COUNT(*) FROM products {FILTER}");
        let total: i64 = on_db!(&self.db, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .bind(&listing.category)
            .bind(listing.min_price)
            .bind(listing.max_price)
            .fetch_one(pool)
            .await)?;
        Ok((items, total))
    }

    /// One product.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn get(&self, id: &str) -> Result<Option<Product>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await)?,
        )
    }

    /// Products matching the words of `query`, best first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn search(&self, query: &str, limit: i64) -> Result<Vec<Product>, StoreError> {
        let (sql, argument) = match self.db.dialect() {
            Dialect::Sqlite => (SQLITE_SEARCH.as_str(), fts5_query(query)),
            Dialect::Postgres => (POSTGRES_SEARCH.as_str(), query.trim().to_owned()),
        };
        if argument.is_empty() {
            return Ok(Vec::new());
        }
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&argument)
                .bind(limit)
                .fetch_all(pool)
                .await)?,
        )
    }

    /// Adds a product.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn create(&self, product: &Product) -> Result<Write<Product>, StoreError> {
        let sql =
            format!("INSERT INTO products ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
        let result = on_db!(&self.db, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&product.id)
            .bind(&product.name)
            .bind(&product.description)
            .bind(&product.category_id)
            .bind(product.price_minor)
            .bind(&product.currency)
            .bind(product.version)
            .bind(product.created_at)
            .bind(product.updated_at)
            .execute(pool)
            .await.map(|done| done.rows_affected()))
        .map(|_| product.clone());
        classify(result)
    }

    /// Replaces a product's fields (bumping its version); `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn update(&self, product: &Product) -> Result<Write<Option<Product>>, StoreError> {
        let mut tx = self.db.begin().await?;
        let written = Self::update_in(&mut tx, product).await?;
        if matches!(written, Write::Done(Some(_))) {
            tx.commit().await?;
        }
        Ok(match written {
            Write::Done(changed) => Write::Done(changed.map(|(_, after)| after)),
            Write::UnknownCategory => Write::UnknownCategory,
            Write::Exists => Write::Exists,
        })
    }

    /// [`update`](Self::update) within `tx`, returning the product before and after: the row
    /// is locked first (on PostgreSQL), so that what the caller writes beside it (an outbox
    /// message) is ordered with the product's other changes. After
    /// [`Write::UnknownCategory`] the transaction is spent: roll it back.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn update_in(
        tx: &mut Tx,
        product: &Product,
    ) -> Result<Write<Option<(Product, Product)>>, StoreError> {
        let lock = match tx.dialect() {
            Dialect::Postgres => format!("SELECT {COLUMNS} FROM products WHERE id = $1 FOR UPDATE"),
            Dialect::Sqlite => format!("SELECT {COLUMNS} FROM products WHERE id = $1"),
        };
        let before: Option<Product> = on_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(lock))
            .bind(&product.id)
            .fetch_optional(&mut **conn)
            .await)?;
        let Some(before) = before else {
            return Ok(Write::Done(None));
        };
        let sql = format!(
            "UPDATE products SET name = $2, description = $3, category_id = $4, \
             price_minor = $5, currency = $6, version = version + 1, \
             updated_at = $7 WHERE id = $1 RETURNING {COLUMNS}"
        );
        let result: Result<Product, sqlx::Error> = on_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&product.id)
            .bind(&product.name)
            .bind(&product.description)
            .bind(&product.category_id)
            .bind(product.price_minor)
            .bind(&product.currency)
            .bind(product.updated_at)
            .fetch_one(&mut **conn)
            .await);
        classify(result.map(|after| Some((before, after))))
    }

    /// Deletes a product; whether it existed.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let done = on_db!(&self.db, pool => sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await.map(|done| done.rows_affected()))?;
        Ok(done > 0)
    }

    /// Number of products.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn count(&self) -> Result<i64, StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM products")
                .fetch_one(pool)
                .await)?,
        )
    }
}

fn classify<T>(result: Result<T, sqlx::Error>) -> Result<Write<T>, StoreError> {
    match result {
        Ok(value) => Ok(Write::Done(value)),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(Write::UnknownCategory),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Write::Exists),
        Err(e) => Err(e.into()),
    }
}

/// An FTS5 query of the words of `query`, each quoted (so no FTS syntax gets through) and
/// prefix-matched, all required.
fn fts5_query(query: &str) -> String {
    query
        .split_whitespace()
        .map(|word| format!("\"{}\"*", word.replace('"', "")))
        .filter(|term| term != "\"\"*")
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::fts5_query;

    #[test]
    fn search_words_cannot_inject_fts5_syntax() {
        assert_eq!(fts5_query("copper kettle"), "\"copper\"* \"kettle\"*");
        assert_eq!(fts5_query("a\" OR name:*"), "\"a\"* \"OR\"* \"name:*\"*");
        assert_eq!(fts5_query("  \"  "), "");
    }
}
