//! The users service: accounts, login, access and refresh tokens, and the JWKS every other
//! service validates tokens with.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `POST /register` | — | `{email, password, name}` → 201 the user |
//! | `POST /login` | — | `{email, password}` → 200 tokens; limited per account and per IP |
//! | `POST /token/refresh` | — | `{refresh_token}` → 200 new tokens (the old refresh token is spent) |
//! | `POST /logout` | — | `{refresh_token}` → 204; signs out every token of that login |
//! | `GET /me`, `PATCH /me` | bearer | the caller's profile; `{name?, email?}` |
//! | `GET /.well-known/jwks.json` | — | the public keys |
//! | `GET /users?limit&offset` | role `admin` | a page of users |
//! | `POST /admin/keys/rotate` | role `admin` | new signing key; the old one is served until its tokens expire |
//!
//! Errors are `application/problem+json`: 401 for bad credentials or tokens, 403 for a missing
//! role, 409 for a taken email, 413/415/400/422 for bodies (422 lists every invalid field), 429
//! with `Retry-After` for too many logins.

#![forbid(unsafe_code)]

mod api;
pub mod config;
mod input;
pub mod password;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{FetchError, FetchJwks, Fetched, Jwks, SigningKey, TokenIssuer, Validator};
use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
use shop_common::store::{Database, StoreError};

pub use self::api::router;
pub use self::config::UsersConfig;
use self::password::Passwords;
use self::store::{StoredKey, User, UserStore, Write};

/// The demo accounts created on the embedded default (see the README).
pub const DEMO_USERS: [(&str, &str, &str, &str); 2] = [
    (
        "alice@example.com",
        "alice-in-wonderland",
        "Alice",
        "customer",
    ),
    ("admin@example.com", "admin-change-me-now", "Admin", "admin"),
];

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored signing key is unusable.
    #[error("stored signing key {kid}: {error}")]
    Key {
        /// The key.
        kid: String,
        /// Why.
        error: mainstay_auth::KeyError,
    },
    /// Hashing a seed password failed.
    #[error("seeding: {0}")]
    Seed(String),
}

/// The service's state, shared by its handlers.
#[derive(Clone)]
pub struct Users(Arc<Inner>);

struct Inner {
    config: UsersConfig,
    store: Arc<dyn UserStore>,
    issuer: Arc<TokenIssuer>,
    jwks: Jwks,
    validator: Validator,
    passwords: Passwords,
    per_account: KeyedRateLimitLayer<(), String>,
    per_ip: KeyedRateLimitLayer<(), IpAddr>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("issuer", &self.0.config.issuer)
            .finish_non_exhaustive()
    }
}

/// The in-process JWKS: the validator of `/me` reads the issuer's keys without HTTP.
struct LocalKeys(Arc<TokenIssuer>);

#[async_trait]
impl FetchJwks for LocalKeys {
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        Ok(Fetched {
            keys: self.0.jwks(),
            max_age: Some(Duration::from_secs(60)),
        })
    }
}

pub(crate) fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn algorithm_name(algorithm: Algorithm) -> String {
    format!("{algorithm:?}")
}

fn restore(stored: &StoredKey) -> Result<SigningKey, StartError> {
    let fail = |error| StartError::Key {
        kid: stored.kid.clone(),
        error,
    };
    let algorithm: Algorithm = stored
        .algorithm
        .parse()
        .map_err(|_| fail(mainstay_auth::KeyError::NoAlgorithm))?;
    SigningKey::from_pkcs8_der(algorithm, &stored.pkcs8).map_err(fail)
}

fn stored(key: &SigningKey) -> StoredKey {
    StoredKey {
        kid: key.kid().to_owned(),
        algorithm: algorithm_name(key.algorithm()),
        pkcs8: key.pkcs8_der().to_vec(),
        created_at: unix_now(),
        retire_at: None,
    }
}

impl Users {
    /// Opens the store (migrating it), loads or creates the signing key, and seeds the demo
    /// accounts when configured to.
    ///
    /// # Errors
    ///
    /// The database fails, or a stored key cannot be read.
    pub async fn start(config: UsersConfig, database: &Database) -> Result<Self, StartError> {
        let store = store::open(database).await?;
        let now = unix_now();
        let keys = store.signing_keys(now).await?;
        let current = match keys.iter().find(|k| k.retire_at.is_none()) {
            Some(current) => restore(current)?,
            None => {
                let key =
                    SigningKey::generate(config.algorithm).map_err(|error| StartError::Key {
                        kid: "new".to_owned(),
                        error,
                    })?;
                store.rotate_key(&stored(&key), now).await?;
                tracing::info!(kid = key.kid(), "created the first signing key");
                key
            }
        };
        let mut issuer = TokenIssuer::new(&config.issuer, &config.audience, current)
            .access_ttl(config.access_ttl);
        for retiring in keys.iter().filter(|k| k.retire_at.is_some()) {
            let until = UNIX_EPOCH
                + Duration::from_secs(u64::try_from(retiring.retire_at.unwrap_or(0)).unwrap_or(0));
            issuer = issuer.with_retiring(restore(retiring)?, until);
        }
        let issuer = Arc::new(issuer);
        let jwks = Jwks::new(LocalKeys(issuer.clone()));
        let validator = Validator::builder()
            .issuer(&config.issuer)
            .audience(&config.audience)
            .jwks(jwks.clone())
            .build()
            .map_err(|e| StartError::Seed(e.to_string()))?;
        let (burst, period) = config.login_per_account;
        let per_account = KeyedRateLimitLayer::new(burst, period, ())
            .map_err(|e| StartError::Seed(e.to_string()))?;
        let (burst, period) = config.login_per_ip;
        let per_ip = KeyedRateLimitLayer::new(burst, period, ())
            .map_err(|e| StartError::Seed(e.to_string()))?;
        let users = Self(Arc::new(Inner {
            passwords: Passwords::new(),
            store,
            issuer,
            jwks,
            validator,
            per_account,
            per_ip,
            config,
        }));
        if users.0.config.seed_demo_users {
            users.seed().await?;
        }
        Ok(users)
    }

    async fn seed(&self) -> Result<(), StartError> {
        for (email, password, name, role) in DEMO_USERS {
            if self.0.store.by_email(email).await?.is_some() {
                continue;
            }
            let hash = self
                .0
                .passwords
                .hash(password.to_owned())
                .await
                .map_err(|e| StartError::Seed(e.to_string()))?;
            let now = unix_now();
            let user = User {
                id: uuid::Uuid::new_v4().to_string(),
                email: email.to_owned(),
                name: name.to_owned(),
                password_hash: hash,
                role: role.to_owned(),
                created_at: now,
                updated_at: now,
            };
            if let Write::Done(_) = self.0.store.create(&user).await? {
                tracing::info!(email, role, "seeded a demo account");
            }
        }
        Ok(())
    }

    /// The store, for readiness checks and tests.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.0.store
    }
}
