//! The payments service's configuration, from the environment.

use std::time::Duration;

use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};

use crate::provider::Knobs;

/// What the payments service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how admin tokens are validated |
/// | `PAYMENT_DECLINE_RATE` | 0 | the share (0 to 1) of other valid test cards declined |
/// | `PAYMENT_FAILURE_RATE` | 0 | the share (0 to 1) of provider calls that fail as if it were down |
/// | `PAYMENT_LATENCY_MS` | 0 | added to every provider call |
/// | `PAYMENT_TIMEOUT_MS` | 2000 | how long a provider call may take before it counts as failed (and is asked again, under the same key) |
/// | `PAYMENT_AUTH_EXPIRY_MS` | 604800000 (7 days) | an authorisation never captured is voided this long after it was given |
/// | `CARD_SEAL_KEY` (or `CARD_SEAL_KEY_FILE`) | on SQLite, the file `card-seal.key` in the working directory, created on first start; on PostgreSQL, required | the key, shared with the orders service, that opens the card in `AuthorizePayment`: 32 bytes as unpadded base64url |
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// The test card scheme's knobs.
    pub knobs: Knobs,
    /// The provider call's timeout.
    pub provider_timeout: Duration,
    /// How long an authorisation lasts.
    pub auth_expiry: Duration,
    /// `CARD_SEAL_KEY`: the key that opens the card the orders service sealed; `None`: the
    /// one in [`CARD_KEY_FILE`](shop_messaging::contracts::CARD_KEY_FILE), created on first
    /// start (on SQLite only: elsewhere the variable is required).
    pub card_key: Option<Secret>,
}

fn rate<F: Fn(&str) -> Option<String>>(vars: &Vars<F>, var: &str) -> Result<f64, ConfigError> {
    let expected = "a number from 0 to 1";
    let rate: f64 = vars.parse_or(var, 0.0, expected)?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(ConfigError {
            var: var.to_owned(),
            value: rate.to_string(),
            expected: expected.to_owned(),
        })
    }
}

impl PaymentsConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("payments", 8086, &vars)?;
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
        let latency: u64 =
            vars.parse_or("PAYMENT_LATENCY_MS", 0, "a whole number of milliseconds")?;
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            knobs: Knobs {
                decline_rate: rate(vars, "PAYMENT_DECLINE_RATE")?,
                failure_rate: rate(vars, "PAYMENT_FAILURE_RATE")?,
                latency: Duration::from_millis(latency),
            },
            provider_timeout: vars.millis_or("PAYMENT_TIMEOUT_MS", Duration::from_secs(2))?,
            auth_expiry: vars
                .millis_or("PAYMENT_AUTH_EXPIRY_MS", Duration::from_secs(7 * 24 * 3600))?,
            card_key: shop_common::seal::shared_key_var(
                vars,
                "CARD_SEAL_KEY",
                &service.database_url,
            )?,
            service,
        })
    }
}
