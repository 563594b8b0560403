//! Verification keys: each pinned to one algorithm, looked up by `kid`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key material does not parse, or does not suit the algorithm.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// The algorithm cannot be used with this kind of key.
    #[error("algorithm {0:?} does not suit the key")]
    AlgorithmMismatch(Algorithm),
    /// A JWK whose algorithm is neither given nor implied by its key type.
    #[error("the JWK names no signing algorithm")]
    NoAlgorithm,
    /// A JWK of a symmetric key: shared secrets are never taken from a JWKS document.
    #[error("symmetric keys are not accepted from a JWKS document")]
    Symmetric,
}

/// One verification key, pinned to the one algorithm tokens signed with it may use: the
/// algorithm is never taken from the token, so `alg: none` and HS256-with-a-public-key
/// (algorithm confusion) cannot verify.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// A shared secret for `HS256`, `HS384` or `HS512`.
    ///
    /// # Errors
    ///
    /// [`KeyError::AlgorithmMismatch`] for a non-HMAC algorithm; [`KeyError::Invalid`] for a
    /// secret shorter than 32 bytes (RFC 7518 §3.2 asks for at least the hash size).
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(KeyError::AlgorithmMismatch(algorithm));
        }
        if secret.len() < 32 {
            return Err(KeyError::Invalid(
                "an HMAC secret must be at least 32 bytes".to_owned(),
            ));
        }
        Ok(Self::new(algorithm, DecodingKey::from_secret(secret)))
    }

    /// A public key in PEM (RSA: PKCS#1 or SPKI; EC and Ed25519: SPKI) for `algorithm`.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] when the PEM does not hold a key of the algorithm's family.
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => return Err(KeyError::AlgorithmMismatch(algorithm)),
        }
        .map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self::new(algorithm, key))
    }

    /// A public JWK. The algorithm is the JWK's `alg`, or else the one its key type implies
    /// (EC P-256: ES256, P-384: ES384, Ed25519: `EdDSA`, RSA: RS256). Keys marked `use: enc`
    /// and symmetric keys are refused.
    ///
    /// # Errors
    ///
    /// [`KeyError`] naming why the JWK cannot verify signatures.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(KeyError::Invalid("the key is for encryption".to_owned()));
        }
        let implied = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => return Err(KeyError::Symmetric),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(p) => {
                (p.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
            }
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            _ => None,
        };
        let algorithm = match jwk.common.key_algorithm {
            Some(declared) => Algorithm::try_from(declared).map_err(|_| KeyError::NoAlgorithm)?,
            None => implied.ok_or(KeyError::NoAlgorithm)?,
        };
        let family_matches = implied.is_some_and(|i| i.family() == algorithm.family());
        if !family_matches {
            return Err(KeyError::AlgorithmMismatch(algorithm));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let mut this = Self::new(algorithm, key);
        this.kid.clone_from(&jwk.common.key_id);
        Ok(this)
    }

    pub(crate) fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        Self {
            kid: None,
            algorithm,
            key,
        }
    }

    /// Names the key: tokens whose header carries this `kid` are verified with it.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key id, if any.
    #[must_use]
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// The keys a validator trusts, by `kid`.
///
/// A token without `kid` is verified only when the set holds exactly one key.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    anonymous: Vec<Arc<VerifyingKey>>,
}

impl KeySet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (replacing one with the same `kid`).
    #[must_use]
    pub fn with(mut self, key: VerifyingKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds a key (replacing one with the same `kid`).
    pub fn insert(&mut self, key: VerifyingKey) {
        let key = Arc::new(key);
        match key.kid.clone() {
            Some(kid) => {
                self.by_kid.insert(kid, key);
            }
            None => self.anonymous.push(key),
        }
    }

    /// The usable keys of a JWKS document, and the number of keys skipped (encryption keys,
    /// symmetric keys, unknown types); skipped keys are logged.
    #[must_use]
    pub fn from_jwks(jwks: &JwkSet) -> (Self, usize) {
        let mut set = Self::new();
        let mut skipped = 0;
        for jwk in &jwks.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => set.insert(key),
                Err(error) => {
                    skipped += 1;
                    tracing::debug!(kid = ?jwk.common.key_id, %error, "JWK skipped");
                }
            }
        }
        (set, skipped)
    }

    /// The number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token's `kid`.
    #[must_use]
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.by_kid.values().next()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_keys_need_an_hmac_algorithm_and_a_long_secret() {
        assert_eq!(
            VerifyingKey::hmac(Algorithm::RS256, &[0; 32]).unwrap_err(),
            KeyError::AlgorithmMismatch(Algorithm::RS256)
        );
        assert!(matches!(
            VerifyingKey::hmac(Algorithm::HS256, b"short").unwrap_err(),
            KeyError::Invalid(_)
        ));
    }

    #[test]
    fn symmetric_and_encryption_jwks_are_refused() {
        let oct: Jwk =
            serde_json::from_str(r#"{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}"#).unwrap();
        assert_eq!(
            VerifyingKey::from_jwk(&oct).unwrap_err(),
            KeyError::Symmetric
        );
        let enc: Jwk = serde_json::from_str(
            r#"{"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        assert!(VerifyingKey::from_jwk(&enc).is_err());
    }

    #[test]
    fn a_jwk_whose_alg_contradicts_its_key_type_is_refused() {
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"OKP","crv":"Ed25519","alg":"HS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        assert_eq!(
            VerifyingKey::from_jwk(&jwk).unwrap_err(),
            KeyError::AlgorithmMismatch(Algorithm::HS256)
        );
    }

    #[test]
    fn tokens_without_kid_match_only_a_lone_key() {
        let one = KeySet::new().with(VerifyingKey::hmac(Algorithm::HS256, &[1; 32]).unwrap());
        assert!(one.find(None).is_some());
        let two = one.clone().with(
            VerifyingKey::hmac(Algorithm::HS256, &[2; 32])
                .unwrap()
                .with_kid("b"),
        );
        assert!(two.find(None).is_none());
        assert!(two.find(Some("b")).is_some());
        assert!(two.find(Some("c")).is_none());
    }
}
