//! The store pattern every service copies: a trait, one PostgreSQL and one SQLite
//! implementation, per-dialect migrations, and a [`Database`] chosen by `DATABASE_URL`.
//!
//! The example is the table of responses remembered per `Idempotency-Key`. Each dialect keeps its
//! native types (PostgreSQL: `JSONB`, `TIMESTAMPTZ`; SQLite: `TEXT`, unix milliseconds), which is
//! why the implementations are two and the `Any` driver is not used.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// Migrations of the kit's own tables, for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations of the kit's own tables, for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A storage failure. Handlers answer it with a 500 problem and log the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `DATABASE_URL` names neither PostgreSQL nor SQLite.
    #[error("unsupported database URL {0:?}: expected postgres:// or sqlite:")]
    UnsupportedUrl(String),
}

/// A connection pool to the service's database, of either dialect.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// Production.
    Postgres(PgPool),
}

impl Database {
    /// Connects by the URL's scheme. SQLite files are created when missing; an in-memory SQLite
    /// database (`sqlite::memory:`) gets one connection, since each connection would otherwise
    /// have its own empty database.
    ///
    /// # Errors
    ///
    /// An unsupported scheme, or a database that cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .connect(url)
                .await?;
            return Ok(Self::Postgres(pool));
        }
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true);
            let max = if url.contains(":memory:") { 1 } else { 4 };
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .connect_with(options)
                .await?;
            return Ok(Self::Sqlite(pool));
        }
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }

    /// Runs the migrations of the database's dialect.
    ///
    /// # Errors
    ///
    /// A migration that fails, or one already applied that has changed.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => sqlite.run(pool).await?,
            Self::Postgres(pool) => postgres.run(pool).await?,
        }
        Ok(())
    }

    /// One round trip, for readiness checks.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// A response remembered for an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// What identifies the request body the key was first used with.
    pub fingerprint: String,
    /// The response to send again, as JSON text.
    pub response: String,
    /// Whether this call stored it (`false`: the key was used before).
    pub first: bool,
}

/// Responses remembered per `Idempotency-Key`: the example store of the kit.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Stores `response` for `key` unless the key is already known, and returns what is stored
    /// for it: this call's response, or the first one's.
    async fn remember(
        &self,
        key: &str,
        fingerprint: &str,
        response: &serde_json::Value,
    ) -> Result<Remembered, StoreError>;

    /// What is stored for `key`, if anything.
    async fn lookup(&self, key: &str) -> Result<Option<Remembered>, StoreError>;
}

/// The store for `database`'s dialect.
#[must_use]
pub fn idempotency_store(database: &Database) -> Arc<dyn IdempotencyStore> {
    match database {
        Database::Sqlite(pool) => Arc::new(SqliteIdempotency { pool: pool.clone() }),
        Database::Postgres(pool) => Arc::new(PgIdempotency { pool: pool.clone() }),
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    fingerprint: String,
    response: String,
}

impl Row {
    fn remembered(self, first: bool) -> Remembered {
        Remembered {
            fingerprint: self.fingerprint,
            response: self.response,
            first,
        }
    }
}

/// [`IdempotencyStore`] on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteIdempotency {
    pool: SqlitePool,
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotency {
    async fn remember(
        &self,
        key: &str,
        fingerprint: &str,
        response: &serde_json::Value,
    ) -> Result<Remembered, StoreError> {
        let now_ms = crate::unix_millis();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, response, created_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(response.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let row: Row =
            sqlx::query_as("SELECT fingerprint, response FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.remembered(inserted))
    }

    async fn lookup(&self, key: &str) -> Result<Option<Remembered>, StoreError> {
        let row: Option<Row> =
            sqlx::query_as("SELECT fingerprint, response FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|row| row.remembered(false)))
    }
}

/// [`IdempotencyStore`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgIdempotency {
    pool: PgPool,
}

#[async_trait]
impl IdempotencyStore for PgIdempotency {
    async fn remember(
        &self,
        key: &str,
        fingerprint: &str,
        response: &serde_json::Value,
    ) -> Result<Remembered, StoreError> {
        // One statement: the insert, or the row that was there before it.
        let row: Option<(String, String, bool)> = sqlx::query_as(
            "WITH inserted AS ( \
                 INSERT INTO idempotency_keys (key, fingerprint, response) \
                 VALUES ($1, $2, $3::jsonb) ON CONFLICT (key) DO NOTHING \
                 RETURNING fingerprint, response::text AS response \
             ) \
             SELECT fingerprint, response, true AS first FROM inserted \
             UNION ALL \
             SELECT fingerprint, response::text, false FROM idempotency_keys \
             WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM inserted)",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(response.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((fingerprint, response, first)) => Ok(Remembered {
                fingerprint,
                response,
                first,
            }),
            // A concurrent insert committed after this statement's snapshot: read it now.
            None => self
                .lookup(key)
                .await?
                .ok_or(StoreError::Database(sqlx::Error::RowNotFound)),
        }
    }

    async fn lookup(&self, key: &str) -> Result<Option<Remembered>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT fingerprint, response::text AS response FROM idempotency_keys WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.remembered(false)))
    }
}
