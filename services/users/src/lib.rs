//! The users service: accounts, login, access and refresh tokens, and the JWKS every other
//! service validates tokens with.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `POST /register` | — | `{email, password, name}` → 202, the same answer whether or not the email was free; limited per IP |
//! | `POST /login` | — | `{email, password}` → 200 tokens; limited per account and per IP |
//! | `POST /token/refresh` | — | `{refresh_token}` → 200 new tokens (the old refresh token is spent) |
//! | `POST /logout` | — | `{refresh_token}` → 204; signs out every token of that login |
//! | `GET /me`, `PATCH /me` | bearer | the caller's profile; `{name?, email?}`: a new email waits for its confirmation (`pending_email`) |
//! | `POST /email/confirm` | — | `{token}` (mailed to the new address) → 200 the profile with its new email |
//! | `GET /.well-known/jwks.json` | — | the public keys |
//! | `GET /users?limit&offset` | role `admin` | a page of users |
//! | `POST /admin/keys/rotate` | role `admin` | new signing key; the old one is served until its tokens expire |
//!
//! Errors are `application/problem+json`: 401 for bad credentials or tokens, 403 for a missing
//! role, 404 for an unknown confirmation token, 409 when the address was taken before its
//! confirmation, 413/415/400/422 for bodies (422 lists every
//! invalid field), 429 with `Retry-After` for too many logins or registrations, and 503 when
//! registrations are queued too long (they hash apart from logins, so that a flood of them
//! never slows a login).
//!
//! Neither registration nor an email change tells who has an account (OWASP's authentication
//! cheat sheet): a taken email gets the same `202` after the same time (a wait as long as a
//! hash, in the same queue, instead of one) and no account is touched; `PATCH /me` with a new
//! email answers `pending_email` either way, and only the new address's owner can confirm it.
//! The owner of a taken address is told instead, by mail ([`events::AddressClaimAttempted`]). The first admin, `admin@example.com`, is created on first start with
//! `ADMIN_PASSWORD`, or with a generated password printed once.
//!
//! Secrets at rest: the signing keys are wrapped with the key-encryption key `SIGNING_KEY_KEK`
//! (AES-256-GCM, bound to each key's `kid`; a key found plain, from before, is wrapped at
//! start), and the token of an email confirmation rests in the outbox sealed for the mailer
//! with `MAIL_TOKEN_KEY` ([`config::UsersConfig`]).

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod events;
mod input;
pub mod password;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{FetchError, FetchJwks, Fetched, Jwks, SigningKey, TokenIssuer, Validator};
use mainstay_resilience::rate_limit::KeyedRateLimitLayer;
use shop_common::seal::SealKey;
use shop_common::store::{Database, StoreError};

pub use self::api::router;
pub use self::config::UsersConfig;
use self::password::Passwords;
use self::store::{StoredKey, User, UserStore, Write};

/// The demo customer created on the embedded default (see the README): email, password, name.
pub const DEMO_CUSTOMER: (&str, &str, &str) = ("alice@example.com", "alice-in-wonderland", "Alice");

/// The first admin's email: created on first start, in every mode, with `ADMIN_PASSWORD` or a
/// generated password printed once.
pub const ADMIN_EMAIL: &str = "admin@example.com";

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
    /// The mail key's or the key-encryption key's file cannot be read or created, or holds no
    /// key.
    #[error("key file: {0}")]
    KeyFile(#[from] shop_common::seal::SealError),
    /// A stored signing key does not open with the key-encryption key.
    #[error(
        "stored signing key {kid} does not open with SIGNING_KEY_KEK: another key-encryption \
         key, or the row was altered"
    )]
    Unwrap {
        /// The key.
        kid: String,
    },
    /// The messaging tables cannot be migrated.
    #[error("messaging tables: {0}")]
    Messaging(StoreError),
}

/// The service's state, shared by its handlers.
#[derive(Clone)]
pub struct Users(Arc<Inner>);

struct Inner {
    config: UsersConfig,
    store: UserStore,
    issuer: Arc<TokenIssuer>,
    jwks: Jwks,
    validator: Validator,
    passwords: Passwords,
    per_account: KeyedRateLimitLayer<(), String>,
    /// Email change requests, per account id.
    email_changes: KeyedRateLimitLayer<(), String>,
    /// Mails that requests cause, per (normalised) address: no caller makes the service mail
    /// one address without end.
    mail_per_address: KeyedRateLimitLayer<(), String>,
    per_ip: KeyedRateLimitLayer<(), IpAddr>,
    register_per_ip: KeyedRateLimitLayer<(), IpAddr>,
    /// Registrations hashing at once: fewer than the hashing threads, so that logins always
    /// have one.
    registrations: Arc<tokio::sync::Semaphore>,
    /// Seals the tokens mailed to confirm an email change, for the mailer.
    mail_key: SealKey,
    /// Wraps the signing keys at rest.
    kek: SealKey,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("issuer", &self.0.config.issuer)
            .finish_non_exhaustive()
    }
}

/// The in-process JWKS: the validator of `/me` reads the issuer's keys without HTTP, reloading
/// them from the database first (another replica may have rotated).
struct LocalKeys(Arc<std::sync::OnceLock<std::sync::Weak<Inner>>>);

#[async_trait]
impl FetchJwks for LocalKeys {
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let inner = self
            .0
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| FetchError("the users service is not running".to_owned()))?;
        let users = Users(inner);
        if let Err(error) = users.reload_keys().await {
            tracing::warn!(%error, "cannot reload signing keys; serving the ones in memory");
        }
        Ok(Fetched {
            keys: users.0.issuer.jwks(),
            max_age: Some(Duration::from_secs(60)),
        })
    }
}

fn algorithm_name(algorithm: Algorithm) -> String {
    format!("{algorithm:?}")
}

/// How a signing key wrapped with the key-encryption key begins, at rest. (A plain PKCS#8
/// key, from before keys were wrapped, begins with a DER sequence, `0x30`.)
const WRAPPED: &[u8] = b"kek1:";

/// The context a signing key is wrapped in: its `kid`, so that a wrapped key cannot be moved
/// to another row.
fn wrap_context(kid: &str) -> Vec<u8> {
    format!("signing-key\n{kid}").into_bytes()
}

/// The key `stored` holds, unwrapped with `kek`; and whether it was stored plain (from before
/// keys were wrapped), to be wrapped now.
fn restore(stored: &StoredKey, kek: &SealKey) -> Result<(SigningKey, bool), StartError> {
    let fail = |error| StartError::Key {
        kid: stored.kid.clone(),
        error,
    };
    let algorithm: Algorithm = stored
        .algorithm
        .parse()
        .map_err(|_| fail(mainstay_auth::KeyError::NoAlgorithm))?;
    let (pkcs8, plain) = match stored.pkcs8.strip_prefix(WRAPPED) {
        Some(wrapped) => (
            kek.open(wrapped, &wrap_context(&stored.kid))
                .map_err(|_| StartError::Unwrap {
                    kid: stored.kid.clone(),
                })?,
            false,
        ),
        None => (stored.pkcs8.clone(), true),
    };
    let key = SigningKey::from_pkcs8_der(algorithm, &pkcs8).map_err(fail)?;
    Ok((key, plain))
}

fn retire_time(stored: &StoredKey) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(stored.retire_at.unwrap_or(0)).unwrap_or(0))
}

/// `key` as stored: wrapped with `kek` in the context of its `kid`.
fn wrapped(key: &SigningKey, kek: &SealKey) -> Vec<u8> {
    let mut at_rest = WRAPPED.to_vec();
    at_rest.extend(kek.seal(key.pkcs8_der(), &wrap_context(key.kid())));
    at_rest
}

fn stored(key: &SigningKey, kek: &SealKey) -> StoredKey {
    StoredKey {
        kid: key.kid().to_owned(),
        algorithm: algorithm_name(key.algorithm()),
        pkcs8: wrapped(key, kek),
        created_at: shop_common::unix_seconds(),
        retire_at: None,
    }
}

impl Users {
    /// Whether `address` may be mailed once more (a confirmation, a notice to its owner):
    /// past its allowance nothing is sent, and the caller's answer is the same.
    fn may_mail(&self, address: &str, kind: &str) -> bool {
        let allowed = self.0.mail_per_address.check(&address.to_owned()).is_ok();
        if !allowed {
            tracing::warn!(kind, "mails to one address over their limit: not sent");
        }
        allowed
    }

    /// Seals an email-confirmation token for the mailer ([`events::SendEmailConfirmation`]).
    fn seal_token(&self, token: &str, user_id: &str, email: &str) -> String {
        self.0.mail_key.seal_text(
            token.as_bytes(),
            &events::SendEmailConfirmation::seal_context(user_id, email),
        )
    }

    /// The validator of this service's own tokens (its keys read in process), for the routes
    /// that ask for one, such as the backbone's admin routes.
    #[must_use]
    pub fn validator(&self) -> Validator {
        self.0.validator.clone()
    }

    /// The key that seals confirmation tokens: what the mailer must be given.
    #[must_use]
    pub fn mail_key(&self) -> &SealKey {
        &self.0.mail_key
    }

    /// Opens the store and the outbox (migrating them), loads or creates the signing key and
    /// the mail key, and seeds the demo accounts when configured to. [`events`] are written to
    /// the outbox, for a relay (`shop_messaging::Relay`) to publish.
    ///
    /// # Errors
    ///
    /// The database fails, or a stored key cannot be read.
    pub async fn start(config: UsersConfig, database: &Database) -> Result<Self, StartError> {
        let store = UserStore::open(database).await?;
        shop_messaging::migrate(database)
            .await
            .map_err(StartError::Messaging)?;
        let mail_key = match &config.mail_key {
            Some(key) => SealKey::parse(key.expose())?,
            None => SealKey::load_or_create(std::path::Path::new(config::MAIL_KEY_FILE))?,
        };
        let kek = match &config.signing_kek {
            Some(key) => SealKey::parse(key.expose())?,
            None => SealKey::load_or_create(std::path::Path::new(config::KEK_FILE))?,
        };
        let now = shop_common::unix_seconds();
        let keys = store.signing_keys(now).await?;
        // Keys stored plain, from before keys were wrapped, are wrapped now.
        let mut restored = Vec::with_capacity(keys.len());
        for stored in &keys {
            let (key, plain) = restore(stored, &kek)?;
            if plain {
                store
                    .wrap_key(&stored.kid, &stored.pkcs8, &wrapped(&key, &kek))
                    .await?;
                tracing::info!(kid = key.kid(), "wrapped a signing key stored plain");
            }
            restored.push((stored, key));
        }
        let current = match restored.iter().find(|(s, _)| s.retire_at.is_none()) {
            Some((_, current)) => current.clone(),
            None => {
                let key =
                    SigningKey::generate(config.algorithm).map_err(|error| StartError::Key {
                        kid: "new".to_owned(),
                        error,
                    })?;
                store.rotate_key(&stored(&key, &kek), now).await?;
                tracing::info!(kid = key.kid(), "created the first signing key");
                key
            }
        };
        let mut issuer = TokenIssuer::new(&config.issuer, &config.audience, current)
            .access_ttl(config.access_ttl);
        for (stored, key) in restored.iter().filter(|(s, _)| s.retire_at.is_some()) {
            issuer = issuer.with_retiring(key.clone(), retire_time(stored));
        }
        let issuer = Arc::new(issuer);
        // A rate the configuration parsed is never zero, so `new` accepts it.
        fn limit<K>(
            (burst, period): (u32, Duration),
        ) -> Result<KeyedRateLimitLayer<(), K>, StartError>
        where
            K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        {
            KeyedRateLimitLayer::new(burst, period, ()).map_err(|e| StartError::Seed(e.to_string()))
        }
        let per_account = limit(config.login_per_account)?;
        let per_ip = limit(config.login_per_ip)?;
        let register_per_ip = limit(config.register_per_ip)?;
        let email_changes = limit(config.email_change_per_account)?;
        let mail_per_address = limit(config.mail_per_address)?;
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // The validator's JWKS reads this service's own state, which holds the validator: the
        // link back is set once the state exists.
        let this = Arc::new(std::sync::OnceLock::new());
        let jwks = Jwks::new(LocalKeys(this.clone()));
        let validator = Validator::builder()
            .issuer(&config.issuer)
            .audience(&config.audience)
            .jwks(jwks.clone())
            .build()
            .map_err(|e| StartError::Seed(e.to_string()))?;
        let inner = Arc::new(Inner {
            passwords: Passwords::new(),
            store,
            issuer,
            jwks,
            validator,
            per_account,
            per_ip,
            register_per_ip,
            email_changes,
            mail_per_address,
            registrations: Arc::new(tokio::sync::Semaphore::new((cpus / 2).max(1))),
            mail_key,
            kek,
            config,
        });
        let _ = this.set(Arc::downgrade(&inner));
        let users = Self(inner);
        // Rotations made by other replicas reach this one within 30 s.
        let weak = Arc::downgrade(&users.0);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(error) = Users(inner).reload_keys().await {
                    tracing::warn!(%error, "cannot reload signing keys");
                }
            }
        });
        users.seed().await?;
        Ok(users)
    }

    /// Loads the signing keys from the database again, so that a rotation made by another
    /// replica is signed with and published here too. Runs every 30 s after
    /// [`start`](Self::start), and whenever this replica's validator meets an unknown `kid`.
    ///
    /// # Errors
    ///
    /// The database fails, or a stored key cannot be read.
    pub async fn reload_keys(&self) -> Result<(), StartError> {
        let keys = self
            .0
            .store
            .signing_keys(shop_common::unix_seconds())
            .await?;
        let Some(current) = keys.iter().find(|k| k.retire_at.is_none()) else {
            return Ok(());
        };
        let (current, _) = restore(current, &self.0.kek)?;
        let mut retiring = Vec::new();
        for key in keys.iter().filter(|k| k.retire_at.is_some()) {
            retiring.push((restore(key, &self.0.kek)?.0, retire_time(key)));
        }
        if current.kid() != self.0.issuer.current().kid() {
            tracing::info!(
                kid = current.kid(),
                "signing key rotated by another replica"
            );
        }
        self.0.issuer.replace(current, retiring);
        Ok(())
    }

    /// Creates the first admin (in every mode) and, when configured, the demo customer.
    async fn seed(&self) -> Result<(), StartError> {
        let config = &self.0.config;
        let (password, generated) = match &config.admin_password {
            Some(password) => (password.expose().to_owned(), false),
            None => (password::generate(), true),
        };
        if self
            .create_seed(ADMIN_EMAIL, &password, "Admin", "admin")
            .await?
            && generated
        {
            // Once, on the terminal, never in the logs: nobody else knows it.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "users: created {ADMIN_EMAIL} with the password {password}\n\
                     users: it is shown only this once; set ADMIN_PASSWORD to choose it"
                );
            }
        }
        if config.seed_demo_users {
            let (email, password, name) = DEMO_CUSTOMER;
            self.create_seed(email, password, name, "customer").await?;
        }
        Ok(())
    }

    /// Creates an account unless its email is taken; `true` when it was created.
    async fn create_seed(
        &self,
        email: &str,
        password: &str,
        name: &str,
        role: &str,
    ) -> Result<bool, StartError> {
        if self.0.store.by_email(email).await?.is_some() {
            return Ok(false);
        }
        let hash = self
            .0
            .passwords
            .hash(password.to_owned())
            .await
            .map_err(|e| StartError::Seed(e.to_string()))?;
        let now = shop_common::unix_seconds();
        let user = User {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.to_owned(),
            name: name.to_owned(),
            password_hash: hash,
            role: role.to_owned(),
            created_at: now,
            updated_at: now,
        };
        // The account and the event that announces it (the notifications service learns its
        // address from it), in one transaction, as a registration.
        let mut tx = self.0.store.database().begin().await?;
        let created = matches!(UserStore::create_in(&mut tx, &user).await?, Write::Done(_));
        if created {
            let registered = shop_messaging::contracts::UserRegistered {
                user_id: user.id.clone(),
                email: user.email.clone(),
                name: user.name.clone(),
            };
            shop_messaging::Outbox::enqueue(&mut tx, &registered)
                .await
                .map_err(|e| StartError::Seed(e.to_string()))?;
            tx.commit().await?;
            tracing::info!(email, role, "seeded an account");
        }
        Ok(created)
    }

    /// The store, for readiness checks and tests.
    #[must_use]
    pub fn store(&self) -> &UserStore {
        &self.0.store
    }

    /// Passwords hashed since start: registrations, free email or taken alike (for tests and
    /// metrics).
    #[must_use]
    pub fn passwords_hashed(&self) -> u64 {
        self.0.passwords.hashed()
    }

    /// Accounts the per-account login limit tracks now (bounded; for tests and metrics).
    #[must_use]
    pub fn login_limit_keys(&self) -> usize {
        self.0.per_account.tracked_keys()
    }
}

/// The the users service as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: UsersConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Users)> {
    let service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let users = Users::start(config, &service.database)
        .await
        .map_err(std::io::Error::other)?;
    let validator = users.validator();
    let (kit, app) = service.launch(router(users.clone()), validator);
    Ok((kit, app, users))
}
