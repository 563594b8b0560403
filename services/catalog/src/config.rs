//! The catalog service's configuration, from the environment.

use std::time::Duration;

use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};

/// What the catalog is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL` | `http://127.0.0.1:8081/.well-known/jwks.json` | where the users service publishes its keys |
/// | `TOKEN_ISSUER` | `shop-users` | the accepted `iss` |
/// | `TOKEN_AUDIENCE` | `shop` | the accepted `aud` |
/// | `REDIS_URL` (or `REDIS_URL_FILE`) | unset | a Redis second tier and invalidation bus for the product cache |
/// | `REDIS_KEY_PREFIX` | `catalog` | the prefix of its keys and invalidation channel |
/// | `PRODUCT_CACHE_TTL_MS` | 30000 | how long a cached product is fresh (and then served stale as long again while it refreshes) |
/// | `SEED_DEMO_CATALOG` | `true` on SQLite, else `false` | load the 120 demo products into an empty catalog |
/// | `VIEWS_FLUSH_MS` | 5000 | how often the product views counted are announced (`ProductsViewed` on `catalog.views`) |
///
/// Where its events go is the event backbone's configuration
/// (`shop_messaging::config::TransportConfig`): `NATS_URL` (or `NATS_URL_FILE`) and
/// `MESSAGING_NAMESPACE` for NATS JetStream, otherwise the local bus at `BUS_DATABASE_URL`.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// Redis for the second tier, if any.
    pub redis_url: Option<Secret>,
    /// Prefix of the Redis keys and channel.
    pub redis_prefix: String,
    /// Product cache TTL.
    pub cache_ttl: Duration,
    /// Whether to seed.
    pub seed_demo_catalog: bool,
    /// How often product views are announced.
    pub views_flush: Duration,
}

impl CatalogConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("catalog", 8082, &vars)?;
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
        let redis_url = vars.redis_url("REDIS_URL")?;
        let embedded = service.database_url.expose().starts_with("sqlite:");
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            redis_url,
            redis_prefix: vars
                .raw("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "catalog".to_owned()),
            cache_ttl: vars.millis_or("PRODUCT_CACHE_TTL_MS", Duration::from_secs(30))?,
            seed_demo_catalog: vars.parse_or("SEED_DEMO_CATALOG", embedded, "true or false")?,
            views_flush: vars.millis_or("VIEWS_FLUSH_MS", Duration::from_secs(5))?,
            service,
        })
    }
}
