//! The users store: the same SQL on PostgreSQL and SQLite, through the kit's store pattern
//! (`shop_common::store`).
//!
//! Both dialects accept this SQL as written (`$N` placeholders, `RETURNING`, `FALSE`), so
//! `on_db!` and `on_tx!` run it on either driver's own types (no `Any`). Writes that a caller
//! may need to make with others, all or nothing, take its transaction (`create_in`).

use async_trait::async_trait;
use mainstay_auth::refresh::{Consumed, RefreshRecord, RefreshStore};
use shop_common::store::{Database, StoreError, Tx};
use shop_common::{on_db, on_tx};
use sqlx::migrate::Migrator;

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
    /// The private key at rest: `kek1:` and the PKCS#8 DER sealed with the key-encryption key
    /// (`SIGNING_KEY_KEK`) in the context of its `kid`; or, from before keys were wrapped, the
    /// PKCS#8 DER itself, which the service wraps when it starts.
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

/// Whether `error` is a unique violation (another row holds the value).
#[must_use]
pub fn unique_violation(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
}

/// Accounts, refresh tokens and signing keys, on the service's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserStore {
    db: Database,
}

impl UserStore {
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

    /// Creates a user unless the email is taken.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn create(&self, user: &User) -> Result<Write<User>, StoreError> {
        let mut tx = self.db.begin().await?;
        let written = Self::create_in(&mut tx, user).await?;
        if matches!(written, Write::Done(_)) {
            tx.commit().await?;
        }
        Ok(written)
    }

    /// Creates a user within `tx` unless the email is taken ([`Write::EmailTaken`], which
    /// leaves `tx` usable: the insert does nothing on a conflict rather than fail).
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn create_in(tx: &mut Tx, user: &User) -> Result<Write<User>, StoreError> {
        let inserted = on_tx!(tx, conn => sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (email) DO NOTHING",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(&user.role)
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&mut **conn)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(if inserted == 1 {
            Write::Done(user.clone())
        } else {
            Write::EmailTaken
        })
    }

    /// The user with this (normalised) email.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_as("SELECT * FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(pool)
                .await)?,
        )
    }

    /// The user with this id.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(
            on_db!(&self.db, pool => sqlx::query_as("SELECT * FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await)?,
        )
    }

    /// Changes the name; `None` when the user does not exist. (An email changes only by
    /// [`confirm_email_change_in`](Self::confirm_email_change_in).)
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn rename(&self, id: &str, name: &str, now: i64) -> Result<Option<User>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "UPDATE users SET name = $2, updated_at = $3 WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(name)
        .bind(now)
        .fetch_optional(pool)
        .await)?)
    }

    /// Records, within `tx`, `user_id`'s pending change to `email`, confirmed by the token
    /// whose digest is `digest` until `expires_at`; it replaces the user's earlier pending
    /// change, and expired ones are forgotten.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn request_email_change_in(
        tx: &mut Tx,
        digest: &str,
        user_id: &str,
        email: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        on_tx!(tx, conn => sqlx::query("DELETE FROM email_changes WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut **conn)
            .await.map(|done| done.rows_affected()))?;
        // An upsert, so that two requests at once by one user leave one pending change (the
        // later), where a delete-then-insert would meet the unique user id.
        on_tx!(tx, conn => sqlx::query(
            "INSERT INTO email_changes (digest, user_id, email, expires_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET digest = excluded.digest, \
             email = excluded.email, expires_at = excluded.expires_at",
        )
        .bind(digest)
        .bind(user_id)
        .bind(email)
        .bind(expires_at)
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Spends, within `tx`, the token whose digest is `digest` and applies its change, if it
    /// has not expired. The token is spent whatever the outcome, once `tx` commits: of two
    /// confirmations, one applies it.
    ///
    /// # Errors
    ///
    /// The database fails; or, on PostgreSQL, another account took the address in a
    /// transaction that committed after this one looked (a unique violation, which spoils
    /// `tx`: run it again, and it answers [`EmailChange::Taken`]).
    pub async fn confirm_email_change_in(
        tx: &mut Tx,
        digest: &str,
        now: i64,
    ) -> Result<EmailChange, StoreError> {
        let pending: Option<(String, String)> = on_tx!(tx, conn => sqlx::query_as(
            "DELETE FROM email_changes WHERE digest = $1 AND expires_at > $2 \
             RETURNING user_id, email",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(&mut **conn)
        .await)?;
        let Some((user_id, email)) = pending else {
            return Ok(EmailChange::Unknown);
        };
        // Taken meanwhile: the change can never apply, and the token stays spent.
        let taken: Option<i32> = on_tx!(tx, conn => sqlx::query_scalar(
            "SELECT 1 FROM users WHERE email = $1 AND id <> $2",
        )
        .bind(&email)
        .bind(&user_id)
        .fetch_optional(&mut **conn)
        .await)?;
        if taken.is_some() {
            return Ok(EmailChange::Taken);
        }
        let updated = on_tx!(tx, conn => sqlx::query_as(
            "UPDATE users SET email = $2, updated_at = $3 WHERE id = $1 RETURNING *",
        )
        .bind(&user_id)
        .bind(&email)
        .bind(now)
        .fetch_optional(&mut **conn)
        .await)?;
        Ok(updated.map_or(EmailChange::Unknown, EmailChange::Changed))
    }

    /// A page of users by creation time, and the total.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn list(&self, limit: i64, offset: i64) -> Result<(Vec<User>, i64), StoreError> {
        let users = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT * FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
        let total: i64 = on_db!(&self.db, pool => sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(pool)
            .await)?;
        Ok((users, total))
    }

    /// Every key not yet retired at `now`, the current one first.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn signing_keys(&self, now: i64) -> Result<Vec<StoredKey>, StoreError> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT * FROM signing_keys WHERE retire_at IS NULL OR retire_at > $1 \
             ORDER BY created_at DESC, kid",
        )
        .bind(now)
        .fetch_all(pool)
        .await)?)
    }

    /// Replaces the key `kid` stored as `plain` with `wrapped`; a replica that wrapped it first
    /// wins, and this does nothing.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn wrap_key(
        &self,
        kid: &str,
        plain: &[u8],
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE signing_keys SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2",
        )
        .bind(kid)
        .bind(plain)
        .bind(wrapped)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Stores `next` as current and retires the current key at `retire_at`, atomically.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn rotate_key(&self, next: &StoredKey, retire_at: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        on_tx!(&mut tx, conn => sqlx::query(
            "UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL",
        )
        .bind(retire_at)
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()))?;
        on_tx!(&mut tx, conn => sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, pkcs8, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&next.kid)
        .bind(&next.algorithm)
        .bind(&next.pkcs8)
        .bind(next.created_at)
        .execute(&mut **conn)
        .await.map(|done| done.rows_affected()))?;
        tx.commit().await
    }
}

#[async_trait]
impl RefreshStore for UserStore {
    type Error = StoreError;

    async fn insert(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let expires_at = i64::try_from(record.expires_at).unwrap_or(i64::MAX);
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO refresh_tokens (digest, family, subject, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&record.digest)
        .bind(&record.family)
        .bind(&record.subject)
        .bind(expires_at)
        .execute(pool)
        .await.map(|done| done.rows_affected()))?;
        Ok(())
    }

    async fn consume(&self, digest: &str, now: u64) -> Result<Consumed, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // One statement: of two concurrent calls, exactly one updates the row.
        let fresh: Option<(String, String, i64)> = on_db!(&self.db, pool => sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $2 \
             WHERE digest = $1 AND used_at IS NULL AND revoked = FALSE AND expires_at > $2 \
             RETURNING family, subject, expires_at",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(pool)
        .await)?;
        if let Some((family, subject, expires_at)) = fresh {
            return Ok(Consumed::Fresh(RefreshRecord {
                digest: digest.to_owned(),
                family,
                subject,
                expires_at: u64::try_from(expires_at).unwrap_or(0),
            }));
        }
        let used: Option<String> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT family FROM refresh_tokens \
             WHERE digest = $1 AND used_at IS NOT NULL AND revoked = FALSE",
        )
        .bind(digest)
        .fetch_optional(pool)
        .await)?;
        Ok(match used {
            Some(family) => Consumed::Reused(family),
            None => Consumed::Invalid,
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE family = $1")
            .bind(family)
            .execute(pool)
            .await.map(|done| done.rows_affected()))?;
        Ok(())
    }
}
