//! The store pattern every service copies: a trait, one PostgreSQL and one SQLite
//! implementation, per-dialect migrations, and a [`Database`] chosen by `DATABASE_URL`.
//!
//! The kit keeps tables of its own in every service's database (the answers kept per
//! `Idempotency-Key`, see [`crate::idempotency`]). Their migrations are recorded in
//! `_kit_migrations`, apart from the service's own in sqlx's `_sqlx_migrations`, so that the
//! two sets of versions never meet ([`Database::migrate_kit`]).

use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The table the kit's migrations are recorded in.
pub const KIT_MIGRATIONS_TABLE: &str = "_kit_migrations";

/// Migrations of the kit's own tables, for SQLite (recorded in [`KIT_MIGRATIONS_TABLE`]).
pub static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(KIT_MIGRATIONS_TABLE);
    migrator
});
/// Migrations of the kit's own tables, for PostgreSQL (recorded in [`KIT_MIGRATIONS_TABLE`]).
pub static POSTGRES_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(KIT_MIGRATIONS_TABLE);
    migrator
});

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
    /// Connects by the URL's scheme. SQLite files are created when missing and opened on one
    /// connection in WAL mode (see the code for why one); an in-memory SQLite database
    /// (`sqlite::memory:`) could not have more anyway, each connection having its own.
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
            // One connection: SQLite has one writer at a time, and a statement that read under
            // one connection's snapshot and then writes after another connection committed
            // fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT; SQLite gives up
            // rather than deadlock, whatever the busy timeout). Concurrent admin writes under
            // load met it. On one connection statements take turns and none fails; the
            // embedded default serves one machine, and production runs on PostgreSQL. WAL keeps
            // another process (a backup, sqlite3) from blocking it, and the busy timeout covers
            // that process's writes.
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
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

    /// Runs the kit's own migrations (its tables in every service's database).
    ///
    /// # Errors
    ///
    /// A migration that fails, or one already applied that has changed.
    pub async fn migrate_kit(&self) -> Result<(), StoreError> {
        self.migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS).await
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
