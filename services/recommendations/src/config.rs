//! The recommendations service's configuration, from the environment.

use std::time::Duration;

use mainstay_discovery::Endpoint;
use shop_common::config::{ConfigError, ServiceConfig, TokenConfig, Vars};

/// What the recommendations service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how tokens are validated |
/// | `CATALOG_URLS` | `127.0.0.1:8082` | the catalog's endpoints, comma-separated (what a recommended product is) |
/// | `UPSTREAM_ATTEMPT_TIMEOUT_MS` | 2000 | one attempt at the catalog |
/// | `RECOMMENDATIONS_WINDOW_HOURS` | 168 | the sliding window: orders and views older than this no longer count, and are pruned (popularity is kept by the hour and co-purchases by the day, so the window starts on the hour, or the day, it falls in) |
/// | `RECOMMENDATIONS_TTL_MS` | 2000 | how long a ranking is served from the cache (and then stale, 30 times as long and at least a minute, while it refreshes or the store cannot say) |
#[derive(Debug, Clone)]
pub struct RecommendationsConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// The catalog's endpoints.
    pub catalog: Vec<Endpoint>,
    /// One attempt at the catalog.
    pub attempt_timeout: Duration,
    /// The sliding window.
    pub window: Duration,
    /// How long a ranking is fresh.
    pub ranking_ttl: Duration,
}

impl RecommendationsConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("recommendations", 8089, &vars)?;
        Self::from_vars(service, &vars)
    }

    /// Reads the configuration from any source of variables.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_vars<F: Fn(&str) -> Option<String>>(
        service: ServiceConfig,
        vars: &Vars<F>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            catalog: vars.endpoints_or("CATALOG_URLS", Endpoint::new("127.0.0.1", 8082))?,
            attempt_timeout: vars
                .millis_or("UPSTREAM_ATTEMPT_TIMEOUT_MS", Duration::from_secs(2))?,
            window: vars.hours_or("RECOMMENDATIONS_WINDOW_HOURS", 168, 8760)?,
            ranking_ttl: vars.millis_or("RECOMMENDATIONS_TTL_MS", Duration::from_secs(2))?,
            service,
        })
    }
}
