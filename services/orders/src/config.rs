//! The orders service's configuration, from the environment.

use std::time::Duration;

use mainstay_discovery::Endpoint;
use shop_common::config::{ConfigError, Secret, ServiceConfig, TokenConfig, Vars};

/// How the checkout saga is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaTiming {
    /// A saga that has not reached the pivot this long after the order was placed is undone
    /// (`SAGA_DEADLINE_MS`, default 30 s).
    pub deadline: Duration,
    /// A step after the pivot, or undoing one, not answered this long after it was sent is
    /// sent again, each time twice as late (`STEP_RESEND_MS`, default 5 s)...
    pub resend_after: Duration,
    /// ... up to this (`STEP_RESEND_MAX_MS`, default 5 min).
    pub resend_max: Duration,
    /// How often the deadline scanner looks (`SAGA_SCAN_MS`, default 1 s).
    pub scan_every: Duration,
}

impl Default for SagaTiming {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            resend_after: Duration::from_secs(5),
            resend_max: Duration::from_secs(300),
            scan_every: Duration::from_secs(1),
        }
    }
}

impl SagaTiming {
    /// How long the inventory holds an order's stock: past the saga's deadline by enough
    /// for the saga's own undoing to come first, whatever the clocks.
    #[must_use]
    pub fn hold(&self) -> Duration {
        (self.deadline + Duration::from_secs(300)).min(Duration::from_secs(24 * 3600))
    }

    /// When a step sent again `attempts` times is due again, after `now_ms`.
    #[must_use]
    pub fn resend_due(&self, now_ms: i64, attempts: i32) -> i64 {
        let factor = 1_u32 << attempts.clamp(0, 16);
        let wait = self
            .resend_after
            .saturating_mul(factor)
            .min(self.resend_max);
        now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
    }
}

/// What the orders service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `USERS_JWKS_URL`, `TOKEN_ISSUER`, `TOKEN_AUDIENCE` | as for every service | how tokens are validated |
/// | `CATALOG_URLS` | `127.0.0.1:8082` | the catalog's endpoints, comma-separated (prices) |
/// | `UPSTREAM_ATTEMPT_TIMEOUT_MS` | 2000 | one attempt at the catalog |
/// | `SAGA_DEADLINE_MS`, `STEP_RESEND_MS`, `STEP_RESEND_MAX_MS`, `SAGA_SCAN_MS` | see [`SagaTiming`] | the saga's timing |
/// | `CARD_SEAL_KEY` (or `CARD_SEAL_KEY_FILE`) | on SQLite, the file `card-seal.key` in the working directory, created on first start; on PostgreSQL, required | the key, shared with the payments service, that seals the card in the order and in `AuthorizePayment`: 32 bytes as unpadded base64url |
///
/// Where its commands and events go is the event backbone's configuration
/// (`shop_messaging::config::TransportConfig`).
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// How the users service's tokens are validated.
    pub tokens: TokenConfig,
    /// The catalog's endpoints.
    pub catalog: Vec<Endpoint>,
    /// One attempt at the catalog.
    pub attempt_timeout: Duration,
    /// The saga's timing.
    pub timing: SagaTiming,
    /// `CARD_SEAL_KEY`: the key that seals the card for the payments service; `None`: the
    /// one in [`CARD_KEY_FILE`](shop_messaging::contracts::CARD_KEY_FILE), created on first
    /// start (on SQLite only: elsewhere the variable is required).
    pub card_key: Option<Secret>,
}

impl OrdersConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("orders", 8084, &vars)?;
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
        let catalog = vars.endpoints_or("CATALOG_URLS", Endpoint::new("127.0.0.1", 8082))?;
        let defaults = SagaTiming::default();
        let positive = |var: &str, default: Duration| -> Result<Duration, ConfigError> {
            let value = vars.millis_or(var, default)?;
            if value.is_zero() {
                return Err(ConfigError {
                    var: var.into(),
                    value: "0".into(),
                    expected: "a positive number of milliseconds".into(),
                });
            }
            Ok(value)
        };
        Ok(Self {
            tokens: TokenConfig::from_vars(vars),
            catalog,
            attempt_timeout: positive("UPSTREAM_ATTEMPT_TIMEOUT_MS", Duration::from_secs(2))?,
            timing: SagaTiming {
                deadline: positive("SAGA_DEADLINE_MS", defaults.deadline)?,
                resend_after: positive("STEP_RESEND_MS", defaults.resend_after)?,
                resend_max: positive("STEP_RESEND_MAX_MS", defaults.resend_max)?,
                scan_every: positive("SAGA_SCAN_MS", defaults.scan_every)?,
            },
            card_key: shop_common::seal::shared_key_var(
                vars,
                "CARD_SEAL_KEY",
                &service.database_url,
            )?,
            service,
        })
    }
}
