//! argon2id hashing off the async threads, with bounded concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords with argon2id at OWASP's parameters (19 MiB, 2 passes, 1
/// lane). At most one hash per CPU runs at once, so a login flood costs queueing, not memory.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of nothing anyone knows: verified against when the account does not exist, so
    /// that an unknown email takes as long as a wrong password.
    dummy: Arc<str>,
    /// Hashes made (verifications not counted).
    hashed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
fn owasp() -> Argon2<'static> {
    // The constants are within argon2's bounds.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    /// Hashing with OWASP's parameters.
    ///
    /// # Panics
    ///
    /// If argon2 cannot hash at all (it can: the parameters are constants within bounds).
    #[must_use]
    pub fn new() -> Self {
        let argon2 = owasp();
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon2
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .expect("argon2 hashes with constant parameters")
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            argon2,
            permits: Arc::new(Semaphore::new(cpus)),
            dummy: dummy.into(),
            hashed: Arc::default(),
        }
    }

    /// Passwords hashed since start (verifications are not counted).
    #[must_use]
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The PHC string of `password`, with a fresh salt.
    ///
    /// # Errors
    ///
    /// Never in practice; argon2's error is passed on.
    pub async fn hash(&self, password: String) -> Result<String, argon2::password_hash::Error> {
        let _permit = self.permits.acquire().await;
        let argon2 = self.argon2.clone();
        let hashed = Arc::clone(&self.hashed);
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            let hash = argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string());
            hashed.fetch_add(1, Ordering::Relaxed);
            hash
        })
        .await
        .unwrap_or(Err(argon2::password_hash::Error::Crypto))
    }

    /// Whether `password` matches `hash`; with `None` (no such account) the dummy hash is
    /// verified and the answer is `false`, in the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let _permit = self.permits.acquire().await;
        let argon2 = self.argon2.clone();
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .unwrap_or(false);
        exists && matched
    }
}

/// A password of 24 characters from 144 random bits (URL-safe alphabet), for accounts whose
/// password nobody chose: the first admin's, when `ADMIN_PASSWORD` is not set.
#[must_use]
pub fn generate() -> String {
    use argon2::password_hash::rand_core::RngCore;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let passwords = Passwords::new();
        let hash = passwords
            .hash("correct horse battery".into())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            passwords
                .verify("correct horse battery".into(), Some(hash.clone()))
                .await
        );
        assert!(!passwords.verify("wrong".into(), Some(hash)).await);
        assert!(!passwords.verify("anything".into(), None).await);
        assert_eq!(passwords.hashed(), 1);
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
