//! Keys, tokens and a counting JWKS source shared by the tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mainstay_auth::jsonwebtoken::jwk::JwkSet;
use mainstay_auth::jsonwebtoken::{self, Algorithm, AlgorithmFamily, EncodingKey, Header};
use mainstay_auth::{FetchError, FetchJwks, Fetched, SigningKey};
use serde_json::{Value, json};

pub const ISS: &str = "https://users.test";
pub const AUD: &str = "shop";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims a valid token carries; tests change one thing.
pub fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "user-1",
        "iat": now(), "nbf": now(), "exp": now() + 600,
        "roles": ["customer"], "scope": "orders:read",
    })
}

/// The private key of `key` as jsonwebtoken wants it.
pub fn encoding_key(key: &SigningKey) -> EncodingKey {
    match key.algorithm().family() {
        AlgorithmFamily::Ed => EncodingKey::from_ed_der(key.pkcs8_der()),
        AlgorithmFamily::Ec => EncodingKey::from_ec_der(key.pkcs8_der()),
        _ => {
            use base64::Engine;
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(key.pkcs8_der())
            );
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        }
    }
}

/// `claims` signed by `key`, with its `kid`.
pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm());
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, &encoding_key(key)).unwrap()
}

/// `claims` signed with an HMAC secret, under `kid`.
pub fn sign_hmac(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A JWKS source whose document the test changes, counting fetches.
#[derive(Clone, Default)]
pub struct Source {
    pub keys: Arc<Mutex<JwkSet>>,
    pub fetches: Arc<AtomicUsize>,
    pub failing: Arc<Mutex<bool>>,
    pub max_age: Option<Duration>,
}

impl Source {
    pub fn serving(keys: &[&SigningKey]) -> Self {
        let source = Self::default();
        source.set(keys);
        source
    }

    pub fn set(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = JwkSet {
            keys: keys.iter().map(|k| k.public_jwk().clone()).collect(),
        };
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl FetchJwks for Source {
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        // A network round trip, in (paused) tokio time.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if *self.failing.lock().unwrap() {
            return Err(FetchError("connection refused".into()));
        }
        Ok(Fetched {
            keys: self.keys.lock().unwrap().clone(),
            max_age: self.max_age,
        })
    }
}
