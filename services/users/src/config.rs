//! The users service's configuration, from the environment.

use std::time::Duration;

use mainstay_auth::jsonwebtoken::Algorithm;
use shop_common::config::{ConfigError, Secret, ServiceConfig, Vars};

/// What the users service is configured with, beyond [`ServiceConfig`].
///
/// | variable | default | meaning |
/// | --- | --- | --- |
/// | `TOKEN_ISSUER` | `shop-users` | the `iss` of access tokens |
/// | `TOKEN_AUDIENCE` | `shop` | their `aud` |
/// | `ACCESS_TOKEN_TTL_SECS` | 900 | access token lifetime |
/// | `REFRESH_TOKEN_TTL_SECS` | 2592000 (30 days) | refresh token lifetime |
/// | `SIGNING_ALGORITHM` | `EdDSA` | `EdDSA`, `ES256` or `RS256`, for new keys |
/// | `SEED_DEMO_USERS` | `true` on SQLite, else `false` | create the demo customer alice |
/// | `ADMIN_PASSWORD` (or `ADMIN_PASSWORD_FILE`) | generated | the password of `admin@example.com`, created on first start in every mode; unset, one is generated and printed once |
/// | `LOGIN_PER_ACCOUNT` | `5/60` | login attempts per account: burst / seconds |
/// | `LOGIN_PER_IP` | `30/60` | login attempts per client address (an IPv6 client by its /64) |
/// | `REGISTER_PER_IP` | `10/3600` | registrations per client address |
/// | `EMAIL_CHANGE_PER_ACCOUNT` | `5/86400` | email change requests per account |
/// | `MAIL_PER_ADDRESS` | `3/3600` | mails to one address (confirmations, notices to its owner); beyond it, requests are answered alike and nothing is sent |
/// | `TRUSTED_PROXIES` | `127.0.0.1,::1` | peers whose `X-Forwarded-For` names the client (the gateway) |
/// | `SIGNING_KEY_KEK` (or `SIGNING_KEY_KEK_FILE`) | on SQLite, the file `signing-kek.key` in the working directory, created on first start; on PostgreSQL, required | the key-encryption key the signing keys are wrapped with at rest (AES-256-GCM): 32 bytes as unpadded base64url |
/// | `MAIL_TOKEN_KEY` (or `MAIL_TOKEN_KEY_FILE`) | the file `mail-token.key` in the working directory, created on first start | the key, shared with the mailer, that seals the email-confirmation tokens in `SendEmailConfirmation`: 32 bytes as unpadded base64url |
#[derive(Debug, Clone)]
pub struct UsersConfig {
    /// The common part.
    pub service: ServiceConfig,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// Algorithm of new signing keys.
    pub algorithm: Algorithm,
    /// Whether to create the demo customer.
    pub seed_demo_users: bool,
    /// The first admin's password; `None`: generated on first start and printed once.
    pub admin_password: Option<Secret>,
    /// Login attempts per account: burst, refilled over the period.
    pub login_per_account: (u32, Duration),
    /// Login attempts per client address.
    pub login_per_ip: (u32, Duration),
    /// Registrations per client address.
    pub register_per_ip: (u32, Duration),
    /// Email change requests per account.
    pub email_change_per_account: (u32, Duration),
    /// Mails to one address.
    pub mail_per_address: (u32, Duration),
    /// Peers whose `X-Forwarded-For` is believed: by default loopback, where the gateway runs
    /// beside the services (and only local processes can reach the default listener).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `MAIL_TOKEN_KEY`: the key that seals the tokens mailed to confirm an email change, which
    /// the mailer opens; `None`: the one in [`MAIL_KEY_FILE`], created on first start.
    pub mail_key: Option<Secret>,
    /// `SIGNING_KEY_KEK`: the key-encryption key of the signing keys at rest; `None` (on
    /// SQLite only): the one in [`KEK_FILE`], created on first start.
    pub signing_kek: Option<Secret>,
}

/// The signing keys' key-encryption key's file on the embedded default, when
/// `SIGNING_KEY_KEK` is not set. On PostgreSQL the variable is required: a file in a
/// container's working directory would be lost with it, and every key with it.
pub const KEK_FILE: &str = "signing-kek.key";

/// The mail key's file when `MAIL_TOKEN_KEY` is not set: in the working directory, beside the
/// services' own files, where the mailer of the embedded system finds it too.
pub const MAIL_KEY_FILE: &str = "mail-token.key";

fn error(var: &str, value: String, expected: &str) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        value,
        expected: expected.to_owned(),
    }
}

impl UsersConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// The first variable set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars = Vars(|var: &str| std::env::var(var).ok());
        let service = ServiceConfig::from_vars("users", 8081, &vars)?;
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
        let algorithm = match vars.raw("SIGNING_ALGORITHM").as_deref().map(str::trim) {
            None | Some("EdDSA") => Algorithm::EdDSA,
            Some("ES256") => Algorithm::ES256,
            Some("RS256") => Algorithm::RS256,
            Some(other) => {
                return Err(error(
                    "SIGNING_ALGORITHM",
                    other.to_owned(),
                    "EdDSA, ES256 or RS256",
                ));
            }
        };
        let secs = |var: &str, default: u64| -> Result<Duration, ConfigError> {
            let value: u64 = vars.parse_or(var, default, "a whole number of seconds above zero")?;
            if value == 0 {
                return Err(error(
                    var,
                    "0".to_owned(),
                    "a whole number of seconds above zero",
                ));
            }
            Ok(Duration::from_secs(value))
        };
        let embedded = service.database_url.expose().starts_with("sqlite:");
        let admin_password = vars.secret("ADMIN_PASSWORD")?;
        if let Some(password) = &admin_password
            && !(12..=128).contains(&password.expose().chars().count())
        {
            return Err(error(
                "ADMIN_PASSWORD",
                "(hidden)".to_owned(),
                "a password of 12 to 128 characters",
            ));
        }
        let sealing_key = |var: &str| -> Result<Option<Secret>, ConfigError> {
            let key = vars.secret(var)?;
            if let Some(key) = &key
                && shop_common::seal::SealKey::parse(key.expose()).is_err()
            {
                return Err(error(
                    var,
                    "(hidden)".to_owned(),
                    "32 bytes as unpadded base64url (43 characters)",
                ));
            }
            Ok(key)
        };
        let mail_key = sealing_key("MAIL_TOKEN_KEY")?;
        let signing_kek = sealing_key("SIGNING_KEY_KEK")?;
        if signing_kek.is_none() && !embedded {
            return Err(error(
                "SIGNING_KEY_KEK",
                "(unset)".to_owned(),
                "a key-encryption key for the signing keys (32 bytes as unpadded base64url), \
                 required on PostgreSQL",
            ));
        }
        Ok(Self {
            mail_key,
            signing_kek,
            issuer: vars
                .raw("TOKEN_ISSUER")
                .unwrap_or_else(|| "shop-users".to_owned()),
            audience: vars
                .raw("TOKEN_AUDIENCE")
                .unwrap_or_else(|| "shop".to_owned()),
            access_ttl: secs("ACCESS_TOKEN_TTL_SECS", 900)?,
            refresh_ttl: secs("REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?,
            algorithm,
            seed_demo_users: vars.parse_or("SEED_DEMO_USERS", embedded, "true or false")?,
            admin_password,
            login_per_account: vars.rate_or("LOGIN_PER_ACCOUNT", (5, Duration::from_secs(60)))?,
            login_per_ip: vars.rate_or("LOGIN_PER_IP", (30, Duration::from_secs(60)))?,
            register_per_ip: vars.rate_or("REGISTER_PER_IP", (10, Duration::from_secs(3600)))?,
            email_change_per_account: vars.rate_or(
                "EMAIL_CHANGE_PER_ACCOUNT",
                (5, Duration::from_secs(24 * 3600)),
            )?,
            mail_per_address: vars.rate_or("MAIL_PER_ADDRESS", (3, Duration::from_secs(3600)))?,
            trusted_proxies: vars.ip_list(
                "TRUSTED_PROXIES",
                &[
                    std::net::IpAddr::from([127, 0, 0, 1]),
                    std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ],
            )?,
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<UsersConfig, ConfigError> {
        let vars = Vars(|var: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        });
        let service = ServiceConfig::from_vars("users", 8081, &vars)?;
        UsersConfig::from_vars(service, &vars)
    }

    #[test]
    fn defaults_seed_only_the_embedded_database() {
        let embedded = config(&[]).unwrap();
        assert!(embedded.seed_demo_users);
        assert_eq!(embedded.algorithm, Algorithm::EdDSA);
        assert_eq!(embedded.login_per_account, (5, Duration::from_secs(60)));
        assert!(embedded.signing_kek.is_none() && embedded.mail_key.is_none());
        let kek = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY";
        let production = config(&[
            ("DATABASE_URL", "postgres://db/users"),
            ("SIGNING_KEY_KEK", kek),
        ])
        .unwrap();
        assert!(!production.seed_demo_users);
        assert_eq!(production.signing_kek.unwrap().expose(), kek);
    }

    #[test]
    fn production_needs_a_key_encryption_key_and_keys_are_checked_unshown() {
        let missing = config(&[("DATABASE_URL", "postgres://db/users")]).unwrap_err();
        assert_eq!(missing.var, "SIGNING_KEY_KEK");
        for var in ["SIGNING_KEY_KEK", "MAIL_TOKEN_KEY"] {
            let bad = config(&[(var, "not-a-key-but-a-secret")]).unwrap_err();
            assert_eq!(bad.var, var);
            assert!(!bad.to_string().contains("not-a-key"), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            config(&[("SIGNING_ALGORITHM", "none")]).unwrap_err().var,
            "SIGNING_ALGORITHM"
        );
        assert_eq!(
            config(&[("LOGIN_PER_IP", "5")]).unwrap_err().var,
            "LOGIN_PER_IP"
        );
        assert_eq!(
            config(&[("LOGIN_PER_IP", "0/60")]).unwrap_err().var,
            "LOGIN_PER_IP"
        );
        assert_eq!(
            config(&[("ACCESS_TOKEN_TTL_SECS", "0")]).unwrap_err().var,
            "ACCESS_TOKEN_TTL_SECS"
        );
        let short = config(&[("ADMIN_PASSWORD", "hunter2")]).unwrap_err();
        assert_eq!(short.var, "ADMIN_PASSWORD");
        assert!(!short.to_string().contains("hunter2"), "{short}");
        assert_eq!(
            config(&[("SEED_DEMO_USERS", "yes")]).unwrap_err().var,
            "SEED_DEMO_USERS"
        );
    }
}
