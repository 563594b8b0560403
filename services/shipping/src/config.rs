//! The shipping service's configuration, from the environment.

use shop_common::config::{ConfigError, ServiceConfig, TokenConfig, Vars};

/// What the shipping service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how admin tokens are validated |
/// | `SHIPPING_UNDELIVERABLE_POSTCODES` | `00000` | postcodes the carrier does not deliver to, comma-separated (the undeliverable-address demo) |
#[derive(Debug, Clone)]
pub struct ShippingConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// Postcodes the carrier refuses.
    pub undeliverable: Vec<String>,
}

impl ShippingConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("shipping", 8087, &vars)?;
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
        let undeliverable = vars
            .raw("SHIPPING_UNDELIVERABLE_POSTCODES")
            .unwrap_or_else(|| "00000".to_owned())
            .split(',')
            .map(|code| code.trim().to_owned())
            .filter(|code| !code.is_empty())
            .collect();
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            undeliverable,
            service,
        })
    }
}
