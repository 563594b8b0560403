//! Opaque refresh tokens: stored hashed, rotated on every use, and a reused token revokes its
//! whole family (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::unix_now;

/// Length of a refresh token's text: 32 random bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

/// A refresh token as handed to the client. Only its [`digest`](Self::digest) is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

impl RefreshToken {
    /// A new token of 256 random bits.
    ///
    /// # Panics
    ///
    /// When the operating system's random number generator fails.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random number generator failed");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A token presented by a client, if it has the shape of one of ours.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let shaped = text.len() == TOKEN_CHARS
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        shaped.then(|| Self(text.to_owned()))
    }

    /// The token's text, for the client.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token, hex-encoded: what is stored. A fast hash suffices, since the
    /// token has 256 bits of entropy.
    #[must_use]
    pub fn digest(&self) -> String {
        use std::fmt::Write;
        let digest = digest::digest(&digest::SHA256, self.0.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest.as_ref() {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

/// A stored refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// [`RefreshToken::digest`] of the token.
    pub digest: String,
    /// The family: every token rotated from one login shares it.
    pub family: String,
    /// Whose token it is.
    pub subject: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// What [`RefreshStore::consume`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// The token was live and is now used: issue its successor.
    Fresh(RefreshRecord),
    /// The token had been used already: someone replays it. Carries its family.
    Reused(String),
    /// Unknown, expired or revoked.
    Invalid,
}

/// Where refresh tokens live. Implementations must make [`consume`](Self::consume) atomic: of
/// two concurrent calls with the same digest, exactly one sees [`Consumed::Fresh`].
#[async_trait]
pub trait RefreshStore: Send + Sync {
    /// The store's failure.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stores a new token.
    async fn insert(&self, record: &RefreshRecord) -> Result<(), Self::Error>;

    /// Marks the token with `digest` used, if it is live at `now` (seconds since the epoch).
    async fn consume(&self, digest: &str, now: u64) -> Result<Consumed, Self::Error>;

    /// Revokes every token of `family` (logout, or reuse detected).
    async fn revoke_family(&self, family: &str) -> Result<(), Self::Error>;
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError<E: std::error::Error + 'static> {
    /// Unknown, expired, revoked or malformed: the client must log in again.
    #[error("the refresh token is invalid")]
    Invalid,
    /// A used token was presented again; its family is now revoked.
    #[error("the refresh token was already used; its family is revoked")]
    Reused,
    /// The store failed.
    #[error(transparent)]
    Store(E),
}

/// Issues the first token of a new family (at login).
///
/// # Errors
///
/// The store's error.
pub async fn start_family<S: RefreshStore + ?Sized>(
    store: &S,
    subject: &str,
    ttl: Duration,
) -> Result<RefreshToken, S::Error> {
    let family = RefreshToken::generate().digest();
    let token = RefreshToken::generate();
    store
        .insert(&RefreshRecord {
            digest: token.digest(),
            family,
            subject: subject.to_owned(),
            expires_at: unix_now() + ttl.as_secs(),
        })
        .await?;
    Ok(token)
}

/// Rotates a presented token: consumes it and issues its successor in the same family. A
/// token presented twice revokes the family, so a stolen token is useless once either party
/// has used it twice.
///
/// # Errors
///
/// [`RefreshError::Invalid`], [`RefreshError::Reused`], or the store's error.
pub async fn rotate<S: RefreshStore + ?Sized>(
    store: &S,
    presented: &str,
    ttl: Duration,
) -> Result<(RefreshToken, RefreshRecord), RefreshError<S::Error>> {
    let presented = RefreshToken::parse(presented).ok_or(RefreshError::Invalid)?;
    let now = unix_now();
    match store
        .consume(&presented.digest(), now)
        .await
        .map_err(RefreshError::Store)?
    {
        Consumed::Fresh(old) => {
            let token = RefreshToken::generate();
            let record = RefreshRecord {
                digest: token.digest(),
                family: old.family,
                subject: old.subject,
                expires_at: now + ttl.as_secs(),
            };
            store.insert(&record).await.map_err(RefreshError::Store)?;
            Ok((token, record))
        }
        Consumed::Reused(family) => {
            tracing::warn!("refresh token reused: revoking its family");
            store
                .revoke_family(&family)
                .await
                .map_err(RefreshError::Store)?;
            Err(RefreshError::Reused)
        }
        Consumed::Invalid => Err(RefreshError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, (RefreshRecord, bool, bool)>>);

    #[async_trait]
    impl RefreshStore for Memory {
        type Error = std::convert::Infallible;

        async fn insert(&self, record: &RefreshRecord) -> Result<(), Self::Error> {
            let mut map = self.0.lock().unwrap();
            map.insert(record.digest.clone(), (record.clone(), false, false));
            Ok(())
        }

        async fn consume(&self, digest: &str, now: u64) -> Result<Consumed, Self::Error> {
            let mut map = self.0.lock().unwrap();
            Ok(match map.get_mut(digest) {
                Some((_, _, true)) | None => Consumed::Invalid,
                Some((record, true, _)) => Consumed::Reused(record.family.clone()),
                Some((record, used, false)) if record.expires_at > now => {
                    *used = true;
                    Consumed::Fresh(record.clone())
                }
                Some(_) => Consumed::Invalid,
            })
        }

        async fn revoke_family(&self, family: &str) -> Result<(), Self::Error> {
            for (record, _, revoked) in self.0.lock().unwrap().values_mut() {
                if record.family == family {
                    *revoked = true;
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn reuse_revokes_the_family() {
        let store = Memory::default();
        let ttl = Duration::from_secs(3600);
        let first = start_family(&store, "u1", ttl).await.unwrap();
        let (second, record) = rotate(&store, first.as_str(), ttl).await.unwrap();
        assert_eq!(record.subject, "u1");
        // The thief replays the first token: refused, and the family dies...
        assert!(matches!(
            rotate(&store, first.as_str(), ttl).await,
            Err(RefreshError::Reused)
        ));
        // ...so the legitimate holder's newer token is dead too.
        assert!(matches!(
            rotate(&store, second.as_str(), ttl).await,
            Err(RefreshError::Invalid)
        ));
    }

    #[tokio::test]
    async fn malformed_and_unknown_tokens_are_invalid() {
        let store = Memory::default();
        let ttl = Duration::from_secs(60);
        for presented in [
            "",
            "short",
            &"x".repeat(43 * 10),
            "' OR 1=1 --aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(matches!(
                rotate(&store, presented, ttl).await,
                Err(RefreshError::Invalid)
            ));
        }
        let unknown = RefreshToken::generate();
        assert!(matches!(
            rotate(&store, unknown.as_str(), ttl).await,
            Err(RefreshError::Invalid)
        ));
    }

    #[test]
    fn tokens_are_random_and_their_digests_are_hex() {
        let a = RefreshToken::generate();
        assert_ne!(a, RefreshToken::generate());
        assert_eq!(a.as_str().len(), TOKEN_CHARS);
        assert_eq!(RefreshToken::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.digest().len(), 64);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
