//! Keys from a JWKS document: cached, refreshed ahead of expiry, refreshed on an unknown `kid`
//! at most once per interval.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use tokio::time::Instant;

use crate::error::AuthError;
use crate::keys::KeySet;

/// A fetched JWKS document.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The keys.
    pub keys: JwkSet,
    /// How long the document may be cached (from `Cache-Control: max-age`), if said.
    pub max_age: Option<Duration>,
}

/// Why a JWKS document could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("JWKS fetch failed: {0}")]
pub struct FetchError(pub String);

/// Fetches a JWKS document. [`Jwks::from_url`] fetches over HTTP; tests and other transports
/// implement this.
#[async_trait]
pub trait FetchJwks: Send + Sync + 'static {
    /// Fetches the current document.
    async fn fetch(&self) -> Result<Fetched, FetchError>;
}

struct State {
    keys: Arc<KeySet>,
    /// When the cached keys should be replaced.
    expires_at: Option<Instant>,
    /// When the last fetch started, successful or not.
    last_attempt: Option<Instant>,
    refreshing_ahead: bool,
}

struct Shared {
    fetcher: Box<dyn FetchJwks>,
    state: RwLock<State>,
    /// One fetch at a time: callers that find a fetch in flight wait for its result.
    fetching: tokio::sync::Mutex<()>,
    min_refresh_interval: Duration,
    default_max_age: Duration,
    max_max_age: Duration,
    refresh_ahead: Duration,
}

/// A cached JWKS document, shared by clones.
///
/// * The first validation fetches the document.
/// * The document is kept for its `Cache-Control: max-age` (default 10 minutes, at most a
///   day, at least the minimum refresh interval) and refetched in the background once less
///   than [`refresh_ahead`](JwksBuilder::refresh_ahead) of that remains; until a new document
///   arrives the old keys stay in use, so a JWKS outage does not fail valid tokens.
/// * A token whose `kid` is unknown triggers one fetch, unless a fetch started less than
///   [`min_refresh_interval`](JwksBuilder::min_refresh_interval) ago: a stream of tokens with made-up
///   `kid`s cannot hammer the JWKS endpoint. Concurrent callers share one fetch.
#[derive(Clone)]
pub struct Jwks(Arc<Shared>);

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("keys", &self.keys().len())
            .field("min_refresh_interval", &self.0.min_refresh_interval)
            .field("default_max_age", &self.0.default_max_age)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Jwks`].
#[derive(Debug, Clone)]
pub struct JwksBuilder {
    min_refresh_interval: Duration,
    default_max_age: Duration,
    refresh_ahead: Duration,
}

impl Default for JwksBuilder {
    fn default() -> Self {
        Self {
            min_refresh_interval: Duration::from_secs(10),
            default_max_age: Duration::from_secs(600),
            refresh_ahead: Duration::from_secs(60),
        }
    }
}

impl JwksBuilder {
    /// The least time between two fetches caused by unknown `kid`s (default 10 s).
    #[must_use]
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// How long a document without `Cache-Control: max-age` is kept (default 10 minutes).
    #[must_use]
    pub fn default_max_age(mut self, max_age: Duration) -> Self {
        self.default_max_age = max_age;
        self
    }

    /// How long before expiry the background refresh starts (default 60 s).
    #[must_use]
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// The JWKS fetched by `fetcher`.
    pub fn build(self, fetcher: impl FetchJwks) -> Jwks {
        Jwks(Arc::new(Shared {
            fetcher: Box::new(fetcher),
            state: RwLock::new(State {
                keys: Arc::new(KeySet::new()),
                expires_at: None,
                last_attempt: None,
                refreshing_ahead: false,
            }),
            fetching: tokio::sync::Mutex::new(()),
            min_refresh_interval: self.min_refresh_interval,
            default_max_age: self.default_max_age,
            max_max_age: Duration::from_secs(86_400),
            refresh_ahead: self.refresh_ahead,
        }))
    }

    /// The JWKS document at `url`, fetched with reqwest (rustls on aws-lc-rs, 5 s timeout).
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (no TLS roots).
    #[cfg(feature = "remote-jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "remote-jwks")))]
    pub fn build_url(self, url: impl Into<String>) -> Result<Jwks, FetchError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| FetchError(e.to_string()))?;
        Ok(self.build(HttpFetcher {
            url: url.into(),
            client,
        }))
    }
}

impl Jwks {
    /// Configures a JWKS cache.
    #[must_use]
    pub fn builder() -> JwksBuilder {
        JwksBuilder::default()
    }

    /// A JWKS fetched by `fetcher`, with the default intervals.
    pub fn new(fetcher: impl FetchJwks) -> Self {
        JwksBuilder::default().build(fetcher)
    }

    /// The JWKS document at `url`, with the default intervals.
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (no TLS roots).
    #[cfg(feature = "remote-jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "remote-jwks")))]
    pub fn from_url(url: impl Into<String>) -> Result<Self, FetchError> {
        JwksBuilder::default().build_url(url)
    }

    /// Fetches the document now, whatever the cache holds (at startup, say, to fail fast).
    ///
    /// # Errors
    ///
    /// The fetch failed; the cached keys are kept.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _fetching = self.0.fetching.lock().await;
        self.fetch_locked().await
    }

    /// The cached keys.
    #[must_use]
    pub fn keys(&self) -> Arc<KeySet> {
        self.read().keys.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.0
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch_locked(&self) -> Result<(), FetchError> {
        self.write().last_attempt = Some(Instant::now());
        let result = self.0.fetcher.fetch().await;
        let mut state = self.write();
        state.refreshing_ahead = false;
        let fetched = match result {
            Ok(fetched) => fetched,
            Err(error) => {
                tracing::warn!(%error, "JWKS refresh failed; keeping the cached keys");
                return Err(error);
            }
        };
        let (keys, skipped) = KeySet::from_jwks(&fetched.keys);
        let max_age = fetched
            .max_age
            .unwrap_or(self.0.default_max_age)
            .clamp(self.0.min_refresh_interval, self.0.max_max_age);
        tracing::debug!(keys = keys.len(), skipped, ?max_age, "JWKS refreshed");
        state.keys = Arc::new(keys);
        state.expires_at = Some(Instant::now() + max_age);
        Ok(())
    }

    /// Called when a token names a `kid` the cache does not hold (or when nothing is cached):
    /// fetches unless a fetch started within the minimum interval.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> Result<(), AuthError> {
        let _fetching = self.0.fetching.lock().await;
        let recent = self
            .read()
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.0.min_refresh_interval);
        if !recent {
            // A failure is logged there; what matters below is whether any keys exist.
            let _ = self.fetch_locked().await;
        }
        if self.read().keys.is_empty() {
            return Err(AuthError::KeysUnavailable(
                "no JWKS document has been fetched".to_owned(),
            ));
        }
        Ok(())
    }

    /// Starts a background refresh when the document is about to expire.
    pub(crate) fn refresh_ahead_if_due(&self) {
        let due = {
            let state = self.read();
            let now = Instant::now();
            !state.refreshing_ahead
                && state
                    .expires_at
                    .is_some_and(|at| now + self.0.refresh_ahead >= at)
                && state
                    .last_attempt
                    .is_none_or(|at| now.duration_since(at) >= self.0.min_refresh_interval)
        };
        if !due {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut state = self.write();
            if state.refreshing_ahead {
                return;
            }
            state.refreshing_ahead = true;
        }
        let this = self.clone();
        runtime.spawn(async move {
            let _fetching = this.0.fetching.lock().await;
            let _ = this.fetch_locked().await;
        });
    }
}

#[cfg(feature = "remote-jwks")]
struct HttpFetcher {
    url: String,
    client: reqwest::Client,
}

#[cfg(feature = "remote-jwks")]
#[async_trait]
impl FetchJwks for HttpFetcher {
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let response = self
            .client
            .get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError(format!("GET {}: {e}", self.url)))?;
        if !response.status().is_success() {
            return Err(FetchError(format!(
                "GET {}: {}",
                self.url,
                response.status()
            )));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = response
            .bytes()
            .await
            .map_err(|e| FetchError(format!("GET {}: {e}", self.url)))?;
        let keys = serde_json::from_slice(&body)
            .map_err(|e| FetchError(format!("GET {}: not a JWKS document: {e}", self.url)))?;
        Ok(Fetched { keys, max_age })
    }
}

/// The `max-age` directive of a `Cache-Control` value.
#[cfg_attr(not(feature = "remote-jwks"), allow(dead_code))]
pub(crate) fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"5\""), Some(Duration::from_secs(5)));
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
