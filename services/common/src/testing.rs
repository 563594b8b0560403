//! Test helpers: a fresh PostgreSQL database per test, dropped afterwards.

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};

/// The server the fresh databases are created on: `TEST_POSTGRES_URL`, or the local server of
/// the development and CI machines.
#[must_use]
pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test. Call [`drop_database`](Self::drop_database) at the end;
/// if the test panics first, `Drop` removes it on a helper thread.
#[derive(Debug)]
pub struct PgTestDb {
    /// Its URL.
    pub url: String,
    name: String,
    dropped: bool,
}

impl PgTestDb {
    /// Creates an empty database named `<prefix>_<random>`.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or refuses.
    pub async fn create(prefix: &str) -> Result<Self, sqlx::Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        let mut connection = PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            dropped: false,
        })
    }

    /// [`create`](Self::create), or `None` with a notice when the server cannot be reached, so
    /// that the test suite still runs on a machine with nothing but cargo. With
    /// `MAINSTAY_REQUIRE_SERVERS` set (as CI sets it), an unreachable server fails the test.
    ///
    /// # Panics
    ///
    /// When the server is required and cannot be used.
    pub async fn create_or_skip(prefix: &str) -> Option<Self> {
        match Self::create(prefix).await {
            Ok(database) => Some(database),
            Err(error) => {
                assert!(
                    std::env::var_os("MAINSTAY_REQUIRE_SERVERS").is_none(),
                    "PostgreSQL at {} is required (MAINSTAY_REQUIRE_SERVERS is set): {error}",
                    admin_url()
                );
                #[expect(clippy::print_stderr, reason = "a test helper telling why it skips")]
                {
                    eprintln!(
                        "skipping: PostgreSQL at {} cannot be used ({error}); \
                         set TEST_POSTGRES_URL to point at one",
                        admin_url()
                    );
                }
                None
            }
        }
    }

    /// A pool on the database.
    ///
    /// # Errors
    ///
    /// The server cannot be reached.
    pub async fn pool(&self) -> Result<PgPool, sqlx::Error> {
        PgPool::connect(&self.url).await
    }

    /// Drops the database, closing the connections still open to it.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or refuses.
    pub async fn drop_database(mut self) -> Result<(), sqlx::Error> {
        self.dropped = true;
        drop_named(&self.name).await
    }
}

async fn drop_named(name: &str) -> Result<(), sqlx::Error> {
    let mut connection = PgConnection::connect(&admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .execute(&mut connection)
    .await?;
    connection.close().await
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = std::mem::take(&mut self.name);
        // Drop may run inside a runtime, which must not block: use a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime.block_on(drop_named(&name));
            }
        })
        .join();
    }
}

/// Runs each named suite twice: `mod on_sqlite` (an in-memory SQLite database) and
/// `mod on_postgres` (a fresh PostgreSQL database from [`PgTestDb::create_or_skip`], dropped
/// afterwards). A suite is an `async fn(&Database, &str)` taking the database and its URL.
#[macro_export]
macro_rules! on_both_stores {
    ($($suite:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $suite() {
                    let url = "sqlite::memory:";
                    let database = $crate::store::Database::connect(url).await.unwrap();
                    super::$suite(&database, url).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $suite() {
                    let Some(db) = $crate::testing::PgTestDb::create_or_skip("suite").await else {
                        return;
                    };
                    let database = $crate::store::Database::connect(&db.url).await.unwrap();
                    super::$suite(&database, &db.url).await;
                    if let $crate::store::Database::Postgres(pool) = database {
                        pool.close().await;
                    }
                    db.drop_database().await.unwrap();
                }
            )*
        }
    };
}
