//! The inventory service's configuration, from the environment.

use std::time::Duration;

use shop_common::config::{ConfigError, ServiceConfig, TokenConfig, Vars};

/// What the inventory is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how admin tokens are validated |
/// | `SEED_DEMO_STOCK` | `true` on SQLite, else `false` | stock the demo catalog's 120 products (50 each, none of `kitchen-000`) when there is no stock at all |
/// | `HOLD_SWEEP_MS` | 5000 | how often holds past their time are released |
///
/// Where its replies and events go is the event backbone's configuration
/// (`shop_messaging::config::TransportConfig`).
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// Whether to seed.
    pub seed_demo_stock: bool,
    /// How often the sweeper runs.
    pub sweep_every: Duration,
}

impl InventoryConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("inventory", 8085, &vars)?;
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
        let embedded = service.database_url.expose().starts_with("sqlite:");
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            seed_demo_stock: vars.parse_or("SEED_DEMO_STOCK", embedded, "true or false")?,
            sweep_every: vars.millis_or("HOLD_SWEEP_MS", Duration::from_secs(5))?,
            service,
        })
    }
}
