//! The store pattern every service follows: a [`Database`] chosen by `DATABASE_URL`, per-dialect
//! migrations, and the same query code run on either dialect's pool ([`on_db!`](crate::on_db)) or within one
//! transaction ([`Tx`], [`on_tx!`](crate::on_tx)). A handler's writes that must stand or fall together (its
//! domain rows, and the kit's rows beside them) share one [`Tx`].
//!
//! ```no_run
//! # async fn example(database: &shop_common::store::Database) -> Result<(), shop_common::store::StoreError> {
//! use shop_common::{on_db, on_tx};
//!
//! let mut tx = database.begin().await?;
//! // Both arms must have one type: a query result becomes its count of rows.
//! on_tx!(&mut tx, conn => sqlx::query("INSERT INTO things (id) VALUES ($1)")
//!     .bind("a")
//!     .execute(&mut **conn)
//!     .await
//!     .map(|done| done.rows_affected()))?;
//! tx.after_commit(|| tracing::info!("thing a stored"));
//! tx.commit().await?; // then the hooks run; dropped uncommitted, it rolls back
//!
//! let count: i64 = on_db!(database, pool => sqlx::query_scalar("SELECT COUNT(*) FROM things")
//!     .fetch_one(pool)
//!     .await)?;
//! # Ok(()) }
//! ```
//!
//! Inside a transaction, never use the pool: on SQLite there is one connection, which the
//! transaction holds, so the pool would wait for it until its acquire timeout.
//!
//! The kit keeps tables of its own in every service's database (the answers kept per
//! `Idempotency-Key`, see [`crate::idempotency`]). Their migrations are recorded in
//! `_kit_migrations`, apart from the service's own in sqlx's `_sqlx_migrations`, so that the
//! two sets of versions never meet ([`Database::migrate_kit`]).

use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
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
    /// `DATABASE_URL` names neither PostgreSQL nor SQLite. Holds the URL's scheme only: the
    /// rest may carry a password.
    #[error("unsupported database URL scheme {0:?}: expected postgres:// or sqlite:")]
    UnsupportedUrl(String),
    /// A statement of the transaction failed, so it was rolled back instead of committed
    /// (PostgreSQL would have refused the rest of it; SQLite would have kept the statements
    /// that succeeded). See [`Tx::commit`].
    #[error("a statement of the transaction failed: it was rolled back, not committed")]
    Aborted,
}

/// A connection pool to the service's database, of either dialect.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// Production.
    Postgres(PgPool),
}

/// Which database a [`Database`] or a [`Tx`] is on: the same for every clone of one pool, and
/// different for another pool (even on the same database server), while the pool lives. A key
/// to keep per-database state by (the relays of one database, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatabaseKey(usize);

/// The SQL a [`Database`] speaks, for the few statements that differ (full-text search, row
/// locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Runs the same query code on either dialect's pool of a [`Database`]: in `$body`, `$pool` is
/// a `&SqlitePool` or a `&PgPool`, and sqlx's builders are generic over both. `$body` must have
/// the same type for both (map a query result to its `rows_affected()`, say).
#[macro_export]
macro_rules! on_db {
    ($database:expr, $pool:ident => $body:expr) => {
        match $database {
            $crate::store::Database::Sqlite($pool) => $body,
            $crate::store::Database::Postgres($pool) => $body,
        }
    };
}

/// Runs the same query code within a [`Tx`]: in `$body`, `$conn` is the dialect's
/// `&mut sqlx::Transaction`, executed on as `&mut **$conn`. `$body` is a `Result`, of the same
/// type for both dialects, as with [`on_db!`](crate::on_db); an `Err` marks the transaction
/// failed ([`Tx::track`]), so that it can no longer commit.
///
/// For the few statements that differ by dialect, give each its own body (still tracked):
/// `on_tx!(tx, sqlite conn => …, postgres conn => …)`.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, sqlite $sqlite:ident => $sqlite_body:expr, postgres $postgres:ident => $postgres_body:expr $(,)?) => {{
        let tx: &mut $crate::store::Tx = $tx;
        let result = match $crate::store::Tx::tracked_conn(tx) {
            $crate::store::TxConn::Sqlite($sqlite) => $sqlite_body,
            $crate::store::TxConn::Postgres($postgres) => $postgres_body,
        };
        $crate::store::Tx::track(tx, result)
    }};
    ($tx:expr, $conn:ident => $body:expr) => {{
        let tx: &mut $crate::store::Tx = $tx;
        let result = match $crate::store::Tx::tracked_conn(tx) {
            $crate::store::TxConn::Sqlite($conn) => $body,
            $crate::store::TxConn::Postgres($conn) => $body,
        };
        $crate::store::Tx::track(tx, result)
    }};
}

/// A transaction's connection, of either dialect (see [`on_tx!`](crate::on_tx)).
#[derive(Debug)]
pub enum TxConn {
    /// On SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    /// On PostgreSQL.
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// One transaction on the service's database, which any number of stores write within.
/// Committed by [`Tx::commit`], after which the hooks given to [`Tx::after_commit`] run;
/// dropped uncommitted (an error, a panic, a caller gone), it rolls back and runs none.
///
/// All or nothing on both dialects: once a statement has failed, the transaction never
/// commits. (PostgreSQL refuses every later statement and answers `COMMIT` with a rollback
/// that sqlx reports as success; SQLite would commit the statements that succeeded.) A
/// statement that may fail as part of the logic (an insert that may conflict, say) is
/// written so that it does not (`ON CONFLICT DO NOTHING`, then look at the count).
pub struct Tx {
    conn: TxConn,
    database: DatabaseKey,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    failed: bool,
    /// Whether the connection was handed out for statements the transaction is not told of.
    untracked: bool,
    /// Savepoints set so far (their names are numbered).
    savepoints: u32,
    /// Which transaction of the process this is (a savepoint names it).
    id: u64,
}

/// The next [`Tx`]'s id.
static NEXT_TX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A point within a [`Tx`] that it can roll back to ([`Tx::savepoint`],
/// [`Tx::rollback_to`]): the statements after it are undone, those before it stand.
#[derive(Debug)]
#[must_use = "a savepoint is only of use to roll back to"]
pub struct Savepoint {
    name: String,
    /// The transaction it was set in.
    tx: u64,
    /// Whether the transaction had failed when the savepoint was set.
    failed: bool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("dialect", &self.dialect())
            .field("after_commit", &self.after_commit.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Tx {
    /// The dialect of the transaction's database.
    #[must_use]
    pub fn dialect(&self) -> Dialect {
        match self.conn {
            TxConn::Sqlite(_) => Dialect::Sqlite,
            TxConn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Which database the transaction is on.
    #[must_use]
    pub fn database(&self) -> DatabaseKey {
        self.database
    }

    /// The connection to run statements on, usually through [`on_tx!`](crate::on_tx). Code
    /// that runs statements on it directly passes their results through [`track`](Self::track)
    /// (or returns their errors without committing).
    pub fn conn(&mut self) -> &mut TxConn {
        self.untracked = true;
        &mut self.conn
    }

    /// The connection, for [`on_tx!`](crate::on_tx), which passes every result through
    /// [`track`](Self::track).
    #[doc(hidden)]
    pub fn tracked_conn(&mut self) -> &mut TxConn {
        &mut self.conn
    }

    /// Passes a statement's result through, marking the transaction failed when it is an
    /// error: [`commit`](Self::commit) then rolls back and answers [`StoreError::Aborted`].
    /// [`on_tx!`](crate::on_tx) calls it on every statement.
    ///
    /// # Errors
    ///
    /// `result`'s own error, unchanged.
    pub fn track<T, E>(&mut self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Whether a statement of the transaction has failed (it will not commit).
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Runs `hook` once the transaction has committed (waking a relay for rows it wrote,
    /// say), never if it rolls back. Hooks run in the order given.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    /// Sets a savepoint: [`rollback_to`](Self::rollback_to) it undoes what follows, and a
    /// statement that failed after it no longer stops the transaction from committing.
    ///
    /// # Errors
    ///
    /// The database refused (the transaction has failed, say).
    pub async fn savepoint(&mut self) -> Result<Savepoint, StoreError> {
        self.savepoints += 1;
        let name = format!("mainstay_savepoint_{}", self.savepoints);
        self.raw(format!("SAVEPOINT {name}")).await?;
        Ok(Savepoint {
            name,
            tx: self.id,
            failed: self.failed,
        })
    }

    /// Undoes everything since `savepoint`, including a failed statement: the transaction is
    /// then as it was there, and commits if it could then.
    ///
    /// # Errors
    ///
    /// The database refused, or `savepoint` is another transaction's
    /// ([`StoreError::Aborted`]); the transaction then never commits.
    pub async fn rollback_to(&mut self, savepoint: Savepoint) -> Result<(), StoreError> {
        if savepoint.tx != self.id {
            self.failed = true;
            return Err(StoreError::Aborted);
        }
        self.raw(format!("ROLLBACK TO SAVEPOINT {}", savepoint.name))
            .await?;
        self.failed = savepoint.failed;
        Ok(())
    }

    /// Runs `statement`, built here from a counter (no input reaches it).
    async fn raw(&mut self, statement: String) -> Result<(), StoreError> {
        let statement = sqlx::raw_sql(sqlx::AssertSqlSafe(statement));
        let result = match &mut self.conn {
            TxConn::Sqlite(tx) => statement.execute(&mut **tx).await.map(drop),
            TxConn::Postgres(tx) => statement.execute(&mut **tx).await.map(drop),
        };
        Ok(self.track(result)?)
    }

    /// Commits, then runs the hooks.
    ///
    /// # Errors
    ///
    /// Nothing was written, and no hook runs, when: a statement of the transaction failed
    /// ([`StoreError::Aborted`], after a rollback); or the database refused the commit. On
    /// PostgreSQL, when the connection was handed out by [`conn`](Self::conn) (statements the
    /// transaction was not told of), one round trip before the `COMMIT` makes sure the
    /// transaction has not failed; statements run through [`on_tx!`](crate::on_tx) need none.
    pub async fn commit(self) -> Result<(), StoreError> {
        if self.failed {
            self.rollback().await?;
            return Err(StoreError::Aborted);
        }
        match self.conn {
            TxConn::Sqlite(tx) => tx.commit().await?,
            TxConn::Postgres(mut tx) => {
                // In a failed transaction PostgreSQL answers any statement with 25P02, and
                // `COMMIT` with a rollback that sqlx takes for success.
                let probe = if self.untracked {
                    sqlx::query("SELECT 1").execute(&mut *tx).await.err()
                } else {
                    None
                };
                if let Some(error) = probe {
                    let aborted = error
                        .as_database_error()
                        .and_then(sqlx::error::DatabaseError::code)
                        .is_some_and(|code| code == "25P02");
                    drop(tx);
                    return Err(if aborted {
                        StoreError::Aborted
                    } else {
                        error.into()
                    });
                }
                tx.commit().await?;
            }
        }
        for hook in self.after_commit {
            hook();
        }
        Ok(())
    }

    /// Rolls back; no hook runs. (Dropping the transaction does the same.)
    ///
    /// # Errors
    ///
    /// The database could not be told; it rolls back anyway when the connection ends.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.conn {
            TxConn::Sqlite(tx) => tx.rollback().await?,
            TxConn::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

impl Database {
    /// The database's dialect.
    #[must_use]
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Which database this is (see [`DatabaseKey`]).
    #[must_use]
    pub fn key(&self) -> DatabaseKey {
        // The pool's options are one allocation, shared by its clones.
        DatabaseKey(match self {
            Self::Sqlite(pool) => std::sync::Arc::as_ptr(&pool.connect_options()) as usize,
            Self::Postgres(pool) => std::sync::Arc::as_ptr(&pool.connect_options()) as usize,
        })
    }

    /// Begins a transaction, at the database's default isolation (READ COMMITTED on a
    /// PostgreSQL that was not configured otherwise; SQLite's transactions are serializable).
    ///
    /// # Errors
    ///
    /// No connection could be had, or the database refused to begin.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let conn = match self {
            Self::Sqlite(pool) => TxConn::Sqlite(pool.begin().await?),
            Self::Postgres(pool) => TxConn::Postgres(pool.begin().await?),
        };
        Ok(self.tx(conn))
    }

    /// Begins a transaction that reads, then writes by what it read, and must see what others
    /// committed before each statement: at READ COMMITTED on PostgreSQL, whatever the
    /// database's default (a statement that follows a lock sees the rows the lock's previous
    /// holder wrote); on SQLite, `BEGIN IMMEDIATE`, holding the write lock from the start (a
    /// deferred transaction that read under one snapshot fails when it then writes after
    /// another connection, such as another process on the file, committed).
    ///
    /// # Errors
    ///
    /// No connection could be had, or the database refused to begin.
    pub async fn begin_read_committed(&self) -> Result<Tx, StoreError> {
        let conn = match self {
            Self::Sqlite(pool) => TxConn::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres(pool) => TxConn::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?,
            ),
        };
        Ok(self.tx(conn))
    }

    fn tx(&self, conn: TxConn) -> Tx {
        Tx {
            conn,
            database: self.key(),
            after_commit: Vec::new(),
            failed: false,
            untracked: false,
            savepoints: 0,
            id: NEXT_TX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

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
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(StoreError::UnsupportedUrl(
            scheme.chars().take(32).collect(),
        ))
    }

    /// Runs the migrations of the database's dialect.
    ///
    /// # Errors
    ///
    /// A migration that fails, or one already applied that has changed.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => {
                // Processes that share one SQLite file (the local bus) may migrate it at once,
                // and sqlx takes no lock on SQLite: the loser's statement fails ("table already
                // exists"), and run again it finds the winner's migrations applied.
                let mut attempt = 0_u32;
                loop {
                    match sqlite.run(pool).await {
                        Ok(()) => break,
                        Err(
                            sqlx::migrate::MigrateError::Execute(_)
                            | sqlx::migrate::MigrateError::ExecuteMigration(..),
                        ) if attempt < 5 => {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(
                                50 * u64::from(attempt),
                            ))
                            .await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
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
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|done| done.rows_affected()))?;
        Ok(())
    }
}
