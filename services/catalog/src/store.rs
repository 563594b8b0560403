//! The catalog store: one trait, PostgreSQL and SQLite. The SQL is shared except for search
//! (FTS5 on SQLite, `tsvector` on PostgreSQL).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shop_common::store::{Database, StoreError};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

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
    /// Units in stock.
    pub stock: i64,
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

const COLUMNS: &str = "id, name, description, category_id, price_minor, currency, stock, version, created_at, updated_at";

/// Products and categories.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Every category.
    async fn categories(&self) -> Result<Vec<Category>, StoreError>;
    /// Adds a category (seeding).
    async fn add_category(&self, category: &Category) -> Result<(), StoreError>;
    /// A page of products, and the total matching.
    async fn list(&self, listing: &Listing) -> Result<(Vec<Product>, i64), StoreError>;
    /// One product.
    async fn get(&self, id: &str) -> Result<Option<Product>, StoreError>;
    /// Products matching the words of `query`, best first.
    async fn search(&self, query: &str, limit: i64) -> Result<Vec<Product>, StoreError>;
    /// Adds a product.
    async fn create(&self, product: &Product) -> Result<Write<Product>, StoreError>;
    /// Replaces a product's fields (bumping its version); `None` when it does not exist.
    async fn update(&self, product: &Product) -> Result<Write<Option<Product>>, StoreError>;
    /// Deletes a product; whether it existed.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Number of products.
    async fn count(&self) -> Result<i64, StoreError>;
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

macro_rules! catalog_store {
    ($name:ident, $pool:ty, $doc:literal, $search:expr, $search_arg:expr) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub $pool);

        #[async_trait]
        impl CatalogStore for $name {
            async fn categories(&self) -> Result<Vec<Category>, StoreError> {
                Ok(sqlx::query_as("SELECT id, name FROM categories ORDER BY name")
                    .fetch_all(&self.0)
                    .await?)
            }

            async fn add_category(&self, category: &Category) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                    .bind(&category.id)
                    .bind(&category.name)
                    .execute(&self.0)
                    .await?;
                Ok(())
            }

            async fn list(&self, listing: &Listing) -> Result<(Vec<Product>, i64), StoreError> {
                const FILTER: &str = "WHERE ($1 IS NULL OR category_id = $1) \
                    AND ($2 IS NULL OR price_minor >= $2) AND ($3 IS NULL OR price_minor <= $3)";
                // The ORDER BY comes from a closed enum, never from the request's text.
                let sql = format!(
                    "SELECT {COLUMNS} FROM products {FILTER} ORDER BY {} LIMIT $4 OFFSET $5",
                    listing.sort.order_by()
                );
                let items = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&listing.category)
                    .bind(listing.min_price)
                    .bind(listing.max_price)
                    .bind(listing.limit)
                    .bind(listing.offset)
                    .fetch_all(&self.0)
                    .await?;
                let count = format!("SELECT COUNT(*) FROM products {FILTER}");
                let (total,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(count))
                    .bind(&listing.category)
                    .bind(listing.min_price)
                    .bind(listing.max_price)
                    .fetch_one(&self.0)
                    .await?;
                Ok((items, total))
            }

            async fn get(&self, id: &str) -> Result<Option<Product>, StoreError> {
                let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.0).await?)
            }

            async fn search(&self, query: &str, limit: i64) -> Result<Vec<Product>, StoreError> {
                let argument: String = ($search_arg)(query);
                if argument.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(sqlx::query_as(sqlx::AssertSqlSafe($search))
                    .bind(argument)
                    .bind(limit)
                    .fetch_all(&self.0)
                    .await?)
            }

            async fn create(&self, product: &Product) -> Result<Write<Product>, StoreError> {
                let sql = format!(
                    "INSERT INTO products ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                );
                let result = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&product.id)
                    .bind(&product.name)
                    .bind(&product.description)
                    .bind(&product.category_id)
                    .bind(product.price_minor)
                    .bind(&product.currency)
                    .bind(product.stock)
                    .bind(product.version)
                    .bind(product.created_at)
                    .bind(product.updated_at)
                    .execute(&self.0)
                    .await
                    .map(|_| product.clone());
                classify(result)
            }

            async fn update(&self, product: &Product) -> Result<Write<Option<Product>>, StoreError> {
                let sql = format!(
                    "UPDATE products SET name = $2, description = $3, category_id = $4, \
                     price_minor = $5, currency = $6, stock = $7, version = version + 1, \
                     updated_at = $8 WHERE id = $1 RETURNING {COLUMNS}"
                );
                let result = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&product.id)
                    .bind(&product.name)
                    .bind(&product.description)
                    .bind(&product.category_id)
                    .bind(product.price_minor)
                    .bind(&product.currency)
                    .bind(product.stock)
                    .bind(product.updated_at)
                    .fetch_optional(&self.0)
                    .await;
                classify(result)
            }

            async fn delete(&self, id: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM products WHERE id = $1").bind(id).execute(&self.0).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn count(&self) -> Result<i64, StoreError> {
                let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM products").fetch_one(&self.0).await?;
                Ok(count)
            }
        }
    };
}

catalog_store!(
    SqliteCatalog,
    SqlitePool,
    "The catalog on SQLite (the embedded default), searched with FTS5.",
    format!(
        "SELECT {} FROM products_fts f JOIN products p ON p.rowid = f.rowid \
         WHERE products_fts MATCH $1 ORDER BY f.rank, p.id LIMIT $2",
        COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ),
    fts5_query
);
catalog_store!(
    PgCatalog,
    PgPool,
    "The catalog on PostgreSQL (production), searched with `tsvector`.",
    format!(
        "SELECT {COLUMNS} FROM products WHERE search @@ websearch_to_tsquery('english', $1) \
         ORDER BY ts_rank(search, websearch_to_tsquery('english', $1)) DESC, id LIMIT $2"
    ),
    |query: &str| query.trim().to_owned()
);

/// The store for `database`, migrated.
///
/// # Errors
///
/// A migration fails.
pub async fn open(database: &Database) -> Result<std::sync::Arc<dyn CatalogStore>, StoreError> {
    database
        .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
        .await?;
    Ok(match database {
        Database::Sqlite(pool) => std::sync::Arc::new(SqliteCatalog(pool.clone())),
        Database::Postgres(pool) => std::sync::Arc::new(PgCatalog(pool.clone())),
    })
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
