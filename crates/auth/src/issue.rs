//! Issuance: signing keys, access tokens, the JWKS document, and key rotation.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::keys::{KeyError, KeySet, VerifyingKey};

/// A private key that signs access tokens, with its public JWK. Its `kid` is the RFC 7638
/// thumbprint of the public key.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    pkcs8: Arc<[u8]>,
    encoding: EncodingKey,
    public: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key: Ed25519 for `EdDSA`, P-256 for `ES256`, P-384 for `ES384`, 2048-bit
    /// RSA for `RS256`/`RS384`/`RS512`.
    ///
    /// # Errors
    ///
    /// [`KeyError::AlgorithmMismatch`] for HMAC and PSS algorithms (shared secrets are not
    /// published in a JWKS).
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        let failed = |_| KeyError::Invalid("key generation failed".to_owned());
        let pkcs8: Vec<u8> = match algorithm {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if algorithm == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                EcdsaKeyPair::generate_pkcs8(curve, &SystemRandom::new())
                    .map_err(failed)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(failed)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    pair.as_der().map_err(failed)?;
                der.as_ref().to_vec()
            }
            other => return Err(KeyError::AlgorithmMismatch(other)),
        };
        Self::from_pkcs8_der(algorithm, &pkcs8)
    }

    /// A key from its PKCS#8 DER (as [`pkcs8_der`](Self::pkcs8_der) returns it).
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the DER is not a private key of the algorithm's family.
    pub fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let encoding = match algorithm.family() {
            AlgorithmFamily::Ed => EncodingKey::from_ed_der(der),
            AlgorithmFamily::Ec => EncodingKey::from_ec_der(der),
            AlgorithmFamily::Rsa => {
                // jsonwebtoken signs with a PKCS#1 key; its PEM reader unwraps PKCS#8.
                let pem = format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    STANDARD.encode(der)
                );
                EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| KeyError::Invalid(e.to_string()))?
            }
            AlgorithmFamily::Hmac => return Err(KeyError::AlgorithmMismatch(algorithm)),
        };
        let mut public = Jwk::from_encoding_key(&encoding, algorithm)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::from(algorithm));
        // Sign once: a key that cannot sign is refused here, not at the first login.
        jsonwebtoken::encode(&Header::new(algorithm), &Map::new(), &encoding)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            kid,
            algorithm,
            pkcs8: der.into(),
            encoding,
            public,
        })
    }

    /// The key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm it signs with.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The private key as PKCS#8 DER, to store it. Treat it as a secret.
    #[must_use]
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK (with `kid`, `alg` and `use: sig`).
    #[must_use]
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// The public key, to verify tokens signed with this key.
    ///
    /// # Panics
    ///
    /// Never: the JWK was built from this key.
    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        let key = DecodingKey::from_jwk(&self.public).expect("the public JWK of our own key");
        VerifyingKey::new(self.algorithm, key).with_kid(self.kid.clone())
    }
}

/// Failure to sign a token.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct IssueError(#[from] jsonwebtoken::errors::Error);

/// What an access token says about its subject.
#[derive(Debug, Clone, Default)]
pub struct AccessClaims {
    subject: String,
    roles: Vec<String>,
    scopes: Vec<String>,
    extra: Map<String, Value>,
}

impl AccessClaims {
    /// Claims about `subject`.
    #[must_use]
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            ..Self::default()
        }
    }

    /// Adds a role (the `roles` claim).
    #[must_use]
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds a scope (the space-separated `scope` claim).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a claim of the service's own. Registered claims (`iss`, `sub`, `aud`, `exp`, `nbf`,
    /// `iat`, `jti`) cannot be overridden this way.
    #[must_use]
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }
}

/// A signed access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The compact JWS.
    pub token: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// Its `jti`.
    pub id: String,
}

#[derive(Debug)]
struct Ring {
    current: SigningKey,
    /// Keys rotated out, kept in the JWKS until the last token they signed has expired.
    retiring: Vec<(SigningKey, SystemTime)>,
}

/// Issues access tokens and publishes the JWKS that verifies them; rotates keys.
///
/// After [`rotate`](Self::rotate), new tokens are signed with the new key, and the previous
/// key stays in [`jwks`](Self::jwks) until every token it signed has expired (the access
/// token lifetime plus one minute of clock skew), then drops out.
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use mainstay_auth::{AccessClaims, SigningKey, TokenIssuer, Validator};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let issuer = TokenIssuer::new("https://users.example", "shop", SigningKey::generate(Algorithm::EdDSA)?);
/// let token = issuer.issue(&AccessClaims::new("user-1").role("customer"))?;
///
/// let validator = Validator::builder()
///     .issuer("https://users.example")
///     .audience("shop")
///     .keys(issuer.key_set())
///     .build()?;
/// let principal = validator.validate_static(&token.token)?;
/// assert_eq!(principal.subject(), "user-1");
/// assert!(principal.has_role("customer"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    ttl: Duration,
    ring: RwLock<Ring>,
}

/// Clock skew allowed to validators: a retired key outlives its tokens by this much.
const SKEW: Duration = Duration::from_secs(60);

impl TokenIssuer {
    /// Issues tokens for `audience` as `issuer`, signed with `key`, valid 15 minutes.
    #[must_use]
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, key: SigningKey) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            ttl: Duration::from_secs(15 * 60),
            ring: RwLock::new(Ring {
                current: key,
                retiring: Vec::new(),
            }),
        }
    }

    /// The access token lifetime (default 15 minutes).
    #[must_use]
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Restores a key rotated out earlier (from storage), kept until `until`.
    #[must_use]
    pub fn with_retiring(self, key: SigningKey, until: SystemTime) -> Self {
        self.write().retiring.push((key, until));
        self
    }

    /// The access token lifetime.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs an access token for `claims` with the current key.
    ///
    /// # Errors
    ///
    /// [`IssueError`] when signing fails.
    pub fn issue(&self, claims: &AccessClaims) -> Result<AccessToken, IssueError> {
        let now = crate::unix_now();
        let mut jti = [0u8; 16];
        // The system RNG does not fail on supported platforms; a zero jti would still be unique
        // enough for logs, and jti is not used for security here.
        let _ = SystemRandom::new().fill(&mut jti);
        let id = URL_SAFE_NO_PAD.encode(jti);
        let mut body = claims.extra.clone();
        body.insert("iss".into(), self.issuer.clone().into());
        body.insert("sub".into(), claims.subject.clone().into());
        body.insert("aud".into(), self.audience.clone().into());
        body.insert("iat".into(), now.into());
        body.insert("nbf".into(), now.into());
        body.insert("exp".into(), (now + self.ttl.as_secs()).into());
        body.insert("jti".into(), id.clone().into());
        if !claims.roles.is_empty() {
            body.insert("roles".into(), claims.roles.clone().into());
        }
        if !claims.scopes.is_empty() {
            body.insert("scope".into(), claims.scopes.join(" ").into());
        }
        let ring = self.read();
        let mut header = Header::new(ring.current.algorithm);
        header.kid = Some(ring.current.kid.clone());
        let token = jsonwebtoken::encode(&header, &body, &ring.current.encoding)?;
        Ok(AccessToken {
            token,
            expires_in: self.ttl,
            id,
        })
    }

    /// Makes `next` the signing key. The previous key is kept in the JWKS until the returned
    /// time, when the last token it signed has expired.
    pub fn rotate(&self, next: SigningKey) -> SystemTime {
        let until = SystemTime::now() + self.ttl + SKEW;
        let mut ring = self.write();
        let previous = std::mem::replace(&mut ring.current, next);
        ring.retiring.push((previous, until));
        until
    }

    /// Replaces every key at once: for replicas that share keys through storage and reload
    /// them when another replica rotates.
    pub fn replace(&self, current: SigningKey, retiring: Vec<(SigningKey, SystemTime)>) {
        let mut ring = self.write();
        ring.current = current;
        ring.retiring = retiring;
    }

    /// The current signing key.
    #[must_use]
    pub fn current(&self) -> SigningKey {
        self.read().current.clone()
    }

    fn prune(&self) {
        let now = SystemTime::now();
        if self.read().retiring.iter().any(|(_, until)| *until <= now) {
            self.write().retiring.retain(|(_, until)| *until > now);
        }
    }

    /// The public keys: the current one and those still retiring.
    #[must_use]
    pub fn jwks(&self) -> JwkSet {
        self.prune();
        let ring = self.read();
        let keys = std::iter::once(&ring.current)
            .chain(ring.retiring.iter().map(|(key, _)| key))
            .map(|key| key.public.clone())
            .collect();
        JwkSet { keys }
    }

    /// The same keys, to validate in-process.
    #[must_use]
    pub fn key_set(&self) -> KeySet {
        self.prune();
        let ring = self.read();
        std::iter::once(&ring.current)
            .chain(ring.retiring.iter().map(|(key, _)| key))
            .fold(KeySet::new(), |set, key| set.with(key.verifying_key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_key_round_trips_through_its_der() {
        for algorithm in [
            Algorithm::EdDSA,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
        ] {
            let key = SigningKey::generate(algorithm).unwrap();
            let again = SigningKey::from_pkcs8_der(algorithm, key.pkcs8_der()).unwrap();
            assert_eq!(key.kid(), again.kid(), "{algorithm:?}");
            assert_eq!(key.public_jwk(), again.public_jwk());
        }
        assert!(SigningKey::generate(Algorithm::HS256).is_err());
    }

    #[test]
    fn a_key_of_the_wrong_family_is_refused() {
        let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
        assert!(SigningKey::from_pkcs8_der(Algorithm::ES256, ed.pkcs8_der()).is_err());
    }

    #[test]
    fn rotation_keeps_the_previous_key_until_its_tokens_expire() {
        let issuer = TokenIssuer::new("i", "a", SigningKey::generate(Algorithm::EdDSA).unwrap())
            .access_ttl(Duration::from_secs(60));
        let first = issuer.current().kid().to_owned();
        let until = issuer.rotate(SigningKey::generate(Algorithm::EdDSA).unwrap());
        let kids: Vec<_> = issuer
            .jwks()
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert_eq!(kids.len(), 2);
        assert!(kids.contains(&first));
        let left = until.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(110) && left <= Duration::from_secs(120));

        // A key retired in the past is gone.
        let issuer = issuer.with_retiring(
            SigningKey::generate(Algorithm::EdDSA).unwrap(),
            SystemTime::now() - Duration::from_secs(1),
        );
        assert_eq!(issuer.jwks().keys.len(), 2);
    }
}
