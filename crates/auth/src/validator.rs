//! Token validation: size, shape, key, algorithm, signature, claims; and the verified-token
//! cache in front of it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;

use crate::error::AuthError;
use crate::jwks::Jwks;
use crate::keys::{KeySet, VerifyingKey};
use crate::principal::{Principal, Standard};
use crate::unix_now;

/// The two header fields key selection needs, parsed without the rest (jsonwebtoken parses the
/// whole header again when it verifies).
#[derive(Deserialize)]
struct KeyHeader<'a> {
    alg: Algorithm,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
}

/// The header of a compact JWS, if it is one.
fn key_header(token: &str, buffer: &mut Vec<u8>) -> Option<(Algorithm, Option<String>)> {
    let (encoded, rest) = token.split_once('.')?;
    // Three parts, no more: the signature may be empty only to be refused later.
    if rest.bytes().filter(|&b| b == b'.').count() != 1 {
        return None;
    }
    URL_SAFE_NO_PAD.decode_vec(encoded, buffer).ok()?;
    let header: KeyHeader<'_> = serde_json::from_slice(buffer).ok()?;
    Some((header.alg, header.kid.map(Cow::into_owned)))
}

/// A `kid` longer than this is malformed: no key is named so, and none is fetched for it.
const MAX_KID_BYTES: usize = 256;

/// A validator built without an issuer, an audience or keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No accepted issuer: `iss` is required.
    #[error("a validator needs at least one issuer")]
    NoIssuer,
    /// No accepted audience: `aud` is required.
    #[error("a validator needs at least one audience")]
    NoAudience,
    /// Neither static keys nor a JWKS.
    #[error("a validator needs keys or a JWKS")]
    NoKeys,
}

#[derive(Clone)]
enum Keys {
    Static(Arc<KeySet>),
    Remote(Jwks),
}

/// Configures a [`Validator`].
#[derive(Clone)]
pub struct ValidatorBuilder {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    required_claims: Vec<String>,
    max_token_bytes: usize,
    cache_capacity: u64,
    keys: Option<Keys>,
}

impl fmt::Debug for ValidatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatorBuilder")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .field("required_claims", &self.required_claims)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

impl ValidatorBuilder {
    /// Accepts tokens whose `iss` is `issuer` (call again to accept several).
    #[must_use]
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts tokens whose `aud` names `audience` (call again to accept several).
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// A claim every token must carry, beyond `sub`, `iss`, `aud` and `exp`.
    #[must_use]
    pub fn require_claim(mut self, claim: impl Into<String>) -> Self {
        self.required_claims.push(claim.into());
        self
    }

    /// Tokens longer than this are refused before any parsing (default 8 KiB).
    #[must_use]
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Verified tokens remembered (default 10,000; 0 turns the cache off).
    #[must_use]
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Trusts these keys.
    #[must_use]
    pub fn keys(mut self, keys: KeySet) -> Self {
        self.keys = Some(Keys::Static(Arc::new(keys)));
        self
    }

    /// Trusts the keys of a JWKS document.
    #[must_use]
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.keys = Some(Keys::Remote(jwks));
        self
    }

    /// The validator.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when issuer, audience or keys are missing.
    pub fn build(self) -> Result<Validator, ConfigError> {
        if self.issuers.is_empty() {
            return Err(ConfigError::NoIssuer);
        }
        if self.audiences.is_empty() {
            return Err(ConfigError::NoAudience);
        }
        let keys = self.keys.ok_or(ConfigError::NoKeys)?;
        let mut validations = HashMap::new();
        for family in [
            AlgorithmFamily::Hmac,
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ] {
            for &algorithm in family.algorithms() {
                let mut v = Validation::new(algorithm);
                v.set_issuer(&self.issuers);
                v.set_audience(&self.audiences);
                v.leeway = self.leeway.as_secs();
                v.validate_nbf = true;
                v.required_spec_claims = ["exp", "iss", "aud", "sub"]
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<HashSet<_>>();
                validations.insert(algorithm, v);
            }
        }
        let cache = (self.cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(self.cache_capacity)
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        Ok(Validator(Arc::new(Shared {
            keys,
            validations,
            required_claims: self.required_claims,
            max_token_bytes: self.max_token_bytes,
            cache,
        })))
    }
}

struct Shared {
    keys: Keys,
    validations: HashMap<Algorithm, Validation>,
    required_claims: Vec<String>,
    max_token_bytes: usize,
    /// Keyed by the token itself, compared on a hit (exact). Hashed with foldhash, seeded per
    /// process, rather than the standard `SipHash`, which cost most of a cache hit: only
    /// verified tokens are inserted, so filling one bucket would take valid signatures over
    /// colliding tokens, which only the issuer can make.
    cache: Option<moka::sync::Cache<Arc<str>, Arc<Verified>, foldhash::fast::RandomState>>,
}

/// A verified token in the cache.
struct Verified {
    principal: Principal,
    /// The key that verified it: a cache hit is honoured only while the key is still trusted.
    key: Arc<VerifyingKey>,
}

/// moka's clock type: moka's choice, not a time this crate measures (expiry is by `exp`).
#[allow(clippy::disallowed_types)]
type MokaInstant = std::time::Instant;

/// Entries live until the token's `exp`, never longer.
struct UntilExp;

impl moka::Expiry<Arc<str>, Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Verified>,
        _created_at: MokaInstant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.principal.expires_at().saturating_sub(unix_now()),
        ))
    }
}

/// The result of the synchronous part of validation.
pub(crate) enum Checked {
    Valid(Principal),
    Invalid(AuthError),
    /// The token names a key the JWKS cache lacks: fetch, then check again.
    NeedsKeys,
}

/// Validates bearer tokens; shared by clones.
///
/// A token is refused, in this order, when it is larger than the limit, not three base64url
/// parts, names a `kid` longer than 256 bytes or unknown, declares an `alg` other than its
/// key's, fails the signature, or fails the claims (`exp`, `nbf` with leeway; `iss`, `aud`,
/// `sub`, `exp` and the configured claims required). A verified token is remembered until its
/// `exp`: validating it again costs one hash table lookup.
///
/// ```
/// use mainstay_auth::{KeySet, Validator, VerifyingKey};
/// use jsonwebtoken::Algorithm;
///
/// let key = VerifyingKey::hmac(Algorithm::HS256, b"a secret of at least thirty-two bytes")?;
/// let validator = Validator::builder()
///     .issuer("https://users.example")
///     .audience("shop")
///     .keys(KeySet::new().with(key))
///     .build()?;
/// assert!(validator.validate_static("not.a.token").is_err());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Validator(Arc<Shared>);

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("remote_keys", &matches!(self.0.keys, Keys::Remote(_)))
            .field(
                "cached",
                &self.0.cache.as_ref().map(moka::sync::Cache::entry_count),
            )
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// Configures a validator. Issuer, audience and keys are required.
    #[must_use]
    pub fn builder() -> ValidatorBuilder {
        ValidatorBuilder {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            required_claims: Vec::new(),
            max_token_bytes: 8 * 1024,
            cache_capacity: 10_000,
            keys: None,
        }
    }

    /// Validates `token`, fetching the JWKS when it names an unknown key.
    ///
    /// # Errors
    ///
    /// [`AuthError`] naming the first check the token fails.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        match self.check(token) {
            Checked::Valid(principal) => Ok(principal),
            Checked::Invalid(error) => Err(error),
            Checked::NeedsKeys => {
                if let Keys::Remote(jwks) = &self.0.keys {
                    jwks.refresh_for_unknown_kid().await?;
                }
                match self.check(token) {
                    Checked::Valid(principal) => Ok(principal),
                    Checked::Invalid(error) => Err(error),
                    Checked::NeedsKeys => Err(AuthError::UnknownKey),
                }
            }
        }
    }

    /// Validates `token` without waiting: with a JWKS, a key not yet cached is
    /// [`AuthError::UnknownKey`]. For static keys this is the whole validation.
    ///
    /// # Errors
    ///
    /// [`AuthError`] naming the first check the token fails.
    pub fn validate_static(&self, token: &str) -> Result<Principal, AuthError> {
        match self.check(token) {
            Checked::Valid(principal) => Ok(principal),
            Checked::Invalid(error) => Err(error),
            Checked::NeedsKeys => Err(AuthError::UnknownKey),
        }
    }

    fn key_set(&self) -> Arc<KeySet> {
        match &self.0.keys {
            Keys::Static(keys) => keys.clone(),
            Keys::Remote(jwks) => {
                jwks.refresh_ahead_if_due();
                jwks.keys()
            }
        }
    }

    pub(crate) fn check(&self, token: &str) -> Checked {
        let shared = &*self.0;
        if token.len() > shared.max_token_bytes {
            return Checked::Invalid(AuthError::TooLarge {
                limit: shared.max_token_bytes,
            });
        }
        if let Some(cache) = &shared.cache
            && let Some(hit) = cache.get(token)
        {
            let key_trusted = match &shared.keys {
                Keys::Static(_) => true,
                Keys::Remote(_) => self
                    .key_set()
                    .find(hit.key.kid())
                    .is_some_and(|k| Arc::ptr_eq(k, &hit.key)),
            };
            if key_trusted && unix_now() < hit.principal.expires_at() {
                return Checked::Valid(hit.principal.clone());
            }
            cache.invalidate(token);
        }
        let mut buffer = Vec::with_capacity(128);
        let Some((alg, kid)) = key_header(token, &mut buffer) else {
            return Checked::Invalid(AuthError::Malformed);
        };
        if kid.as_ref().is_some_and(|kid| kid.len() > MAX_KID_BYTES) {
            return Checked::Invalid(AuthError::Malformed);
        }
        let keys = self.key_set();
        let Some(key) = keys.find(kid.as_deref()) else {
            return match shared.keys {
                Keys::Remote(_) => Checked::NeedsKeys,
                Keys::Static(_) => Checked::Invalid(AuthError::UnknownKey),
            };
        };
        if alg != key.algorithm() {
            return Checked::Invalid(AuthError::AlgorithmNotAllowed);
        }
        let Some(validation) = shared.validations.get(&key.algorithm()) else {
            return Checked::Invalid(AuthError::AlgorithmNotAllowed);
        };
        let standard = match jsonwebtoken::decode::<Standard>(token, key.decoding_key(), validation)
        {
            Ok(data) => data.claims,
            Err(error) => return Checked::Invalid(AuthError::from_jwt(&error)),
        };
        // The payload segment, for the claims a handler may ask for later.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let principal = match Principal::from_standard(standard, payload) {
            Ok(principal) => principal,
            Err(error) => return Checked::Invalid(error),
        };
        if let Some(missing) = shared
            .required_claims
            .iter()
            .find(|claim| !principal.claims().contains_key(claim.as_str()))
        {
            return Checked::Invalid(AuthError::MissingClaim(missing.clone()));
        }
        if let Some(cache) = &shared.cache {
            cache.insert(
                Arc::from(token),
                Arc::new(Verified {
                    principal: principal.clone(),
                    key: key.clone(),
                }),
            );
        }
        Checked::Valid(principal)
    }
}
