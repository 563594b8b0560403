//! Sealing a small secret for whoever holds one key: AES-256-GCM (aws-lc-rs) with a random
//! nonce, bound to a context that must be given again to open it.
//!
//! A sealed secret may rest where others can read (an outbox row, a broker's stream, a stored
//! answer): without the key it tells nothing, and with the key it opens only in its context, so
//! it cannot be moved to another record.
//!
//! ```
//! use shop_common::seal::SealKey;
//!
//! let key = SealKey::generate();
//! let sealed = key.seal_text(b"a confirmation token", b"user-1\nnew@example.com");
//! assert_eq!(
//!     key.open_text(&sealed, b"user-1\nnew@example.com").unwrap(),
//!     b"a confirmation token"
//! );
//! assert!(key.open_text(&sealed, b"user-2\nnew@example.com").is_err());
//! ```

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The length of a key, in bytes.
pub const KEY_LEN: usize = 32;

/// Sealing failed, or what was given cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A key that is not 32 bytes, written as unpadded base64url (43 characters).
    #[error("a sealing key is 32 bytes as unpadded base64url (43 characters)")]
    BadKey,
    /// Not sealed by this key in this context, or altered.
    #[error("cannot be opened: another key, another context, or altered")]
    Unopenable,
    /// The key file could not be read or written.
    #[error("key file {path}: {error}")]
    File {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// An AES-256-GCM key. Its `Debug` shows nothing of it.
pub struct SealKey {
    key: LessSafeKey,
    /// The key as unpadded base64url, to write it down once.
    text: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key of these 32 bytes.
    ///
    /// # Errors
    ///
    /// [`SealError::BadKey`] for another length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != KEY_LEN {
            return Err(SealError::BadKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            text: URL_SAFE_NO_PAD.encode(bytes),
        })
    }

    /// The key written as 32 bytes of unpadded base64url (surrounding white space ignored).
    ///
    /// # Errors
    ///
    /// [`SealError::BadKey`] for anything else.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    /// An HMAC-SHA256 key derived from this one for `purpose` (HKDF-SHA256), so that a
    /// holder of the key can also sign or hash secrets without using the AES key itself for
    /// a second algorithm: each purpose gets a key of its own, and none tells the AES key.
    ///
    /// # Panics
    ///
    /// Never: HKDF-SHA256 gives a 32-byte key for any purpose.
    #[must_use]
    pub fn hmac_key(&self, purpose: &str) -> aws_lc_rs::hmac::Key {
        use aws_lc_rs::{hkdf, hmac};
        #[allow(clippy::expect_used)]
        let bytes = URL_SAFE_NO_PAD
            .decode(&self.text)
            .expect("the key's own text decodes");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mainstay seal subkey").extract(&bytes);
        let info = [purpose.as_bytes()];
        #[allow(clippy::expect_used)]
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("32 bytes are within HKDF-SHA256's limit");
        hmac::Key::from(okm)
    }

    /// The key as unpadded base64url, to write it down or hand it to its other holder. Never
    /// log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// A new random key.
    ///
    /// # Panics
    ///
    /// When the system's random source fails.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source");
        Self::from_bytes(&bytes).expect("32 bytes")
    }

    /// The key in `path`, as [`parse`](Self::parse) reads it; when there is no such file, a new
    /// key written there first, readable by its owner alone. Two processes that start at once
    /// end with the same key (the file is created only if absent).
    ///
    /// # Errors
    ///
    /// The file cannot be read or created, or holds no key.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let file_error = |error| SealError::File {
            path: path.display().to_string(),
            error,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                let key = Self::generate();
                std::io::Write::write_all(&mut file, key.text.as_bytes()).map_err(file_error)?;
                file.sync_all().map_err(file_error)?;
                Ok(key)
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                // Written by another process a moment ago, perhaps: wait for its contents.
                for _ in 0..50 {
                    let text = std::fs::read_to_string(path).map_err(file_error)?;
                    if !text.trim().is_empty() {
                        return Self::parse(&text);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(SealError::BadKey)
            }
            Err(error) => Err(file_error(error)),
        }
    }

    /// `plain`, sealed in `context`: the nonce, the ciphertext and the tag.
    ///
    /// # Panics
    ///
    /// When the system's random source fails.
    #[must_use]
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source");
        // One buffer: the nonce, then the plaintext sealed where it lies, then the tag.
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut sealed[NONCE_LEN..],
            )
            .expect("AES-256-GCM seals any length a process can hold");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// What [`seal`](Self::seal) sealed in `context`.
    ///
    /// # Errors
    ///
    /// [`SealError::Unopenable`]: another key or context, or altered.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Unopenable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unopenable)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| SealError::Unopenable)?
            .len();
        body.truncate(plain);
        Ok(body)
    }

    /// [`seal`](Self::seal), as unpadded base64url, for a text field.
    #[must_use]
    pub fn seal_text(&self, plain: &[u8], context: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(plain, context))
    }

    /// [`open`](Self::open) of what [`seal_text`](Self::seal_text) wrote.
    ///
    /// # Errors
    ///
    /// [`SealError::Unopenable`]: not base64url, another key or context, or altered.
    pub fn open_text(&self, sealed: &str, context: &[u8]) -> Result<Vec<u8>, SealError> {
        let sealed = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Unopenable)?;
        self.open(&sealed, context)
    }
}

/// The sealing key configured in `var` (its value, or the file `{var}_FILE` names: see
/// [`Vars::secret`](crate::config::Vars::secret)), checked to be one; `None` when unset.
///
/// # Errors
///
/// The variable is set to something that is not a key.
pub fn key_var<F: Fn(&str) -> Option<String>>(
    vars: &crate::config::Vars<F>,
    var: &str,
) -> Result<Option<crate::config::Secret>, crate::config::ConfigError> {
    let key = vars.secret(var)?;
    if let Some(key) = &key
        && SealKey::parse(key.expose()).is_err()
    {
        return Err(crate::config::ConfigError {
            var: var.to_owned(),
            value: "(hidden)".to_owned(),
            expected: "32 bytes as unpadded base64url (43 characters)".to_owned(),
        });
    }
    Ok(key)
}

/// [`key_var`] for a key two services share (the card key: orders seals, payments opens),
/// required unless the service runs on SQLite. On the embedded default the services share a
/// working directory, so the key file one creates is the one the other reads; elsewhere each
/// would create a key of its own, and no sealed card would ever open.
///
/// # Errors
///
/// The variable is set to something that is not a key, or is unset off SQLite.
pub fn shared_key_var<F: Fn(&str) -> Option<String>>(
    vars: &crate::config::Vars<F>,
    var: &str,
    database_url: &crate::config::Secret,
) -> Result<Option<crate::config::Secret>, crate::config::ConfigError> {
    let key = key_var(vars, var)?;
    if key.is_none() && !database_url.expose().starts_with("sqlite:") {
        return Err(crate::config::ConfigError {
            var: var.to_owned(),
            value: "(unset)".to_owned(),
            expected: "the key the services share (32 bytes as unpadded base64url), required \
                       off the embedded default (SQLite)"
                .to_owned(),
        });
    }
    Ok(key)
}

/// The key `configured` (as [`key_var`] read it), or else the one in `default_file`, created
/// there on first start ([`SealKey::load_or_create`]).
///
/// # Errors
///
/// The file cannot be read or created, or holds no key.
pub fn key_or_file(
    configured: Option<&crate::config::Secret>,
    default_file: &Path,
) -> Result<SealKey, SealError> {
    match configured {
        Some(key) => SealKey::parse(key.expose()),
        None => SealKey::load_or_create(default_file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_subkeys_differ_by_purpose_and_key_and_are_stable() {
        use aws_lc_rs::hmac;
        let key = SealKey::from_bytes(&[7; 32]).unwrap();
        let tag = |key: &SealKey, purpose: &str| {
            hmac::sign(&key.hmac_key(purpose), b"message")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&key, "a"), tag(&key, "a"));
        assert_ne!(tag(&key, "a"), tag(&key, "b"));
        assert_ne!(
            tag(&key, "a"),
            tag(&SealKey::from_bytes(&[8; 32]).unwrap(), "a")
        );
        // Not the raw key used as an HMAC key.
        let raw = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        assert_ne!(
            tag(&key, "a"),
            hmac::sign(&raw, b"message").as_ref().to_vec()
        );
    }

    #[test]
    fn a_shared_key_is_required_off_sqlite() {
        use crate::config::{Secret, Vars};
        let key = SealKey::generate();
        let unset = Vars(|_: &str| None);
        let set = Vars(|var: &str| (var == "CARD_SEAL_KEY").then(|| key.expose().to_owned()));
        let sqlite = Secret::new("sqlite://orders.db?mode=rwc");
        let postgres = Secret::new("postgres://127.0.0.1/orders");
        assert!(
            shared_key_var(&unset, "CARD_SEAL_KEY", &sqlite)
                .unwrap()
                .is_none()
        );
        let missing = shared_key_var(&unset, "CARD_SEAL_KEY", &postgres).unwrap_err();
        assert_eq!(missing.var, "CARD_SEAL_KEY");
        let found = shared_key_var(&set, "CARD_SEAL_KEY", &postgres).unwrap();
        assert_eq!(found.unwrap().expose(), key.expose());
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_in_its_context_only() {
        let key = SealKey::generate();
        let sealed = key.seal(b"secret", b"context");
        assert_eq!(key.open(&sealed, b"context").unwrap(), b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        // Random nonces: sealing twice gives two texts.
        assert_ne!(key.seal(b"secret", b"context"), sealed);
        assert!(key.open(&sealed, b"other").is_err());
        assert!(SealKey::generate().open(&sealed, b"context").is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key.open(&altered, b"context").is_err());
        assert!(key.open(&sealed[..5], b"context").is_err());
        assert!(key.open_text("not base64!", b"context").is_err());
    }

    #[test]
    fn keys_are_32_bytes_of_base64url_and_never_shown() {
        let key = SealKey::generate();
        let again = SealKey::parse(&format!(" {}\n", key.text)).unwrap();
        assert_eq!(again.open(&key.seal(b"x", b""), b"").unwrap(), b"x");
        assert_eq!(format!("{key:?}"), "SealKey(..)");
        assert!(matches!(SealKey::parse("c2hvcnQ"), Err(SealError::BadKey)));
        assert!(matches!(
            SealKey::from_bytes(&[0; 16]),
            Err(SealError::BadKey)
        ));
    }

    #[test]
    fn a_key_file_is_created_once_and_read_after() {
        let path = std::env::temp_dir().join(format!("seal-{}.key", uuid::Uuid::new_v4()));
        let first = SealKey::load_or_create(&path).unwrap();
        let second = SealKey::load_or_create(&path).unwrap();
        assert_eq!(second.open(&first.seal(b"x", b"c"), b"c").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            SealKey::load_or_create(&path),
            Err(SealError::BadKey)
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
