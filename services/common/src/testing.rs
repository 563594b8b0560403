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

/// A response as tests read it: status, headers, and the body as JSON (a string when it is not
/// JSON, `null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: http::StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: serde_json::Value,
}

/// What [`send`] and [`call`] drive: an axum `Router`, or any service of axum's requests built
/// like one (the gateway's).
pub trait App:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    > + Clone
{
}

impl<S> App for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
{
}

/// Sends `request` through `app` in process.
///
/// # Panics
///
/// When the router fails or the body cannot be read (a test failure).
pub async fn send<S: App>(app: &S, request: http::Request<axum::body::Body>) -> Reply {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let Ok(response) = app.clone().oneshot(request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body is readable")
        .to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Builds and sends a request: `token` as a bearer token, `body` as JSON, and one more header.
///
/// # Panics
///
/// When the request cannot be built or answered (a test failure).
pub async fn call<S: App>(
    app: &S,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    header: Option<(&str, &str)>,
) -> Reply {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let body = match body {
        Some(body) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            axum::body::Body::from(body.to_string())
        }
        None => axum::body::Body::empty(),
    };
    send(app, request.body(body).expect("a valid request")).await
}

/// A token issuer as the users service runs it (`iss` `shop-users`, `aud` `shop`, a fresh
/// `EdDSA` key), and a validator that trusts it: for services that check users' tokens.
///
/// # Panics
///
/// When a key cannot be generated (a test failure).
#[must_use]
pub fn users_tokens() -> (mainstay_auth::TokenIssuer, mainstay_auth::Validator) {
    use mainstay_auth::jsonwebtoken::Algorithm;
    let key = mainstay_auth::SigningKey::generate(Algorithm::EdDSA).expect("an EdDSA key");
    let issuer = mainstay_auth::TokenIssuer::new("shop-users", "shop", key);
    let validator = mainstay_auth::Validator::builder()
        .issuer("shop-users")
        .audience("shop")
        .keys(issuer.key_set())
        .build()
        .expect("a validator of one static key");
    (issuer, validator)
}

/// A service's own migrations in a temporary directory (removed on drop): version 1 creates the
/// table `things`, the same version as the first of the kit's and of shop-messaging's, to prove
/// that sets of migrations recorded in different tables never meet.
#[derive(Debug)]
pub struct ServiceMigrations {
    /// The migrator, recorded in sqlx's default `_sqlx_migrations`.
    pub migrator: sqlx::migrate::Migrator,
    dir: std::path::PathBuf,
}

impl ServiceMigrations {
    /// Writes the migration and reads it back.
    ///
    /// # Panics
    ///
    /// The temporary directory cannot be written.
    pub async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("service-migrations-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(
            dir.join("0001_things.sql"),
            "CREATE TABLE things (id TEXT PRIMARY KEY NOT NULL);",
        )
        .expect("a migration file");
        let migrator = sqlx::migrate::Migrator::new(dir.as_path())
            .await
            .expect("the migration reads back");
        Self { migrator, dir }
    }
}

impl Drop for ServiceMigrations {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until one session of `database`'s PostgreSQL database waits on a lock (the other
/// transaction of a race test, blocked by the test's own), polling every 5 ms.
///
/// # Panics
///
/// `other` finished first (it did not wait: the test's failure, reported as `what`), or the
/// database fails.
pub async fn until_one_waits_on_a_lock<T>(
    database: &crate::store::Database,
    other: &tokio::task::JoinHandle<T>,
    what: &str,
) {
    let crate::store::Database::Postgres(pool) = database else {
        panic!("lock waits are a PostgreSQL test's");
    };
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting == 1 {
            return;
        }
        assert!(!other.is_finished(), "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
