//! The analytics service's configuration, from the environment.

use std::time::Duration;

use shop_common::config::{ConfigError, ServiceConfig, TokenConfig, Vars};

/// What the analytics service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how admin tokens are validated |
/// | `ANALYTICS_RETENTION_HOURS` | 168 | how long the per-minute figures are kept (the longest window a summary covers); the totals are kept for ever |
/// | `ANALYTICS_METRICS_REFRESH_MS` | 5000 | how often the Prometheus business metrics are read from the store |
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// How long per-minute figures are kept.
    pub retention: Duration,
    /// How often the business metrics are refreshed.
    pub metrics_refresh: Duration,
}

impl AnalyticsConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("analytics", 8090, &vars)?;
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
            retention: vars.hours_or("ANALYTICS_RETENTION_HOURS", 168, 8760)?,
            metrics_refresh: vars
                .millis_or("ANALYTICS_METRICS_REFRESH_MS", Duration::from_secs(5))?,
            service,
        })
    }
}
