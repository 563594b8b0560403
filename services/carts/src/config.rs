//! The carts service's configuration, from the environment.

use std::time::Duration;

use mainstay_discovery::Endpoint;
use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};

use crate::store::CART_TTL;

/// What the carts service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how tokens are validated |
/// | `CATALOG_URLS` | `127.0.0.1:8082` | the catalog's endpoints, comma-separated (what a line costs now) |
/// | `UPSTREAM_ATTEMPT_TIMEOUT_MS` | 2000 | one attempt at the catalog |
/// | `REDIS_URL` (or `REDIS_URL_FILE`) | unset: carts in memory | Redis for the carts (a hash per cart) |
/// | `REDIS_KEY_PREFIX` | `carts` | the prefix of its keys |
/// | `CART_TTL_MS` | 7 days | how long a cart lives after its last write |
/// | `PRICE_CACHE_TTL_MS` | 5000 | how long a product's price is shown from the cart's cache |
///
/// `DATABASE_URL` holds only the event backbone's inbox (which confirmations it has seen): the
/// carts themselves are in Redis or in memory.
#[derive(Debug, Clone)]
pub struct CartsConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// The catalog's endpoints.
    pub catalog: Vec<Endpoint>,
    /// One attempt at the catalog.
    pub attempt_timeout: Duration,
    /// Redis for the carts, if any (else in memory).
    pub redis_url: Option<Secret>,
    /// Prefix of the Redis keys.
    pub redis_prefix: String,
    /// How long a cart lives after its last write.
    pub cart_ttl: Duration,
    /// How long a price is shown from the cache.
    pub price_ttl: Duration,
}

impl CartsConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("carts", 8083, &vars)?;
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
            redis_url: vars.redis_url("REDIS_URL")?,
            redis_prefix: vars
                .raw("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "carts".to_owned()),
            cart_ttl: vars.millis_or("CART_TTL_MS", CART_TTL)?,
            price_ttl: vars.millis_or("PRICE_CACHE_TTL_MS", Duration::from_secs(5))?,
            service,
        })
    }
}
