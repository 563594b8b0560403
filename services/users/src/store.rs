//! The users store: one trait, the same SQL on PostgreSQL and SQLite.
//!
//! Both dialects accept this SQL as written (`$N` placeholders, `RETURNING`, `FALSE`), so one
//! macro instantiates the implementation for each pool type; the types stay native to each
//! driver (no `Any`).

use async_trait::async_trait;
use mainstay_auth::refresh::{Consumed, RefreshRecord, RefreshStore};
use shop_common::store::{Database, StoreError};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// Migrations for SQLite.
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// A UUID.
    pub id: String,
    /// Normalised: trimmed and lower-cased.
    pub email: String,
    /// Display name.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `customer` or `admin`.
    pub role: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub updated_at: i64,
}

/// A signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA`, `ES256`, …
    pub algorithm: String,
    /// The private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// When a rotated key leaves the JWKS; `None` for the current key.
    pub retire_at: Option<i64>,
}

/// Whether an insert or update met the unique email constraint.
#[derive(Debug)]
pub enum Write<T> {
    /// Written.
    Done(T),
    /// Another account has that email.
    EmailTaken,
}

/// What confirming an email change did.
#[derive(Debug)]
pub enum EmailChange {
    /// The account has its new email.
    Changed(User),
    /// No pending change has this token (never made, spent, expired or replaced).
    Unknown,
    /// Another account took the address meanwhile; the token is spent.
    Taken,
}

/// Accounts, refresh tokens and signing keys.
#[async_trait]
pub trait UserStore: RefreshStore<Error = StoreError> + Send + Sync + 'static {
    /// Creates a user unless the email is taken.
    async fn create(&self, user: &User) -> Result<Write<User>, StoreError>;
    /// The user with this (normalised) email.
    async fn by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// The user with this id.
    async fn by_id(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// Changes the name; `None` when the user does not exist. (An email changes only by
    /// [`confirm_email_change`](Self::confirm_email_change).)
    async fn rename(&self, id: &str, name: &str, now: i64) -> Result<Option<User>, StoreError>;
    /// Records `user_id`'s pending change to `email`, confirmed by the token whose digest is
    /// `digest` until `expires_at`; it replaces the user's earlier pending change, and expired
    /// ones are forgotten.
    async fn request_email_change(
        &self,
        digest: &str,
        user_id: &str,
        email: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Spends the token whose digest is `digest` and applies its change, if it has not expired.
    async fn confirm_email_change(&self, digest: &str, now: i64)
    -> Result<EmailChange, StoreError>;
    /// A page of users by creation time, and the total.
    async fn list(&self, limit: i64, offset: i64) -> Result<(Vec<User>, i64), StoreError>;
    /// Every key not yet retired at `now`.
    async fn signing_keys(&self, now: i64) -> Result<Vec<StoredKey>, StoreError>;
    /// Stores `next` as current and retires the current key at `retire_at`, atomically.
    async fn rotate_key(&self, next: &StoredKey, retire_at: i64) -> Result<(), StoreError>;
}

fn unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

macro_rules! user_store {
    ($name:ident, $pool:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub $pool);

        #[async_trait]
        impl RefreshStore for $name {
            type Error = StoreError;

            async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError> {
                let expires_at = i64::try_from(record.expires_at).unwrap_or(i64::MAX);
                sqlx::query(
                    "INSERT INTO refresh_tokens (digest, family, subject, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&record.digest)
                .bind(&record.family)
                .bind(&record.subject)
                .bind(expires_at)
                .execute(&self.0)
                .await?;
                Ok(())
            }

            async fn consume(&self, digest: &str, now: u64) -> Result<Consumed, StoreError> {
                let now = i64::try_from(now).unwrap_or(i64::MAX);
                // One statement: of two concurrent calls, exactly one updates the row.
                let fresh: Option<(String, String, i64)> = sqlx::query_as(
                    "UPDATE refresh_tokens SET used_at = $2 \
                     WHERE digest = $1 AND used_at IS NULL AND revoked = FALSE AND expires_at > $2 \
                     RETURNING family, subject, expires_at",
                )
                .bind(digest)
                .bind(now)
                .fetch_optional(&self.0)
                .await?;
                if let Some((family, subject, expires_at)) = fresh {
                    return Ok(Consumed::Fresh(RefreshRecord {
                        digest: digest.to_owned(),
                        family,
                        subject,
                        expires_at: u64::try_from(expires_at).unwrap_or(0),
                    }));
                }
                let used: Option<(String,)> = sqlx::query_as(
                    "SELECT family FROM refresh_tokens \
                     WHERE digest = $1 AND used_at IS NOT NULL AND revoked = FALSE",
                )
                .bind(digest)
                .fetch_optional(&self.0)
                .await?;
                Ok(match used {
                    Some((family,)) => Consumed::Reused(family),
                    None => Consumed::Invalid,
                })
            }

            async fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE family = $1")
                    .bind(family)
                    .execute(&self.0)
                    .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl UserStore for $name {
            async fn create(&self, user: &User) -> Result<Write<User>, StoreError> {
                let result = sqlx::query(
                    "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&user.id)
                .bind(&user.email)
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(&user.role)
                .bind(user.created_at)
                .bind(user.updated_at)
                .execute(&self.0)
                .await;
                match result {
                    Ok(_) => Ok(Write::Done(user.clone())),
                    Err(e) if unique_violation(&e) => Ok(Write::EmailTaken),
                    Err(e) => Err(e.into()),
                }
            }

            async fn by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
                Ok(sqlx::query_as("SELECT * FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_optional(&self.0)
                    .await?)
            }

            async fn by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
                Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.0)
                    .await?)
            }

            async fn rename(
                &self,
                id: &str,
                name: &str,
                now: i64,
            ) -> Result<Option<User>, StoreError> {
                Ok(sqlx::query_as(
                    "UPDATE users SET name = $2, updated_at = $3 WHERE id = $1 RETURNING *",
                )
                .bind(id)
                .bind(name)
                .bind(now)
                .fetch_optional(&self.0)
                .await?)
            }

            async fn request_email_change(
                &self,
                digest: &str,
                user_id: &str,
                email: &str,
                expires_at: i64,
                now: i64,
            ) -> Result<(), StoreError> {
                let mut tx = self.0.begin().await?;
                sqlx::query("DELETE FROM email_changes WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // An upsert, so that two requests at once by one user leave one pending change
                // (the later), where a delete-then-insert would meet the unique user id.
                sqlx::query(
                    "INSERT INTO email_changes (digest, user_id, email, expires_at) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id) DO UPDATE SET digest = excluded.digest, \
                     email = excluded.email, expires_at = excluded.expires_at",
                )
                .bind(digest)
                .bind(user_id)
                .bind(email)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn confirm_email_change(
                &self,
                digest: &str,
                now: i64,
            ) -> Result<EmailChange, StoreError> {
                // One transaction spends the token and applies it: of two confirmations, one
                // applies it, and a failure on the way leaves the token unspent.
                let mut tx = self.0.begin().await?;
                let pending: Option<(String, String)> = sqlx::query_as(
                    "DELETE FROM email_changes WHERE digest = $1 AND expires_at > $2 \
                     RETURNING user_id, email",
                )
                .bind(digest)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((user_id, email)) = pending else {
                    return Ok(EmailChange::Unknown);
                };
                let updated = sqlx::query_as(
                    "UPDATE users SET email = $2, updated_at = $3 WHERE id = $1 RETURNING *",
                )
                .bind(&user_id)
                .bind(&email)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await;
                match updated {
                    Ok(Some(user)) => {
                        tx.commit().await?;
                        Ok(EmailChange::Changed(user))
                    }
                    Ok(None) => Ok(EmailChange::Unknown),
                    Err(e) if unique_violation(&e) => {
                        // Taken meanwhile: the change can never apply, so the token is spent.
                        tx.rollback().await?;
                        sqlx::query("DELETE FROM email_changes WHERE digest = $1")
                            .bind(digest)
                            .execute(&self.0)
                            .await?;
                        Ok(EmailChange::Taken)
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn list(&self, limit: i64, offset: i64) -> Result<(Vec<User>, i64), StoreError> {
                let users = sqlx::query_as(
                    "SELECT * FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2",
                )
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.0)
                .await?;
                let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
                    .fetch_one(&self.0)
                    .await?;
                Ok((users, total))
            }

            async fn signing_keys(&self, now: i64) -> Result<Vec<StoredKey>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT * FROM signing_keys WHERE retire_at IS NULL OR retire_at > $1 \
                     ORDER BY created_at DESC, kid",
                )
                .bind(now)
                .fetch_all(&self.0)
                .await?)
            }

            async fn rotate_key(&self, next: &StoredKey, retire_at: i64) -> Result<(), StoreError> {
                let mut tx = self.0.begin().await?;
                sqlx::query("UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL")
                    .bind(retire_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, pkcs8, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&next.kid)
                .bind(&next.algorithm)
                .bind(&next.pkcs8)
                .bind(next.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

user_store!(
    SqliteUsers,
    SqlitePool,
    "The users store on SQLite (the embedded default)."
);
user_store!(
    PgUsers,
    PgPool,
    "The users store on PostgreSQL (production)."
);

/// The store for `database`, migrated.
///
/// # Errors
///
/// A migration fails.
pub async fn open(database: &Database) -> Result<std::sync::Arc<dyn UserStore>, StoreError> {
    database
        .migrate(&SQLITE_MIGRATIONS, &POSTGRES_MIGRATIONS)
        .await?;
    Ok(match database {
        Database::Sqlite(pool) => std::sync::Arc::new(SqliteUsers(pool.clone())),
        Database::Postgres(pool) => std::sync::Arc::new(PgUsers(pool.clone())),
    })
}
